#!/usr/bin/env bash
# The operator image's wheelhouse: the project's wheel plus the binary wheels of its runtime
# dependencies (pyproject's `dependencies`, never the torch extras), for CPython 3.11 on Linux.
# The Dockerfile installs these without pip, so the same Dockerfile builds on any base that has
# python3.11: python:3.11-slim in a registry pipeline, the local debootstrap image here.
#
#   hack/operator-wheels.sh [DIR]      # default build/wheels; then: docker build -t IMAGE .
#
# PYTHON picks the host interpreter (any version with pip: the wheels are chosen for 3.11 by tag);
# WHEEL_ARCH the image's architecture (x86_64, or aarch64 for arm64 images). Wheels may need glibc
# up to 2.36 (Debian bookworm, the oldest base this is meant for).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DIR="${1:-build/wheels}"
ARCH="${WHEEL_ARCH:-x86_64}"
# pip does not expand PEP 600 tags (manylinux_2_36 does not imply manylinux_2_17), so name each one.
platforms=(--platform "manylinux2014_$ARCH")
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$ARCH"); done

rm -rf "$DIR" build/lib   # setuptools packs whatever build/lib holds, even files deleted since
mkdir -p "$DIR"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" .
project=$(ls "$DIR"/fm_operator-*.whl)
# Resolving the project's wheel (not `.`) lets pip select wheels for another interpreter and platform.
"$PYTHON" -m pip download --quiet --dest "$DIR" --only-binary=:all: \
  --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" "$project"
echo "[operator-wheels] $(ls "$DIR" | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1))"
