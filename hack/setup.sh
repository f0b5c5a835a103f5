#!/usr/bin/env bash
# Everything a fresh machine needs before `make test`: a Python virtualenv with the project and its
# test tools, and the control-plane binaries built from Go modules (cached in ~/.cache/fm-operator).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
start=$(date +%s)

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not installed ($2)" >&2; exit 1; }; }
need "$PYTHON" "Python 3.11 or newer"
need go "Go 1.24 or newer, to build kube-apiserver, etcd and helm from modules"
need openssl "used to make the local control plane's certificates (apt-get install openssl)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "setup: Python 3.11+ is required, found " + sys.version.split()[0])'

echo "[setup] Python virtualenv in .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,model,bench]'
# MovieLens 100K ships inside the recbole wheel; only its data files are read (never copied here).
.venv/bin/python -m pip install -q --no-deps 'recbole==1.2.1'

echo "[setup] control-plane binaries and third-party CRDs (first run builds from Go modules; later runs are cached)"
bash hack/build-tools.sh

echo "[setup] done in $(( $(date +%s) - start ))s. Next: make test"
