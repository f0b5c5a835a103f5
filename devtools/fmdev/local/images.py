"""Images built on this machine: debootstrap for the Debian base, buildah for the images, imported
into the node's containerd. No registry is involved anywhere.

    pause     the sandbox image: the static pause binary from the Kubernetes module
    argoexec  Argo's executor: the argoexec binary built from the Argo module
    base      Debian bookworm minbase with python3.11 (Argo step image for plain scripts)
    fmrec     base + torch, nvidia-pytriton and the fmrec package: the model server (Triton with the
              fmrec python backend, `tritonserver` on PATH) and the trainer, one image for both
    operator  the repository's Dockerfile built by `buildah bud` with BASE=base (the same file a
              registry pipeline builds with docker on python:3.11-slim)

Each image is tagged with a hash of its inputs and cached in buildah's storage under the cache
directory; a docker-archive of it is kept beside it for import. Python packages are installed by the
host's pip (which reaches the package index; pip inside a chroot does not) with --target into the
image's dist-packages, so the image's own python3.11 finds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fmdev.local.common import BIN, CACHE, REPO, ClusterError, Log, binary, run
from fmdev.local.node import SANDBOX_IMAGE_VERSION, Node

STORE = CACHE / "buildah"
ARCHIVES = CACHE / "images"
DIST = "usr/local/lib/python3.11/dist-packages"
BASE_PACKAGES = ["python3", "libpython3.11", "ca-certificates", "tzdata"]


def buildah(*args: str, what: str, timeout: float = 3600) -> str:
    return run(["buildah", f"--root={STORE / 'storage'}", f"--runroot={STORE / 'run'}", "--storage-driver=overlay", *args],
               what, timeout=timeout).strip()


def _has(ref: str) -> bool:
    out = subprocess.run(["buildah", f"--root={STORE / 'storage'}", f"--runroot={STORE / 'run'}", "--storage-driver=overlay",
                          "inspect", "--type=image", ref], capture_output=True)
    return out.returncode == 0


def prune(ref: str, log: Log = print) -> list[str]:
    """Remove the other tags of ref's repository from buildah's storage: every change to the model
    package makes a new multi-GB fmrec image, and nothing ever needs the superseded one again."""
    repo = ref.rsplit(":", 1)[0]
    listed = subprocess.run(["buildah", f"--root={STORE / 'storage'}", f"--runroot={STORE / 'run'}", "--storage-driver=overlay",
                             "images", "--format={{.Name}}:{{.Tag}}"], capture_output=True, text=True)
    old = [r for r in listed.stdout.split() if r.rsplit(":", 1)[0] == repo and r != ref]
    for r in old:
        subprocess.run(["buildah", f"--root={STORE / 'storage'}", f"--runroot={STORE / 'run'}", "--storage-driver=overlay",
                        "rmi", r], capture_output=True)
        log(f"[images] removed the superseded {r}")
    return old


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@contextmanager
def _working(source: str, ref: str, config: list[str]) -> Iterator[Path]:
    """A buildah working container from source, mounted at the yielded path; committed as ref
    (with config) when the block succeeds, removed when it fails."""
    container = buildah("from", source, what=f"building {ref}")
    try:
        mnt = Path(buildah("mount", container, what=f"building {ref}"))
        yield mnt
        buildah("umount", container, what=f"building {ref}")
        if config:
            buildah("config", *config, container, what=f"configuring {ref}")
        buildah("commit", "--disable-compression", "--rm", container, ref, what=f"committing {ref}")
    except BaseException:
        subprocess.run(["buildah", f"--root={STORE / 'storage'}", f"--runroot={STORE / 'run'}", "rm", container], capture_output=True)
        raise


def _mirror() -> str:
    """The Debian mirror the host's apt uses (debootstrap needs one; only package registries are reachable)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "security" not in words[1]:
                    return words[1]
                if words[:1] == ["deb"] and "security" not in line:
                    return next(w for w in words[1:] if w.startswith("http"))
        except (OSError, StopIteration):
            continue
    return "http://deb.debian.org/debian"


# ---------------------------------------------------------------------- recipes
def pause_ref() -> str:
    return f"localhost/fmop/pause:{SANDBOX_IMAGE_VERSION}"


def build_pause(log: Log) -> str:
    ref = pause_ref()
    if not _has(ref):
        with _working("scratch", ref, ["--entrypoint", '["/pause"]', "--user", "65535:65535"]) as mnt:
            shutil.copy2(binary("pause"), mnt / "pause")
    return ref


def argoexec_ref() -> str:
    return f"localhost/fmop/argoexec:{(BIN / '.argoexec.version').read_text().strip()}-{_file_digest(Path(binary('argoexec')))}"


