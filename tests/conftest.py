"""Command-line options of the test suite (pytest reads them only from top-level conftests)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzz", "fuzz suite (tests/fuzz)")
    group.addoption(
        "--fuzz-seconds",
        type=float,
        default=None,
        help="fuzz for this many seconds instead of the fixed CI-sized number of requests",
    )
    group.addoption(
        "--fuzz-seed",
        type=int,
        default=None,
        help="seed of the fuzz suite (default: fixed for the CI-sized run, random for a timed one)",
    )
    chaos = parser.getgroup("chaos", "chaos suite (tests/chaos)")
    chaos.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed of the kill schedule (default: fixed when CI=true, random otherwise)",
    )
    chaos.addoption(
        "--chaos-seconds",
        type=float,
        default=60.0,
        help="how long each chaos run kills and restarts (default 60: the CI-sized run)",
    )
