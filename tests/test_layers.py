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

# The packages above the storage layer (docs/architecture.md's list, top down:
# bench, demo, audit, ray_data, pipeline, render, results).
_ABOVE_IO = {"sgcore.bench", "sgcore.demo", "sgcore.audit", "sgcore.ray_data", "sgcore.pipeline",
             "sgcore.render", "sgcore.results"}
# Standard library only: every layer may use these.
_STDLIB_ONLY = {"torch", "ray", "fsspec", "pyarrow", "numpy", "PIL", "sgcore"}
_MODELS = {"ray", "sgcore.config", "sgcore.cli", *_ABOVE_IO}

# package -> what it must never import (sgcore packages above it, and libraries).
# Every module and package of sgcore has a rule (test_every_package_has_a_rule).
FORBIDDEN = {
    # Redaction of credentials in URLs: standard library only, so every layer may use it.
    "redact": _STDLIB_ONLY,
    "errors": _STDLIB_ONLY,
    "seeds": _STDLIB_ONLY,
    # The layouts by name; sgcore.io.layouts is imported by name on first use.
    "input_formats": _STDLIB_ONLY,
    "settings": {"torch", "ray", "fsspec", "pyarrow", "sgcore.attribution", "sgcore.models",
                 "sgcore.io", "sgcore.config", "sgcore.cli", *_ABOVE_IO},
    # A laptop that only submits jobs needs no torch (tests/test_config.py checks it at run time).
    "config": {"torch", "ray", "fsspec", "pyarrow", "sgcore.attribution", "sgcore.models",
               "sgcore.io", "sgcore.cli", *_ABOVE_IO},
    # The CLI may import sgcore.io (lazily, to name a storage error in one line), never torch.
    "cli": {"torch", "ray", "sgcore.attribution", "sgcore.models", *_ABOVE_IO},
    "attribution": {"ray", "fsspec", "pyarrow", "s3fs", "sgcore.io", "sgcore.models", "sgcore.config",
                    "sgcore.cli", *_ABOVE_IO},
    "io": {"ray", "torch", "sgcore.attribution", "sgcore.models", "sgcore.config", "sgcore.cli",
           *_ABOVE_IO},
    "models": _MODELS,
    # A source never reaches back into the registry that dispatches to it.
    "models.sources": _MODELS | {"sgcore.models.registry"},
    "models.zoo": _MODELS | {"sgcore.models.registry"},
    "results": {"ray", "sgcore.cli", *_ABOVE_IO - {"sgcore.results"}},
    # Pictures of maps and of result rows: numpy and PIL, above results (never the other way).
    "render": {"ray", "torch", "matplotlib", "sgcore.cli", *_ABOVE_IO - {"sgcore.results", "sgcore.render"}},
    "pipeline": {"sgcore.audit", "sgcore.bench", "sgcore.ray_data", "sgcore.demo"},
    "ray_data": {"sgcore.audit", "sgcore.bench", "sgcore.demo"},
    "audit": {"sgcore.bench", "sgcore.demo"},
    "demo": {"sgcore.bench"},
    "bench": set(),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)  # "from sgcore import render" imports sgcore.render too:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _files(package: str) -> list[Path]:
    """The files of ``package`` ("models.zoo": a sub-package), sub-packages with their own rule left out."""
    target = ROOT.joinpath(*package.split("."))
    if not target.is_dir():
        return [target.with_suffix(".py")] if target.with_suffix(".py").exists() else []
    own = [ROOT.joinpath(*p.split(".")) for p in FORBIDDEN if p.startswith(package + ".")]
    return sorted(f for f in target.rglob("*.py") if not any(o in f.parents for o in own))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_flow_downwards(package):
    broken = []
    for path in _files(package):
        for name in _imports(path):
            for bad in FORBIDDEN[package] | {"jobs"}:  # the entry points are above everything
                if name == bad or name.startswith(bad + "."):
                    broken.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not broken, "layer rule broken:\n" + "\n".join(broken)


def test_the_check_sees_imports():
    # The rule above would pass vacuously if no file were read.
    assert "torch" in _imports(ROOT / "attribution" / "smoothgrad.py")
    assert len(_files("io")) > 3
    assert "sgcore.render" in _imports(ROOT / "audit" / "plots.py")  # from sgcore import render


def test_every_package_has_a_rule():
    # A new module or package of sgcore states what it may import before it lands.
    tops = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    tops |= {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert sorted(tops - set(FORBIDDEN)) == []
    assert [p for p in FORBIDDEN if not _files(p)] == []  # every rule reads files


def test_a_sub_package_with_its_own_rule_is_checked_by_it():
    # models.sources has its own rule and is checked as well as the models' files.
    models = _files("models")
    assert ROOT / "models" / "registry.py" in models
    assert not any("sources" in p.parts or "zoo" in p.parts for p in models)
    assert ROOT / "models" / "sources" / "base.py" in _files("models.sources")
