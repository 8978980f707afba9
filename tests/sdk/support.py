"""Helpers of the SDK tests: `pyarmonik local` with its default worker (the function
worker), and the example scripts loaded as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import cloudpickle

from tests.helpers import REPO, LocalProcess, free_port


@contextmanager
def function_worker_cluster(data_dir: Path, agents: int = 2) -> Iterator[LocalProcess]:
    """`pyarmonik local` without --worker: every agent runs the function worker."""
    cluster = LocalProcess(
        ["--port", str(free_port()), "--agents", str(agents), "--data-dir", str(data_dir)],
        env={"PYTHONPATH": str(REPO)},
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def by_value(module_name: str) -> None:
    """Pickle the functions of a test module by value, as those of a script's __main__
    (the workers need not import the test module)."""
    cloudpickle.register_pickle_by_value(sys.modules[module_name])


def load_example(name: str) -> ModuleType:
    """examples/<name>.py as a module whose tasks travel by value, as when run as a script."""
    module_name = f"pyarmonik_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    return module
