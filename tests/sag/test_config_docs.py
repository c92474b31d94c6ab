"""SaGConfig documents every field, and the config module stays below the model (checkpoint tools read configs
without building one)."""

import ast
import dataclasses
import re
from pathlib import Path

from sag.config import SaGConfig

SAG = Path(__file__).resolve().parents[2] / "sag"


def test_every_field_is_documented():
    doc = SaGConfig.__doc__
    missing = [f.name for f in dataclasses.fields(SaGConfig) if not re.search(rf"^ +{f.name}: \S", doc, re.M)]
    assert not missing, f"SaGConfig fields without a docstring entry: {missing}"


def test_config_does_not_reach_the_model():
    def sag_imports(module: str) -> set[str]:
        tree = ast.parse((SAG / f"{module}.py").read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sag."):
                found.add(node.module.split(".")[1])
        return found

    reached, todo = set(), ["config"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += sorted(sag_imports(module))
    assert "model" not in reached and "entity" not in reached, sorted(reached)
