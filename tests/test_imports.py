"""The modules of common/ import one another in one direction only: no cycles, lazy ones
included, and no folder importing from a folder above it (README, "Where things are")."""
import ast
from pathlib import Path

COMMON = Path(__file__).resolve().parents[1] / "common"

# Top-level modules a user runs (python -m common.<name>), and the ensemble's own command
# line: they may import anything, and only other commands import them.
COMMANDS = {"common.cli", "common.demo", "common.evaluate", "common.extract", "common.sample_data",
            "common.status", "common.ensemble.command", "common.ensemble.__main__"}
# Each folder may import its own modules, those of the folders listed before it, and the
# top-level base modules (the design card's pieces: specialists, losses, preprocess, ...).
LAYERS = ("common", "common.data", "common.faces", "common.training", "common.ensemble")


def module_name(path: Path) -> str:
    parts = path.relative_to(COMMON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """common.* modules this file imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "common" or node.module in PACKAGES:
                found |= {f"{node.module}.{a.name}" for a in node.names}
            elif node.module.startswith("common."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("common.")}
    return found


PACKAGES = {module_name(p) for p in COMMON.rglob("__init__.py")}
MODULES = {module_name(p): p for p in COMMON.rglob("*.py")}


def layer(module: str) -> int:
    """Index in LAYERS of the folder holding `module` (a package counts as its own folder)."""
    folder = module if module in PACKAGES else module.rsplit(".", 1)[0]
    return LAYERS.index(folder)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the folder order or reaches a command from a non-command."""
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if m in COMMANDS:
                continue
            if d in COMMANDS or layer(d) > layer(m):
                bad.append(f"{m} -> {d}")
    return bad


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(p) - {m} for m, p in MODULES.items()}


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_import_names_a_real_module():
    graph = import_graph()
    unknown = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if d not in MODULES)
    assert not unknown


def test_common_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_upward_imports_are_seen():
    graph = {"common.data.samples": {"common.training.engine"}, "common.recipes": {"common.faces.views"},
             "common.faces.video": {"common.data.audio", "common.errors"},
             "common.training.stage": {"common.status"}}
    assert upward_imports(graph) == ["common.data.samples -> common.training.engine",
                                     "common.recipes -> common.faces.views",
                                     "common.training.stage -> common.status"]


def test_no_folder_imports_from_a_folder_above_it():
    assert upward_imports(import_graph()) == []
