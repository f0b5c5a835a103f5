# fm-operator image: the operator only (no torch). Two steps, from the repository root:
#   hack/operator-wheels.sh                      # build/wheels: the project + its runtime wheels, for CPython 3.11
#   docker build -t ghcr.io/fm-operator/fm-operator:0.1.0 .
# (`make operator-image` runs both.) The image build itself needs no package index and no pip: the
# wheels are unpacked into site-packages, so any BASE with python3.11 works, e.g. the local
# debootstrap image (`--build-arg BASE=localhost/fmop/base:...`, see devtools/fmdev/local/images.py).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
COPY build/wheels /wheels
COPY hack/install-wheels.py /install-wheels.py
# Left out, as code the operator never imports: the model package the project's wheel also carries
# (fmrec, which needs torch) and the kubernetes client's asyncio twin (41 MB; kopf talks aiohttp itself).
# Byte-compile at build time: the root filesystem is read-only at run time. Then prove the install:
# every module of the operator imports, and neither the model (fmrec) nor the developer tooling (fmdev,
# not in the wheel at all) is there.
RUN python3 /install-wheels.py /wheels /install --exclude fmrec --exclude kubernetes/aio \
 && python3 -m compileall -q -s /install -p / /install \
 && PYTHONPATH="/install$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" python3 -c '\
import importlib, importlib.util, pkgutil, fmop; \
mods = [m.name for m in pkgutil.walk_packages(fmop.__path__, "fmop.")]; [importlib.import_module(m) for m in mods]; \
extra = [p for p in ("fmrec", "fmdev", "torch") if importlib.util.find_spec(p)]; \
assert not extra, f"the operator image must not hold {extra}"; \
print(f"fm-operator image: all {len(mods) + 1} fmop modules import; no model or devtools code")'

FROM ${BASE}
COPY --from=build /install/ /
# USER: kopf names the operator by getpass.getuser(), and uid 65532 has no passwd entry in the image.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp USER=fm-operator
# Non-root, matching the chart's securityContext (runAsUser 65532, read-only root filesystem).
USER 65532:65532
EXPOSE 8080 8081 9090
ENTRYPOINT ["python3", "-m", "fmop"]
