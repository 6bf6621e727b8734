"""Packaging guards: every package is listed; `import qcc` stays light; no folder-name imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"compiler": "qcc", "passes": "qcc.passes", "costmodel": "qcc.costmodel", "backends": "qcc.backends"}


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_import_qcc_needs_numpy_only():
    code = ("import sys, qcc, qcc.ir, qcc.passes, qcc.target, qcc.errors, qcc.interpreter; "
            "heavy = [m for m in ('torch', 'tvm', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "print(heavy); assert not heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_source_tree_is_linked():
    """The strict editable install must see every module; a missing one means: re-run `make setup`."""
    import qcc

    installed = Path(qcc.__file__).parent
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / "compiler").rglob("*.py")
               if not (installed / p.relative_to(ROOT / "compiler")).exists()]
    assert not missing, f"re-run the dev install (make setup); not linked: {missing}"
