"""pyarmonik: ArmoniK rebuilt in Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Cluster", "Future", "TaskError", "__version__", "as_completed", "task", "wait"]

if TYPE_CHECKING:
    from pyarmonik.sdk import Cluster, Future, TaskError, as_completed, task, wait


def __getattr__(name: str) -> Any:
    """The SDK's names, imported on first use: `import pyarmonik.cli.main` (the command, an
    agent) must not load gRPC before it has set gRPC's environment."""
    if name in __all__:
        from pyarmonik import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'pyarmonik' has no attribute {name!r}")
