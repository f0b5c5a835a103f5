"""The import contracts of `make lint` (.importlinter) hold on the tree, and each kind of contract
breaks when a module crosses it: a copy of the three packages gets one offending import at a time,
and import-linter, run on the copy, must name the contract that broke."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = {"fmop": REPO / "operator" / "fmop", "fmrec": REPO / "model" / "fmrec", "fmdev": REPO / "devtools" / "fmdev"}


def lint(root: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    """import-linter with the project's contracts (or just one) on the packages under root, which are
    found before the installed ones."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    only = ["--contract", contract] if contract else []
    return subprocess.run([str(LINT), "--no-cache", *only, str(REPO / ".importlinter")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contracts")
    for name, src in PACKAGES.items():
        shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_tree_keeps_every_contract() -> None:
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("fmop/handlers.py", "import fmrec.tokens", "operator-alone"),
    ("fmop/rollout/controller.py", "import fmdev.local.common", "operator-alone"),
    ("fmrec/tokens.py", "import fmop.api", "model-alone"),
    ("fmop/api/common.py", "import fmop.rollout.engine", "layers"),
    ("fmop/rollout/engine.py", "import fmop.handlers", "layers"),
    ("fmop/rollout/engine.py", "import kubernetes.client", "pure-core"),
    ("fmop/rollout/providers/gatewayapi.py", "import urllib.request", "pure-core"),
    ("fmop/assess.py", "import fmop.kube", "pure-core"),
], ids=["operator-imports-model", "operator-imports-devtools", "model-imports-operator", "api-imports-engine",
        "engine-imports-handlers", "engine-imports-kubernetes", "renderer-imports-http", "assess-imports-adapter"])
def test_a_crossing_import_breaks_its_contract(copy: Path, module: str, line: str, contract: str) -> None:
    path = copy / module
    original = path.read_text()
    assert lint(copy, contract).returncode == 0, f"the unchanged copy already breaks {contract}"
    path.write_text(original + f"\n{line}  # crossing on purpose\n")
    try:
        done = lint(copy, contract)
    finally:
        path.write_text(original)
    assert done.returncode != 0, f"{module} importing `{line}` kept {contract}:\n{done.stdout}"
    assert "1 broken" in done.stdout, done.stdout
    target = line.split()[-1]  # the report names the module imported; an outside package by its top level
    assert (target if target.split(".")[0] in PACKAGES else target.split(".")[0]) in done.stdout, done.stdout
