"""The shape README's "Where things are" promises: a short top of `common/`, a few folders,
modules under 400 lines and functions under 80, so a newcomer can read any one in a sitting."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = REPO / "common"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def python_files() -> list[Path]:
    return sorted(COMMON.rglob("*.py")) + sorted(REPO.glob("train_*.py"))


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than `limit` lines."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_long_functions_are_seen():
    body = "\n".join(f"        x{i} = {i}" for i in range(5))
    source = f"def short():\n    pass\n\n\nclass A:\n    def long(self):\n{body}\n"
    assert long_functions(source, 5) == [("long", 6)]
    assert long_functions(source, 6) == []


def test_no_function_over_80_lines():
    found = {f"{p.relative_to(REPO)}:{name}": n for p in python_files()
             for name, n in long_functions(p.read_text(), MAX_FUNCTION_LINES)}
    assert found == {}


def test_no_module_over_400_lines():
    found = {str(p.relative_to(REPO)): n for p in python_files()
             if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert found == {}


def test_top_of_common_is_short_and_grouped():
    top = [p.name for p in COMMON.glob("*.py")]
    folders = [p.name for p in COMMON.iterdir() if (p / "__init__.py").is_file()]
    assert len(top) <= 16, top
    assert {"data", "faces", "training", "ensemble"} <= set(folders)
    assert {"specialists.py", "losses.py", "preprocess.py", "chunks.py"} <= set(top)  # the design card
