"""The architecture, checked on the source: ``unspur`` (core) <- ``unspur.actors`` <-
``unspur.workflows``; no ray below the workflows; no import cycle (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: package prefix -> folder of the repository
FOLDERS = {"unspur.actors": "actors", "unspur.workflows": "workflows", "unspur.tune_spaces": "tune_spaces"}


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in {"unspur": "unspur", **FOLDERS}.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((prefix, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


GRAPH = {name: {t for t in _imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}


def _layer(name: str) -> int:
    return 2 if name.startswith("unspur.workflows") else 1 if name.startswith("unspur.actors") else 0


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) < 2))
def test_no_module_below_the_workflows_imports_ray_or_a_higher_layer(name: str) -> None:
    imported = _imports(MODULES[name])
    assert not {i for i in imported if i == "ray" or i.startswith("ray.")}, f"{name} imports ray"
    upward = sorted(t for t in GRAPH[name] if _layer(t) > _layer(name))
    assert not upward, f"{name} imports a higher layer: {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_folders_are_imported_by_their_package_names(name: str) -> None:
    """``actors``, ``workflows`` and ``tune_spaces`` are importable from a checkout's root too, but
    as a second copy of every module (registries would register twice): use ``unspur.<folder>``."""
    bare = sorted(i for i in _imports(MODULES[name]) if i.split(".")[0] in set(FOLDERS.values()))
    assert not bare, (
        f"{name} imports {bare}; import them as unspur.actors / unspur.workflows / unspur.tune_spaces"
    )


def test_no_import_cycles() -> None:
    seen: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(GRAPH[node]):
            if seen.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for name in sorted(GRAPH):
        if name not in seen:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_over_about_500_lines() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: c for n, c in long.items() if c > 520}, "split these modules"
