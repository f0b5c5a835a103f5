#!/usr/bin/env bash
# Everything a fresh machine needs before `make test`: a Python virtualenv with the project and its
# test tools, and the control-plane binaries built from Go modules (cached in ~/.cache/fm-operator).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
start=$(date +%s)

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not installed ($2)" >&2; exit 1; }; }
need "$PYTHON" "Python 3.11 or newer"
need go "Go 1.25 or newer, to build Kubernetes, etcd, helm, KServe and Argo from modules"
need openssl "used to make the local control plane's certificates (apt-get install openssl)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "setup: Python 3.11+ is required, found " + sys.version.split()[0])'

# Debian packages: Triton's python-backend stub (from nvidia-pytriton) links against the system
# libpython3.11; the local node runs containerd + runc with Debian's CNI plugins; images are built
# with debootstrap + buildah; gcc + libc6-dev compile the static pause binary; Alertmanager routes
# Rollout alerts (fmdev.local.monitoring). Prometheus is built from its Go module by build-tools.sh:
# Debian's lacks kubernetes_sd, and on a systemd host its package starts a service on :9090, the
# operator's default metrics port.
DEBS="libpython3.11 containerd runc containernetworking-plugins buildah debootstrap gcc libc6-dev iproute2 prometheus-alertmanager"
missing=$(for d in $DEBS; do dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || echo "$d"; done)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian packages: $(echo $missing)"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  else
    echo "setup: missing Debian packages: $(echo $missing); run 'sudo apt-get install $(echo $missing)'" >&2; exit 1
  fi
fi

echo "[setup] Python virtualenv in .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,model,serving,bench]'
# The developer tooling (devtools/: local cluster, demo, benchmarks) is a distribution of its own,
# so it ships in neither the operator's wheel nor its image.
.venv/bin/python -m pip install -q --no-deps -e devtools
# MovieLens 100K ships inside the recbole wheel; only its data files are read (never copied here).
.venv/bin/python -m pip install -q --no-deps 'recbole==1.2.1'

echo "[setup] control-plane binaries and third-party CRDs (first run builds from Go modules; later runs are cached)"
bash hack/build-tools.sh

if [ "$(id -u)" = 0 ]; then
  echo "[setup] images for the local node (debootstrap + buildah; cached by content, the first run takes minutes)"
  .venv/bin/python -m fmdev.local.images
else
  echo "[setup] not root: skipping the local node's images (containerd, kubelet and buildah need root)"
fi

echo "[setup] done in $(( $(date +%s) - start ))s. Next: make test"
