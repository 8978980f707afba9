"""Monte Carlo pricing of a European call: batches of paths priced in parallel tasks.

The market data is uploaded once (`cluster.put`) and shared by every task; the client
aggregates the batches as they complete and compares with the Black-Scholes price.

    python examples/pricing.py --batches 16 --paths 20000 [--endpoint 127.0.0.1:5001]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from dataclasses import dataclass

from pyarmonik import Cluster, as_completed, task


@dataclass(frozen=True)
class Market:
    spot: float = 100.0
    strike: float = 105.0
    rate: float = 0.02
    volatility: float = 0.25
    maturity: float = 1.0


@task
def simulate(market: Market, seed: int, paths: int) -> tuple[int, float, float]:
    """Count, sum and sum of squares of discounted payoffs over `paths` paths."""
    rng = random.Random(seed)
    drift = (market.rate - 0.5 * market.volatility**2) * market.maturity
    scale = market.volatility * math.sqrt(market.maturity)
    discount = math.exp(-market.rate * market.maturity)
    total = total_sq = 0.0
    for _ in range(paths):
        terminal = market.spot * math.exp(drift + scale * rng.gauss(0.0, 1.0))
        payoff = discount * max(terminal - market.strike, 0.0)
        total += payoff
        total_sq += payoff * payoff
    return paths, total, total_sq


def black_scholes(market: Market) -> float:
    m = market
    d1 = (math.log(m.spot / m.strike) + (m.rate + 0.5 * m.volatility**2) * m.maturity) / (
        m.volatility * math.sqrt(m.maturity)
    )
    d2 = d1 - m.volatility * math.sqrt(m.maturity)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return m.spot * cdf(d1) - m.strike * math.exp(-m.rate * m.maturity) * cdf(d2)


def run(
    cluster: Cluster, batches: int, paths: int, market: Market = Market()
) -> tuple[float, float]:
    """The price and its standard error."""
    shared = cluster.put(market)
    with cluster.as_current():
        futures = simulate.map(itertools.repeat(shared), range(batches), itertools.repeat(paths))
    n = total = total_sq = 0.0
    for future in as_completed(futures):
        count, s, sq = future.result()
        n, total, total_sq = n + count, total + s, total_sq + sq
    mean = total / n
    return mean, math.sqrt(max(total_sq / n - mean * mean, 0.0) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--endpoint", help="a running cluster (default: start a local one)")
    args = parser.parse_args()
    with Cluster.connect(args.endpoint) if args.endpoint else Cluster.local() as cluster:
        price, error = run(cluster, args.batches, args.paths)
    print(
        f"call price = {price:.4f} ± {1.96 * error:.4f} (Black-Scholes {black_scholes(Market()):.4f})"
    )


if __name__ == "__main__":
    main()
