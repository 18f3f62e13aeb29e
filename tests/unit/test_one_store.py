"""One implementation assigns a conversation's seq (issue 12 part 4), read from the source (ast,
nothing imported): every write of a ``message`` row or of ``conversation.last_seq`` in the
deployables is in ``common.chat.store._store_batch`` (through its statement helpers, called from
nowhere else), which the send function's batches and the gateway's system messages (``chat.store_system``) both go through. A second store, in the gateway
or in a function, would number a conversation twice; this test names where it came back.

The behaviour (system messages and sends interleaved in one group get 1, 2, 3, ...) is tested in
tests/unit/functions/test_send.py."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WRITES = {"insert", "insert_many", "insert_from", "create", "get_or_create", "replace", "replace_many",
          "bulk_create", "bulk_update", "update"}
RAW_SQL = re.compile(r"(?i)\b(insert\s+into|update|replace\s+into)\s+\W?(message|conversation)\b")


def _writer(node: ast.AST) -> bool:
    """A call that writes message rows, Conversation.last_seq, or raw SQL that does either."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(RAW_SQL.search(node.value))
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    target, method = node.func.value, node.func.attr
    if isinstance(target, ast.Name) and target.id == "Message" and method in WRITES:
        return True
    if method == "save" and isinstance(target, ast.Call) and getattr(target.func, "id", None) == "Message":
        return True
    return method == "update" and any(k.arg == "last_seq" for k in node.keywords)


def _seq_writers() -> set[str]:
    found = set()
    for package in ("common", "functions", "gateway"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for func in ast.walk(tree):
                if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if any(_writer(n) for n in ast.walk(func)):
                        found.add(f"{path.relative_to(REPO).with_suffix('')}.{func.name}".replace("/", "."))
    return found


# Called from _store_batch only, in its transaction: _write_changes writes what a batch's events
# (edit, recall, ...) do to earlier messages; the two statements are the batch's seq move and its
# insert (rendered once per shape).
HELPERS = ("_write_changes", "_seq_statement", "_insert_statement")


def test_messages_and_last_seq_are_written_in_one_place():
    assert _seq_writers() == {f"common.chat.store.{h}" for h in HELPERS}
    source = (REPO / "common" / "chat" / "store.py").read_text()
    batch = source[source.index("def _store_batch("):source.index("\n\n\n", source.index("def _store_batch("))]
    for helper in HELPERS:
        callers = {f"{path.relative_to(REPO)}" for package in ("common", "functions", "gateway")
                   for path in (REPO / package).rglob("*.py") if f"{helper}(" in path.read_text()}
        assert callers == {"common/chat/store.py"}, helper
        assert source.count(f"{helper}(") == 2 and f"{helper}(" in batch, helper
