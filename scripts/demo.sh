#!/usr/bin/env bash
# Install pyarmonik in .venv, start a local cluster (control plane + agent/worker pairs on
# the embedded backends), price a basket option by Monte Carlo on it, then stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .

data_dir=$(mktemp -d -t pyarmonik-demo-XXXXXX)
port=${PYARMONIK_DEMO_PORT:-5001}
.venv/bin/pyarmonik local --port "$port" --data-dir "$data_dir" \
    --worker "$PWD/.venv/bin/python $PWD/examples/montecarlo/worker.py" > "$data_dir/endpoint" &
cluster=$!
trap 'kill -INT $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -rf "$data_dir"' EXIT
for _ in $(seq 1 120); do [ -s "$data_dir/endpoint" ] && break; sleep 0.5; done
[ -s "$data_dir/endpoint" ] || { echo "the local cluster did not start" >&2; exit 1; }
.venv/bin/python examples/montecarlo/client.py --endpoint "$(head -1 "$data_dir/endpoint")" "$@"
