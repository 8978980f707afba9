#!/usr/bin/env bash
# Install pyarmonik with its test tools in .venv, then run lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[dev]'
# The backend plugins shipped in plugins/ (docs/plugins.md): the contract suites run on them.
.venv/bin/pip install -q -e plugins/pyarmonik-sqs -e plugins/pyarmonik-nats
.venv/bin/ruff check src tests plugins
.venv/bin/ruff format --check src tests plugins
.venv/bin/mypy
.venv/bin/mypy --strict plugins/pyarmonik-sqs/src plugins/pyarmonik-nats/src
.venv/bin/pytest -q "$@"
