"""The chaos suite's seed and length, from `--chaos-seed` and `--chaos-seconds`."""

from __future__ import annotations

import os
import random

import pytest

CI_SEED = 20250612  # the CI run's seed, the same on every run
# Start-up, the drain after the chaos, the checks: what a run takes beyond --chaos-seconds.
OVERHEAD_SECONDS = 420


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A long run (`--chaos-seconds 600`) gets a timeout to match."""
    seconds = float(config.getoption("--chaos-seconds"))
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.timeout(seconds + OVERHEAD_SECONDS))


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--chaos-seed")
    if seed is None:
        seed = CI_SEED if os.environ.get("CI") == "true" else random.SystemRandom().randrange(10**9)
    return int(seed)


@pytest.fixture
def chaos_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--chaos-seconds"))
