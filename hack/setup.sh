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

# Triton's python-backend stub (from nvidia-pytriton) links against the system libpython3.11.
if ! ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1\.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's libpython3.11 (for Triton's python backend)"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libpython3.11 >/dev/null
  else
    echo "setup: Triton's python backend needs libpython3.11.so.1.0: run 'sudo apt-get install libpython3.11'" >&2; exit 1
  fi
fi

echo "[setup] Python virtualenv in .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,model,serving,bench]'
# MovieLens 100K ships inside the recbole wheel; only its data files are read (never copied here).
.venv/bin/python -m pip install -q --no-deps 'recbole==1.2.1'

echo "[setup] control-plane binaries and third-party CRDs (first run builds from Go modules; later runs are cached)"
bash hack/build-tools.sh

echo "[setup] done in $(( $(date +%s) - start ))s. Next: make test"
