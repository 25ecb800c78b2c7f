"""The modules of common/ import one another in one direction only: no cycles, lazy ones included."""
import ast
from pathlib import Path

COMMON = Path(__file__).resolve().parents[1] / "common"


def imports_of(path: Path) -> set[str]:
    """common.* modules this file imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "common":
                found |= {f"common.{a.name}" for a in node.names}
            elif node.module.startswith("common."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("common.")}
    return found


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


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_common_has_no_import_cycle():
    graph = {f"common.{p.stem}": imports_of(p) - {f"common.{p.stem}"} for p in COMMON.glob("*.py")}
    assert len(graph) > 20
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
