"""Install a directory of wheels without pip (the operator Dockerfile's build stage runs this).

    python3 install-wheels.py WHEELS ROOT [--exclude PATH ...]

A wheel is a zip whose top level belongs in site-packages, plus a `<name>.data/` folder whose
`purelib`/`platlib` parts do too (its scripts, headers and data are not needed by the operator).
Files land in ROOT + this interpreter's purelib directory, so `COPY --from=build ROOT /` puts them
where the same base image's python3 looks. The wheels are the exact set the host resolved
(hack/operator-wheels.sh); nothing is resolved here. --exclude skips a package or a part of one,
relative to site-packages (`fmrec`, `kubernetes/aio`): code the operator never imports.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import zipfile
from pathlib import Path, PurePosixPath


def target(member: str, purelib: Path) -> Path | None:
    """Where one member of a wheel goes, or None for the parts an image does not need."""
    parts = PurePosixPath(member).parts
    if parts[0].endswith(".data"):
        if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
            return None
        parts = parts[2:]
    if ".." in parts:
        raise SystemExit(f"install-wheels: refusing member {member!r}: it points outside site-packages")
    return purelib.joinpath(*parts)


def excluded(path: str, exclude: list[str]) -> bool:
    return any(path == e or path.startswith(e.rstrip("/") + "/") for e in exclude)


def install(wheel: Path, purelib: Path, exclude: list[str]) -> int:
    count = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            dest = None if info.is_dir() else target(info.filename, purelib)
            if dest is None or excluded(dest.relative_to(purelib).as_posix(), exclude):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(info))
            dest.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("--exclude", action="append", default=[], metavar="PATH")
    args = parser.parse_args()
    wheels = sorted(args.wheels.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"install-wheels: no wheels in {args.wheels}: run hack/operator-wheels.sh first")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wrong = [w.name for w in wheels if "-cp" in w.name and f"-{tag}-" not in w.name]
    if wrong:
        raise SystemExit(f"install-wheels: {', '.join(wrong)} are not for this python ({tag}): "
                         "the base image's python must be the one hack/operator-wheels.sh selected wheels for")
    purelib = args.root / sysconfig.get_paths()["purelib"].lstrip("/")
    for wheel in wheels:
        print(f"{wheel.name}: {install(wheel, purelib, args.exclude)} files")
    print(f"installed {len(wheels)} wheels into {purelib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
