"""hack/install-wheels.py, which the operator Dockerfile runs instead of pip."""

from __future__ import annotations

import importlib.util
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_wheels", REPO / "hack" / "install-wheels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_parts_land_in_site_packages_and_exclusions_are_skipped(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        z.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
        z.writestr("demo-1.0.data/purelib/extra.py", "")
        z.writestr("demo-1.0.data/scripts/demo", "#!/bin/sh\n")
        z.writestr("kubernetes/aio/big.py", "")
        z.writestr("kubernetes/client/small.py", "")
        z.writestr("fmrec/model.py", "")
    mod = _script()
    purelib = tmp_path / "root" / sysconfig.get_paths()["purelib"].lstrip("/")
    assert mod.install(wheel, purelib, ["fmrec", "kubernetes/aio"]) == 4
    installed = sorted(p.relative_to(purelib).as_posix() for p in purelib.rglob("*") if p.is_file())
    assert installed == ["demo-1.0.dist-info/METADATA", "demo/__init__.py", "extra.py", "kubernetes/client/small.py"]


def test_member_escaping_site_packages_is_refused(tmp_path: Path) -> None:
    mod = _script()
    try:
        mod.target("demo/../../etc/passwd", tmp_path)
    except SystemExit as err:
        assert "outside site-packages" in str(err)
    else:
        raise AssertionError("a member with .. was accepted")
