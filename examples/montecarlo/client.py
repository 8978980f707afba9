"""Price a basket call on a running cluster with the official `armonik` client.

python examples/montecarlo/client.py --endpoint 127.0.0.1:5001 --paths 200000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from datetime import timedelta

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskOptions, TaskStatus

SPEC = {
    "spots": [100.0, 95.0, 105.0, 110.0],
    "volatility": 0.25,
    "correlation": 0.4,
    "rate": 0.02,
    "maturity": 1.0,
    "strike": 100.0,
}


def show_progress(channel: grpc.Channel, session_id: str, done: threading.Event) -> None:
    tasks = ArmoniKTasks(channel)
    while not done.wait(0.5):
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        finished = counts.get(TaskStatus.COMPLETED, 0)
        line = "  ".join(f"{status.name.lower()}={n}" for status, n in sorted(counts.items()))
        print(
            f"\r  tasks: {sum(counts.values()):5d} total, {finished:5d} completed  [{line}]   ",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", default="127.0.0.1:5001")
    parser.add_argument("--paths", type=int, default=200_000)
    parser.add_argument("--leaf-paths", type=int, default=5_000)
    args = parser.parse_args()
    with grpc.insecure_channel(args.endpoint) as channel:
        sessions, results = ArmoniKSessions(channel), ArmoniKResults(channel)
        options = TaskOptions(max_duration=timedelta(minutes=5), priority=1, max_retries=3)
        session_id = sessions.create_session(options)
        print(f"session {session_id}: pricing with {args.paths} paths", file=sys.stderr)
        order = {
            "kind": "split",
            "spec": SPEC,
            "seed": 1,
            "paths": args.paths,
            "leaf_paths": args.leaf_paths,
        }
        payload = results.create_results({"order": json.dumps(order).encode()}, session_id)["order"]
        price = results.create_results_metadata(["price"], session_id)["price"]
        start = time.monotonic()
        ArmoniKTasks(channel).submit_tasks(
            session_id,
            [TaskDefinition(payload_id=payload.result_id, expected_output_ids=[price.result_id])],
        )
        done = threading.Event()
        progress = threading.Thread(
            target=show_progress, args=(channel, session_id, done), daemon=True
        )
        progress.start()
        try:
            ArmoniKEvents(channel).wait_for_result_availability([price.result_id], session_id)
        finally:
            done.set()
            progress.join()
        stats = json.loads(results.download_result_data(price.result_id, session_id))
        elapsed = time.monotonic() - start
        mean = stats["sum"] / stats["n"]
        stderr = math.sqrt(max(stats["sum_sq"] / stats["n"] - mean * mean, 0.0) / stats["n"])
        total, _ = ArmoniKTasks(channel).list_tasks(Task.session_id == session_id, page_size=0)
        print(
            f"basket call price = {mean:.4f} ± {1.96 * stderr:.4f} (95% CI), {stats['n']} paths, {total} tasks, {elapsed:.1f}s"
        )
        sessions.close_session(session_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
