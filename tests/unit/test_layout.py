"""The package's layering, read from its imports: the folders say what the README's layers say.

Floors, bottom up: ``core`` (config, schemas, lakehouse, session, context) < the libraries
(``io``, ``search``, ``models``, ``trainers``, ``evaluation``, ``tracking``) < ``stages`` < the composition
(``pipeline``, ``integrations``) < the entry (``cli``, ``__main__``). A module may import its own
floor or a lower one, never a higher one; a stage imports no other stage and not the pipeline.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "recsys_spark"

FLOORS = {
    "core": 0,
    "io": 1, "search": 1, "models": 1, "trainers": 1, "evaluation": 1, "tracking": 1,
    "stages": 2,
    "pipeline": 3, "integrations": 3,
    "cli": 4, "__main__": 4,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every recsys_spark module ``module`` imports, at any depth of its code."""
    out = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("recsys_spark"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("recsys_spark"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in MODULES else base)
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_floor():
    rooms = {_room(m) for m in MODULES if m != "recsys_spark"}
    assert rooms <= set(FLOORS), f"modules outside the known floors: {sorted(rooms - set(FLOORS))}"
    # one level deep at most: recsys_spark/<room>/<module>.py
    deep = [m for m in MODULES if m.count(".") > 2]
    assert not deep, f"packages nested deeper than one level: {deep}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "recsys_spark"))
def test_no_import_runs_up_a_floor(module):
    floor = FLOORS[_room(module)]
    upward = sorted(
        target for target in _imports(module, MODULES[module])
        if target != "recsys_spark" and FLOORS.get(_room(target), -1) > floor
    )
    assert not upward, f"{module} (floor {floor}) imports from a higher floor: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m) == "stages" and m != "recsys_spark.stages"))
def test_a_stage_imports_no_other_stage_nor_the_pipeline(module):
    bad = sorted(
        target for target in _imports(module, MODULES[module])
        if target.startswith("recsys_spark.stages.") or target in ("recsys_spark.stages", "recsys_spark.pipeline")
    )
    assert not bad, f"{module} imports {bad}: stages talk only through tables"


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: an upward and a sideways import are both found."""
    fake = tmp_path / "m.py"
    fake.write_text("from recsys_spark.stages import score\nfrom recsys_spark.pipeline import run_stage\n")
    assert _imports("recsys_spark.stages.x", fake) == {"recsys_spark.stages.score", "recsys_spark.pipeline"}
