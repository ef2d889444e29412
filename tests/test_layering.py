"""The import rules of the design note, checked over the source tree (an `ast` walk, no imports run).

| package        | may import (besides libraries and itself)                  |
|----------------|------------------------------------------------------------|
| perturbloop/   | nothing of ours at module level (the CLI imports lazily)   |
| surrogates/    | perturbloop                                                |
| simulators/    | perturbloop                                                |
| acquisition/   | perturbloop, surrogates                                    |
| lab_adapters/  | perturbloop, simulators                                    |
| agent/         | all of the above                                           |
| flows/         | agent, perturbloop                                         |

Imports inside functions count too, except in `perturbloop/cli.py`, whose commands compose the
packages lazily (start-up stays fast).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("perturbloop", "surrogates", "simulators", "acquisition", "lab_adapters", "agent", "flows")
ALLOWED: dict[str, set[str]] = {
    "perturbloop": set(),
    "surrogates": {"perturbloop"},
    "simulators": {"perturbloop"},
    "acquisition": {"perturbloop", "surrogates"},
    "lab_adapters": {"perturbloop", "simulators"},
    "agent": {"perturbloop", "surrogates", "simulators", "acquisition", "lab_adapters"},
    "flows": {"agent", "perturbloop"},
}
LAZY_COMPOSERS = {"perturbloop/cli.py"}


def _imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, top-level package, at module level) of every import in a module."""
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name.split(".")[0], top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.lineno, child.module.split(".")[0], top))
            visit(child, nested)

    visit(tree, True)
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines under `if TYPE_CHECKING:` (annotations only, never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def violations() -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(), rel)
            skip = _type_checking_lines(tree)
            for line, mod, top in _imports(tree):
                if mod not in PACKAGES or mod == pkg or line in skip or mod in ALLOWED[pkg]:
                    continue
                if rel in LAZY_COMPOSERS and not top:
                    continue
                found.append(f"{rel}:{line} imports {mod}")
    return found


def test_packages_import_only_what_the_design_note_allows() -> None:
    assert violations() == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    tree = ast.parse("import os\nfrom agent.graph import build_graph\n\ndef f():\n    import flows.campaign\n")
    assert _imports(tree) == [(1, "os", True), (2, "agent", True), (5, "flows", False)]
