"""How the packages are cut, read from the source (ast, nothing imported): handlers see only the
handler API, no module imports another in a circle (imports inside functions count: they are how
circles hide), and the layers point one way: gateway and functions use common, never each other."""
import ast
from pathlib import Path

from functions import FUNCTIONS

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & known if known else found


def _modules(*packages: str) -> dict[str, Path]:
    """Every module of the packages, subpackages included (``common.chat.store``)."""
    found = {}
    for path in sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _graph(*packages: str) -> dict[str, set[str]]:
    modules = _modules(*packages)
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_no_module_imports_another_in_a_circle():
    graph = _graph("common", "functions", "gateway")
    assert graph["functions.runtime"] >= {"functions.api", "functions.policy", "functions.commits"}
    assert graph["common.migrations"] >= {"common.models"}
    assert graph["common.chat.groups"] >= {"common.chat.store"}
    assert _cycles(graph) == []


def test_layers_point_one_way():
    for name, imported in _graph("common", "functions", "gateway").items():
        layer = name.split(".")[0]
        upward = {m for m in imported if m.split(".")[0] != layer and m.split(".")[0] != "common"}
        assert not upward, f"{name} imports {sorted(upward)}"


def test_function_modules_import_the_handler_api_never_the_engine_or_kafka():
    for name in (*FUNCTIONS, "request"):
        imported = _imports(REPO / "functions" / f"{name}.py", set())
        engine = {m for m in imported if m.startswith(("functions.runtime", "kafka"))}
        assert not engine, f"functions/{name}.py imports {sorted(engine)}"
