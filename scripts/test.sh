#!/usr/bin/env bash
# The one test command: set-up, lint, types, then unit and integration tests
# (the fixtures start SeaweedFS and the tus servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check chunker resume uploader tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
