"""The operation-history checker (tests/load/history.py) on hand-made histories: a valid one passes,
and each kind of anomaly is caught, named, and nothing else is reported for it."""
import pytest

from tests.load.history import ANOMALIES, History, check, read


def good_history() -> History:
    """Alice sends m1, m2 to Bob (conversation 7); Bob gets both, reads; a final complete read."""
    h = History(clock=iter(range(1000)).__next__)
    h.send("a", "m1")
    h.send("a", "m2")
    h.ack("a", "m1", 7, 1)
    h.push("b", "m1", 7, 1)
    h.push("b", "m2", 7, 2)   # a push may come before its ack
    h.ack("a", "m2", 7, 2)
    h.push("b", "m2", 7, 2)   # at-least-once: a repeat is allowed
    h.receipt("a", 7, 2, 1)
    h.receipt("a", 7, 2, 2)
    h.receipt("a", 7, 2, 2)
    h.sync("b2", 7, 0, [(1, "m1"), (2, "m2")], complete=True)
    return h


def only(verdict, name):
    """The findings of anomaly ``name``, after asserting no other kind was reported."""
    assert [k for k, v in verdict.anomalies.items() if v] == [name], verdict.summary()
    return verdict.anomalies[name]


def test_a_valid_history_passes_with_its_counts():
    verdict = check(good_history().ops)
    assert verdict.ok, verdict.summary()
    assert verdict.stats["acked"] == 2 and verdict.stats["duplicate_pushes"] == 1
    assert verdict.stats["conversations_read"] == 1 and verdict.stats["receipts"] == 3


def test_lost_an_acknowledged_message_missing_from_the_complete_read():
    h = good_history()
    h.send("a", "m3")
    h.ack("a", "m3", 7, 3)
    h.sync("b3", 7, 0, [(1, "m1"), (2, "m2")], complete=True)
    assert only(check(h.ops), "lost") == [{"msg_id": "m3", "conversation_id": 7, "seq": 3}]


def test_duplicated_one_message_stored_twice():
    h = good_history()
    h.sync("b3", 7, 0, [(1, "m1"), (2, "m2"), (3, "m2")], complete=True)
    found = check(h.ops)
    # Stored twice means also two seqs for one msg_id.
    assert found.anomalies["duplicated"] == [{"msg_id": "m2", "conversation_id": 7, "times": 2}]
    assert [f["msg_id"] for f in found.anomalies["msg_id_conflict"]] == ["m2"]


def test_seq_gap_a_complete_read_must_be_1_to_n():
    h = good_history()
    h.sync("b3", 7, 0, [(1, "m1"), (3, "m2")], complete=True)
    verdict = check(h.ops)
    assert verdict.anomalies["seq_gap"][0]["missing"] == [2]


def test_seq_gap_a_read_not_starting_at_1():
    h = History()
    h.send("a", "m1")
    h.ack("a", "m1", 7, 2)
    h.sync("b", 7, 0, [(2, "m1")], complete=True)
    assert only(check(h.ops), "seq_gap")[0]["missing"] == [1]


def test_seq_conflict_two_messages_pushed_with_one_seq():
    h = good_history()
    h.send("a", "m3")
    h.push("c", "m3", 7, 2)
    verdict = check(h.ops)
    assert verdict.anomalies["seq_conflict"] == [
        {"conversation_id": 7, "seq": 2, "msg_ids": ["m2", "m3"], "ops": [4, 12]}]


def test_msg_id_conflict_one_message_acked_at_one_seq_and_synced_at_another():
    h = History()
    h.send("a", "m1")
    h.send("a", "m2")
    h.ack("a", "m1", 7, 1)
    h.ack("a", "m2", 7, 2)
    h.sync("b", 7, 0, [(1, "m2"), (2, "m1")])  # not complete: only the conflict
    verdict = check(h.ops)
    assert [f["msg_id"] for f in verdict.anomalies["msg_id_conflict"]] == ["m2", "m1"]
    assert len(verdict.anomalies["seq_conflict"]) == 2


def test_phantom_a_message_nobody_sent():
    h = good_history()
    h.push("b", "ghost", 7, 3)
    assert only(check(h.ops), "phantom") == ["ghost"]


def test_phantom_an_ack_for_a_message_nobody_sent():
    h = History()
    h.ack("a", "ghost", 7, 1)
    assert only(check(h.ops), "phantom") == ["ghost"]


def test_an_ack_after_the_last_complete_read_is_not_lost():
    h = good_history()
    h.send("a", "m3")
    h.ack("a", "m3", 7, 3)
    h.sync("b3", 7, 0, [(1, "m1"), (2, "m2")], complete=True)  # read after the ack: lost
    assert only(check(h.ops), "lost")
    h.ops.pop()
    assert check(h.ops).ok  # the only complete read began before the ack: nothing to say


def test_delivered_not_acked_by_the_end():
    h = good_history()
    h.send("a", "m3")
    h.push("b", "m3", 7, 3)
    assert only(check(h.ops), "delivered_not_acked") == ["m3"]


def test_delivered_then_acked_later_is_fine():
    h = good_history()
    h.send("a", "m3")
    h.push("b", "m3", 7, 3)
    h.send("a", "m3")        # resent after a reconnect
    h.ack("a", "m3", 7, 3)
    assert check(h.ops).ok


def test_refused_but_stored():
    h = good_history()
    h.send("a", "m3")
    h.error("a", "m3", 40003)  # not a member: a definite no
    h.push("b", "m3", 7, 3)
    assert only(check(h.ops), "refused_but_stored") == [{"msg_id": "m3", "codes": [40003]}]


def test_refused_but_acked():
    h = good_history()
    h.send("a", "m3")
    h.error("a", "m3", 10002)
    h.ack("a", "m3", 7, 3)
    h.sync("b3", 7, 0, [(1, "m1"), (2, "m2"), (3, "m3")], complete=True)
    assert only(check(h.ops), "refused_but_stored") == [{"msg_id": "m3", "codes": [10002]}]


def test_an_ambiguous_refusal_may_still_be_stored():
    # 50008: the gateway could not hand the event to Kafka in time; it may still arrive.
    h = good_history()
    h.send("a", "m3")
    h.error("a", "m3", 50008)
    h.push("b", "m3", 7, 3)
    assert check(h.ops).ok
    assert not check(h.ops, ambiguous=frozenset()).ok


def test_cursor_backwards_on_one_connection():
    h = good_history()
    h.receipt("a", 7, 2, 1)
    assert only(check(h.ops), "cursor_backwards") == [
        {"conn": "a", "conversation_id": 7, "user_id": 2, "from": 2, "to": 1, "ops": [9, 11]}]


def test_cursors_of_different_users_or_connections_are_separate():
    h = good_history()
    h.receipt("a", 7, 1, 1)     # another user's cursor
    h.receipt("a2", 7, 2, 1)    # another connection (it may have missed the later receipt)
    assert check(h.ops).ok


@pytest.mark.parametrize("name", ANOMALIES)
def test_every_anomaly_kind_has_a_test(name):
    assert any(name in test for test in globals() if test.startswith("test_")), name


def test_write_and_read_round_trip(tmp_path):
    h = good_history()
    h.write(tmp_path / "h.jsonl")
    assert read(tmp_path / "h.jsonl") == h.ops
    assert check(read(tmp_path / "h.jsonl")).ok
