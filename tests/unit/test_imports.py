"""How the functions package is cut, read from the source (ast, nothing imported): handlers see only
the handler API, and no module of the package imports another in a circle.

(gateway/ still has a circle, app ↔ ws ↔ frames ↔ http, and common.models ↔ common.migrations;
issue 12 part 6. Add their packages to the cycle check once they are split.)"""
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
    return {pkg + ("" if p.stem == "__init__" else "." + p.stem): p
            for pkg in packages for p in sorted((REPO / pkg).glob("*.py"))}


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


def test_no_module_of_the_functions_package_imports_another_in_a_circle():
    modules = _modules("functions")
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert graph["functions.runtime"] >= {"functions.api", "functions.policy", "functions.commits"}
    assert _cycles(graph) == []


def test_function_modules_import_the_handler_api_never_the_engine_or_kafka():
    for name in (*FUNCTIONS, "rpc"):
        imported = _imports(REPO / "functions" / f"{name}.py", set())
        engine = {m for m in imported if m.startswith(("functions.runtime", "kafka"))}
        assert not engine, f"functions/{name}.py imports {sorted(engine)}"
