"""The package's shape (docs/architecture.md): a core that imports no wing, wings that import only the core, no
import cycle, at most ten top-level modules."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sadcl_hf"
WINGS = ("serving", "training", "analysis", "hub")


def module_name(path: Path) -> str:
    parts = ["sadcl_hf", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "metrics" not in path.parts}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file (lazy imports inside functions included)."""
    is_package = path.name == "__init__.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in known:
                imported.add(candidate)
                break
    imported.discard(name)
    return imported


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def wing_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


def test_at_most_ten_top_level_modules():
    top_level = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top_level) <= 10, top_level


@pytest.mark.parametrize("module", sorted(name for name in package_modules() if name != "sadcl_hf"))
def test_core_imports_no_wing_and_wings_only_the_core(module):
    wing = wing_of(module)
    for target in import_graph()[module]:
        if target == "sadcl_hf":
            raise AssertionError(f"{module} imports the package facade; import the defining module instead")
        target_wing = wing_of(target)
        if wing is None:
            assert target_wing is None, f"core module {module} imports wing module {target}"
        else:
            assert target_wing in (None, wing), f"wing module {module} imports another wing's module {target}"


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
