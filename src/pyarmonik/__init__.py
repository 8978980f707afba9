"""pyarmonik: ArmoniK rebuilt in Python."""

__version__ = "0.1.0"

from pyarmonik.sdk import Cluster, Future, TaskError, as_completed, task, wait

__all__ = ["Cluster", "Future", "TaskError", "__version__", "as_completed", "task", "wait"]
