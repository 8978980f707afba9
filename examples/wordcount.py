"""Word count, map-reduce style, over text files.

Each file is uploaded once (`cluster.put`), counted by a `count` task; the counters are
merged by a tree of `merge` tasks and only the final counter comes back.

    python examples/wordcount.py FILE_OR_FOLDER... [--top 10] [--endpoint 127.0.0.1:5001]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from pyarmonik import Cluster, Future, task

WORD = re.compile(r"[a-z']+")


@task
def count(text: bytes) -> Counter[str]:
    return Counter(WORD.findall(text.decode("utf-8", errors="replace").lower()))


@task
def merge(*counters: Counter[str]) -> Counter[str]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return total


def files_of(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def run(cluster: Cluster, paths: list[Path], fan_in: int = 4) -> Counter[str]:
    with cluster.as_current():
        counters: list[Future[Counter[str]]] = count.map(
            cluster.put(path.read_bytes()) for path in files_of(paths)
        )
        while len(counters) > 1:
            counters = [
                merge.submit(*counters[i : i + fan_in]) for i in range(0, len(counters), fan_in)
            ]
        return counters[0].result() if counters else Counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--endpoint", help="a running cluster (default: start a local one)")
    args = parser.parse_args()
    with Cluster.connect(args.endpoint) if args.endpoint else Cluster.local() as cluster:
        counts = run(cluster, args.paths)
    for word, n in counts.most_common(args.top):
        print(f"{n:8d} {word}")


if __name__ == "__main__":
    main()