def build_argoexec(log: Log) -> str:
    ref = argoexec_ref()
    if not _has(ref):
        with _working("scratch", ref, ["--entrypoint", '["/bin/argoexec"]', "--env", "PATH=/bin"]) as mnt:
            (mnt / "bin").mkdir()
            shutil.copy2(binary("argoexec"), mnt / "bin" / "argoexec")
            (mnt / "tmp").mkdir()
            os.chmod(mnt / "tmp", 0o1777)
            (mnt / "etc").mkdir()
            (mnt / "etc" / "passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")
    return ref


def base_ref() -> str:
    return f"localhost/fmop/base:bookworm-{_digest(*BASE_PACKAGES, 'minbase')}"


def build_base(log: Log) -> str:
    ref = base_ref()
    if _has(ref):
        return ref
    t0 = time.monotonic()
    log(f"[images] {ref}: debootstrap --variant=minbase bookworm (about a minute)")
    with _working("scratch", ref, ["--env", "PATH=/usr/local/bin:/usr/bin:/bin", "--env", "LANG=C.UTF-8", "--cmd", '["python3"]']) as mnt:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(mnt), _mirror()],
            "debootstrap of the base image", timeout=1800)
        # Slim what an image never needs: apt lists and caches, docs, man pages.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            shutil.rmtree(mnt / sub, ignore_errors=True)
    log(f"[images] {ref}: built in {time.monotonic() - t0:.0f}s")
    return ref


def _fmrec_requirements() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    # hera (Argo model classes) is the operator's alone: leaving it out keeps the 6 GB layer's hash.
    core = [d for d in meta["dependencies"] if not d.startswith("hera")]
    return [*core, *extras["model"], *extras["serving"]]


def _pip_target(target: Path, args: list[str], what: str) -> None:
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location", "--no-compile",
         "--only-binary=:all:", "--target", str(target), *args], what, timeout=3600)


TRITON_WRAPPER = f"""#!/bin/sh
# Triton Inference Server from the nvidia-pytriton wheel, with the python backend wired to this
# image's python3.11 (whose dist-packages hold torch and fmrec). Arguments pass through, so KServe's
# Triton runtime (`tritonserver --model-store=/mnt/models --http-port=8080 ...`) runs unchanged.
P=/{DIST}
export LD_LIBRARY_PATH="$P/nvidia_pytriton.libs${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
exec "$P/pytriton/tritonserver/bin/tritonserver" --backend-directory=/opt/fmop/backends --allow-gpu-metrics=false "$@"
"""


def fmrec_deps_ref() -> str:
    return f"localhost/fmop/fmrec-deps:{_digest(base_ref(), *_fmrec_requirements(), 'recbole==1.2.1')}"


def fmrec_ref() -> str:
    src = _digest(fmrec_deps_ref(), _tree_digest(REPO / "model" / "fmrec"), TRITON_WRAPPER)
    return f"localhost/fmop/fmrec:{src}"


def build_fmrec(log: Log) -> str:
    base = build_base(log)
    deps = fmrec_deps_ref()
    if not _has(deps):
        t0 = time.monotonic()
        log(f"[images] {deps}: torch, nvidia-pytriton and their dependencies (several minutes, several GB)")
        with _working(base, deps, []) as mnt:
            _pip_target(mnt / DIST, _fmrec_requirements(), "installing the model and serving dependencies into the image")
            # MovieLens 100K ships inside the recbole wheel; only its data files are read, so no deps.
            _pip_target(mnt / DIST, ["--no-deps", "recbole==1.2.1"], "installing recbole (MovieLens data) into the image")
            shutil.rmtree(mnt / DIST / "bin", ignore_errors=True)
        log(f"[images] {deps}: built in {time.monotonic() - t0:.0f}s")
    ref = fmrec_ref()
    if _has(ref):
        return ref
    prune(ref, log)  # before the new copy, so the disk holds at most one of them plus the deps
    config = ["--env", "HOME=/tmp", "--env", "PYTHONDONTWRITEBYTECODE=1", "--env", "PYTHONUNBUFFERED=1", "--cmd", '["tritonserver", "--help"]']
    with _working(deps, ref, config) as mnt:
        # Only the model package: the operator is not part of this image, and an operator change must
        # not rebuild (and re-import) several GB.
        shutil.rmtree(mnt / DIST / "fmrec", ignore_errors=True)
        shutil.copytree(REPO / "model" / "fmrec", mnt / DIST / "fmrec", ignore=shutil.ignore_patterns("__pycache__"))
        backends = mnt / "opt" / "fmop" / "backends" / "python"
        backends.mkdir(parents=True, exist_ok=True)
        triton = f"/{DIST}/pytriton/tritonserver"
        for name, target in (("libtriton_python.so", f"{triton}/backends/python/libtriton_python.so"),
                             ("triton_python_backend_utils.py", f"{triton}/backends/python/triton_python_backend_utils.py"),
                             ("triton_python_backend_stub", f"{triton}/python_backend_stubs/3.11/triton_python_backend_stub")):
            if not (mnt / target.lstrip("/")).exists():
                raise ClusterError(f"the fmrec image lacks {target}: has nvidia-pytriton's layout changed?")
            (backends / name).unlink(missing_ok=True)
            (backends / name).symlink_to(target)
        wrapper = mnt / "usr" / "local" / "bin" / "tritonserver"
        wrapper.write_text(TRITON_WRAPPER)
        wrapper.chmod(0o755)
    prune(deps, log)
    return ref


