"""The layer rules of docs/design.md and docs/architecture.md, checked on the source.

Imports only flow downwards: a package may import the ones below it, never
the ones above. Checked statically (every import statement, lazy ones inside
functions included), so a rule broken on a rarely taken path still fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sgcore"

# package -> what it must never import (sgcore packages above it, and libraries).
FORBIDDEN = {
    # Redaction of credentials in URLs: standard library only, so every layer may use it.
    "redact": {"torch", "ray", "fsspec", "pyarrow", "numpy", "sgcore"},
    "settings": {"torch", "ray", "fsspec", "pyarrow", "sgcore.attribution", "sgcore.models",
                 "sgcore.io", "sgcore.pipeline", "sgcore.audit", "sgcore.bench"},
    "attribution": {"ray", "fsspec", "pyarrow", "s3fs", "sgcore.io", "sgcore.models",
                    "sgcore.pipeline", "sgcore.audit", "sgcore.bench", "sgcore.results",
                    "sgcore.ray_data"},
    "io": {"ray", "sgcore.pipeline", "sgcore.audit", "sgcore.bench", "sgcore.ray_data"},
    "models": {"ray", "sgcore.pipeline", "sgcore.audit", "sgcore.bench", "sgcore.ray_data"},
    "pipeline": {"sgcore.audit", "sgcore.bench", "sgcore.ray_data"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    target = ROOT / package
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_flow_downwards(package):
    broken = []
    for path in _files(package):
        for name in _imports(path):
            for bad in FORBIDDEN[package]:
                if name == bad or name.startswith(bad + "."):
                    broken.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not broken, "layer rule broken:\n" + "\n".join(broken)


def test_the_check_sees_imports():
    # The rule above would pass vacuously if no file were read.
    assert "torch" in _imports(ROOT / "attribution" / "smoothgrad.py")
    assert len(_files("io")) > 3
