"""The SDK examples give the right answers on `Cluster.local()` and on a cluster started
with `pyarmonik local` (connected to with `Cluster.connect`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyarmonik import Cluster
from tests.sdk.support import function_worker_cluster, load_example


@pytest.fixture(scope="module", params=["Cluster.local", "pyarmonik local"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Each example on each kind of cluster (one cluster at a time)."""
    if request.param == "Cluster.local":
        with Cluster.local(agents=2) as local:
            yield local
    else:
        with (
            function_worker_cluster(tmp_path_factory.mktemp("examples")) as running,
            Cluster.connect(running.endpoint) as connected,
        ):
            yield connected


def test_fibonacci(cluster: Cluster) -> None:
    assert load_example("fibonacci").run(cluster, 8) == 21


def test_pricing(cluster: Cluster) -> None:
    pricing = load_example("pricing")
    price, error = pricing.run(cluster, batches=8, paths=5000)
    # the same batches computed here, and the closed form within the Monte Carlo error
    local = [pricing.simulate(pricing.Market(), seed, 5000) for seed in range(8)]
    assert price == pytest.approx(sum(s for _, s, _ in local) / 40_000, rel=1e-12)
    assert abs(price - pricing.black_scholes(pricing.Market())) < 4 * error


def test_sweep(cluster: Cluster) -> None:
    sweep = load_example("sweep")
    value, x, y = sweep.run(cluster, size=41, slices=10)
    xs = sweep.grid(41)
    assert (value, x, y) == min((sweep.himmelblau(a, b), a, b) for a in xs for b in xs)
    assert (value, x, y) == (0.0, 3.0, 2.0)  # one of Himmelblau's four zeros is on the grid


def test_wordcount(cluster: Cluster, tmp_path: Path) -> None:
    words = ["armonik", "task", "graph", "result", "future", "worker"]
    texts = [" ".join(words[(i * j) % 6] for j in range(50 + i)) for i in range(9)]
    (tmp_path / "nested").mkdir()
    for i, text in enumerate(texts):
        (tmp_path / ("nested" if i % 2 else "") / f"doc{i}.txt").write_text(text.upper())
    counts = load_example("wordcount").run(cluster, [tmp_path])
    assert counts == Counter(w for text in texts for w in text.split())
