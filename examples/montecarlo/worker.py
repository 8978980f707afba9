"""Monte Carlo pricing of a European call on a basket, as an ArmoniK worker (official SDK).

A "split" task either simulates its paths (few enough) or splits them in two halves handed
to two subtasks, plus an aggregation subtask that inherits its output: the result tree is
built only by delegation, and no worker ever waits for another.
"""

from __future__ import annotations

import json
import math
import random

from armonik.common import Output, TaskDefinition
from armonik.worker import TaskHandler, armonik_worker


def simulate(spec: dict, seed: int, paths: int) -> dict:
    """Sum and sum of squares of discounted payoffs over `paths` correlated GBM paths."""
    rng = random.Random(seed)
    spots, vol, rho = spec["spots"], spec["volatility"], spec["correlation"]
    rate, maturity, strike = spec["rate"], spec["maturity"], spec["strike"]
    weights = [1 / len(spots)] * len(spots)
    drift = (rate - 0.5 * vol * vol) * maturity
    scale = vol * math.sqrt(maturity)
    discount = math.exp(-rate * maturity)
    total = total_sq = 0.0
    for _ in range(paths):
        common = rng.gauss(0, 1)  # one-factor correlation: every pair has correlation rho
        basket = 0.0
        for spot, weight in zip(spots, weights, strict=False):
            z = math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.gauss(0, 1)
            basket += weight * spot * math.exp(drift + scale * z)
        payoff = discount * max(basket - strike, 0.0)
        total += payoff
        total_sq += payoff * payoff
    return {"n": paths, "sum": total, "sum_sq": total_sq}


def process(handler: TaskHandler) -> Output:
    order = json.loads(handler.payload)
    output = handler.expected_results[0]
    if order["kind"] == "aggregate":
        parts = [json.loads(v) for v in handler.data_dependencies.values()]
        merged = {key: sum(p[key] for p in parts) for key in ("n", "sum", "sum_sq")}
        handler.send_results({output: json.dumps(merged).encode()})
        return Output()
    spec, seed, paths = order["spec"], order["seed"], order["paths"]
    if paths <= order["leaf_paths"]:
        handler.send_results({output: json.dumps(simulate(spec, seed, paths)).encode()})
        return Output()
    half = paths // 2
    halves = handler.create_results_metadata(["low", "high"])
    payloads = handler.create_results(
        {
            "low": json.dumps({**order, "seed": 2 * seed, "paths": half}).encode(),
            "high": json.dumps({**order, "seed": 2 * seed + 1, "paths": paths - half}).encode(),
            "aggregate": json.dumps({"kind": "aggregate"}).encode(),
        }
    )
    handler.submit_tasks(
        [
            TaskDefinition(
                payload_id=payloads["low"].result_id, expected_output_ids=[halves["low"].result_id]
            ),
            TaskDefinition(
                payload_id=payloads["high"].result_id,
                expected_output_ids=[halves["high"].result_id],
            ),
            TaskDefinition(
                payload_id=payloads["aggregate"].result_id,
                expected_output_ids=[output],  # delegation: the aggregation produces our output
                data_dependencies=[halves["low"].result_id, halves["high"].result_id],
            ),
        ]
    )
    return Output()


if __name__ == "__main__":
    armonik_worker()(process).run()
