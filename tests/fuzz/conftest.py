"""The fuzz suite's budget (CI-sized by default, `--fuzz-seconds N` for a long run), its time
limit, and the summary it prints at the end of the session."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.runner import SUMMARY

# The CI-sized run: a fixed seed and a fixed number of generated calls (about 60-120 s on a
# 2-core machine, cluster start and final checks included).
CI_SEED = 20250612
CI_EXAMPLES = 2420
# Added to a timed run's --fuzz-seconds for the pytest-timeout limit: cluster start, the last
# batch, the final listings and the normal session.
OVERHEAD_SECONDS = 900

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Budget:
    """How much fuzzing to do: `examples` calls, or for `seconds` (then examples is None)."""

    seed: int
    examples: int | None
    seconds: float | None


@pytest.fixture(scope="session")
def budget(pytestconfig: pytest.Config) -> Budget:
    seconds = pytestconfig.getoption("--fuzz-seconds")
    seed = pytestconfig.getoption("--fuzz-seed")
    if seconds is None:
        return Budget(CI_SEED if seed is None else seed, CI_EXAMPLES, None)
    return Budget(random.randrange(2**32) if seed is None else seed, None, seconds)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A timed run lasts longer than pytest-timeout's default allows."""
    seconds = config.getoption("--fuzz-seconds")
    for item in items:
        if item.path.is_relative_to(HERE) and seconds is not None:
            item.add_marker(pytest.mark.timeout(seconds + OVERHEAD_SECONDS))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The seed and the request counts, to be quoted (printed even when the run passes)."""
    if SUMMARY:
        terminalreporter.section("fuzz summary")
        for line in SUMMARY:
            terminalreporter.write_line(line)