OPERATOR_INPUTS = ["Dockerfile", "hack/operator-wheels.sh", "hack/install-wheels.py", "pyproject.toml"]


def operator_ref() -> str:
    """Hashes what goes into the image: the base, the Dockerfile, the wheelhouse recipe, pyproject
    (the dependency ranges the wheel set is resolved from; like fmrec-deps, a new release within
    them is not noticed) and the operator's sources."""
    inputs = [(REPO / path).read_bytes() for path in OPERATOR_INPUTS]
    return f"localhost/fmop/operator:{_digest(base_ref(), *inputs, _tree_digest(REPO / 'operator' / 'fmop'))}"


def build_operator(log: Log) -> str:
    base = build_base(log)
    ref = operator_ref()
    if _has(ref):
        return ref
    t0 = time.monotonic()
    log(f"[images] {ref}: wheelhouse on the host, then buildah bud of the Dockerfile with BASE={base}")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="operator-build-", dir=CACHE) as tmp:
        # The build context holds only what the Dockerfile copies (as .dockerignore does for docker).
        context = Path(tmp)
        run(["bash", str(REPO / "hack" / "operator-wheels.sh"), str(context / "build" / "wheels")],
            "building the operator's wheelhouse", timeout=900, env={**os.environ, "PYTHON": sys.executable})
        (context / "hack").mkdir()
        shutil.copy2(REPO / "hack" / "install-wheels.py", context / "hack" / "install-wheels.py")
        # chroot isolation: the one RUN step needs no network, and runc here cannot set oom_score_adj.
        buildah("bud", "--isolation=chroot", "--pull=never", f"--build-arg=BASE={base}", "--file", str(REPO / "Dockerfile"),
                "--tag", ref, str(context), what=f"building {ref}", timeout=900)
    log(f"[images] {ref}: built in {time.monotonic() - t0:.0f}s")
    prune(ref, log)
    return ref


RECIPES: dict[str, tuple[Callable[[Log], str], Callable[[], str]]] = {
    "pause": (build_pause, pause_ref),
    "argoexec": (build_argoexec, argoexec_ref),
    "base": (build_base, base_ref),
    "fmrec": (build_fmrec, fmrec_ref),
    "operator": (build_operator, operator_ref),
}


def ref(name: str) -> str:
    return RECIPES[name][1]()


def archive(name: str, log: Log = print) -> tuple[str, Path]:
    """Build (if needed) and write the docker-archive of one image; returns (ref, archive path)."""
    build, _ = RECIPES[name]
    image = build(log)
    path = ARCHIVES / f"{image.rsplit('/', 1)[1].replace(':', '_')}.tar"
    if not path.exists():
        ARCHIVES.mkdir(parents=True, exist_ok=True)
        for old in ARCHIVES.glob(f"{name}_*.tar"):
            old.unlink()
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        buildah("push", "--disable-compression", image, f"docker-archive:{tmp}:{image}", what=f"writing {path.name}")
        tmp.rename(path)
    return image, path


def ensure(node: Node, names: list[str], log: Log = print) -> dict[str, str]:
    """Make sure the node's containerd has these images; returns name -> ref."""
    refs = {}
    for name in names:
        t0 = time.monotonic()
        image = RECIPES[name][0](log)
        if image not in node.images():
            image, path = archive(name, log)
            size = path.stat().st_size
            node.import_image(path, image)
            node.remove_images(image.rsplit(":", 1)[0], keep=image)
            # containerd keeps its own copy; the archive is rewritten from buildah's storage if ever needed again
            path.unlink()
            log(f"[images] {image}: imported into the node in {time.monotonic() - t0:.0f}s ({size / 1e6:.0f} MB)")
        refs[name] = image
    return refs


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fmdev.local.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(RECIPES), help=f"images to build (default: all of {', '.join(RECIPES)})")
    args = parser.parse_args(argv)
    for name in args.names:
        t0 = time.monotonic()
        image = RECIPES[name][0](print)
        size = buildah("images", "--format={{.Size}}", image, what=f"sizing {image}")
        print(json.dumps({"image": image, "size": size, "seconds": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
