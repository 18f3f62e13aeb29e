"""common/validate.py: every hostile input of issue 13 is a 10002 naming its field, never an exception
of another kind (which would be a 500, a dead letter or a silent close)."""
import json

import pytest

from common import validate as v
from common.errors import AppError, Code


def refused(fn, *args, **kwargs) -> AppError:
    with pytest.raises(AppError) as err:
        fn(*args, **kwargs)
    assert err.value.code == Code.INVALID_PARAMS
    return err.value


def test_a_good_document_passes_unchanged():
    doc = {"type": "send", "payload": {"msg_id": "m1", "to_user_id": 2 ** 63 - 1, "content": "héllo 👋",
                                       "ids": [1, 2], "ok": True, "none": None, "x": -1.5}}
    assert v.parse_json(json.dumps(doc)) == doc
    assert v.parse_json(json.dumps(doc, ensure_ascii=False).encode()) == doc


@pytest.mark.parametrize("raw, field", [
    ('{"content": "\\ud800"}', "content"),                      # a lone surrogate, escaped
    ('{"payload": {"content": "a\\udc00b"}}', "payload.content"),
    ('{"payload": {"m": ["ok", "\\udfff"]}}', "payload.m"),
    ('{"\\ud800": 1}', None),                                    # in a key: not echoed back
    ('{"id": 9223372036854775808}', "id"),                       # 2^63
    ('{"id": -9223372036854775809}', "id"),
    ('{"payload": {"seq": 99999999999999999999999}}', "payload.seq"),
    ('{"x": 1e999}', "x"),                                       # parses to inf
    ('{"x": -1e999}', "x"),
])
def test_values_outside_what_can_be_stored_name_their_field(raw, field):
    assert refused(v.parse_json, raw).field == field


@pytest.mark.parametrize("raw", ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', "[1,]", "{", "",
                                 "\"a\" \"b\"", "1" * 5000, b"\xff\xfe{}", b'{"a": "\xed\xa0\x80"}'])
def test_invalid_json_and_invalid_utf8(raw):
    refused(v.parse_json, raw)


def test_depth_is_bounded():
    assert v.parse_json("[" * 8 + "]" * 8) == [[[[[[[[]]]]]]]]
    assert "nested deeper than 8" in refused(v.parse_json, "[" * 9 + "]" * 9).message
    assert refused(v.parse_json, '{"a": ' * 9 + "1" + "}" * 9).field == "a.a.a.a.a.a.a.a"
    # 10,000 deep (the case) and a whole 64 KiB of it: refused, not a RecursionError
    refused(v.parse_json, "[" * 10_000 + "]" * 10_000)
    refused(v.parse_json, "[" * (64 * 1024))


def test_size_is_bounded():
    doc = json.dumps({"content": "x" * (64 * 1024 - 20)})
    assert len(doc.encode()) <= v.MAX_BODY_BYTES and v.parse_json(doc)
    assert "larger than 65536 bytes" in refused(v.parse_json, json.dumps({"content": "x" * 64 * 1024})).message
    assert refused(v.parse_json, "[1]", max_bytes=2)


def test_odd_keys_are_not_echoed_as_the_field():
    long_key = "k" * 500
    assert refused(v.parse_json, json.dumps({long_key: {"x": 2 ** 64}})).field is None


@pytest.mark.parametrize("value", [True, False, "3", 3.0, [3], {"a": 3}])
def test_integer_fields_take_json_integers_only(value):
    assert refused(v.integer, {"to_user_id": value}, "to_user_id").field == "to_user_id"


def test_integer_ranges_and_absence():
    assert v.integer({"id": 5}, "id") == 5
    assert refused(v.integer, {"id": 0}, "id").message == "id must be between 1 and 9223372036854775807"
    assert refused(v.integer, {"id": 2 ** 63}, "id").field == "id"
    assert refused(v.integer, {}, "id").message == "id is required"
    assert v.integer({"seq": None}, "seq", required=False, minimum=0, default=7) == 7
    assert v.integer({"seq": 0}, "seq", minimum=0) == 0


@pytest.mark.parametrize("value, message", [
    ({"a": 1}, "member_ids must be a list of ids"), ("1,2", "member_ids must be a list of ids"),
    ([1, [2]], "member_ids must hold positive integer ids only"),
    ([1, True], "member_ids must hold positive integer ids only"),
    ([1, "2"], "member_ids must hold positive integer ids only"),
    ([0], "member_ids must hold positive integer ids only"),
    ([2 ** 63], "member_ids must hold positive integer ids only"),
    (list(range(1, 12)), "member_ids holds more than 10 ids"),
])
def test_id_lists(value, message):
    err = refused(v.id_list, {"member_ids": value}, "member_ids", max_items=10)
    assert (err.message, err.field) == (message, "member_ids")


def test_id_list_empty_and_absent():
    assert v.id_list({}, "ids", max_items=3) == []
    assert v.id_list({"ids": [3, 1]}, "ids", max_items=3) == [3, 1]
    assert v.id_list({"ids": [3, 1, 3]}, "ids", max_items=3) == [3, 1]
    assert refused(v.id_list, {"ids": []}, "ids", max_items=3, allow_empty=False).message == "ids must not be empty"


def test_text_fields():
    assert v.text({"name": "héllo"}, "name", max_len=5) == "héllo"
    assert refused(v.text, {"name": "héllo!"}, "name", max_len=5).message == "name must be 1-5 characters"
    assert refused(v.text, {"name": 5}, "name", max_len=5).message == "name must be a string"
    assert refused(v.text, {"name": ""}, "name", max_len=5).field == "name"
    assert refused(v.text, {"name": "a\ud800"}, "name", max_len=5).field == "name"
    assert refused(v.text, {"name": "a\x00b"}, "name", max_len=5).message == "name must not contain NUL"
    assert v.text({"email": ""}, "email", required=False, max_len=5, empty_is_absent=True) is None
    assert v.text({}, "nick", required=False, max_len=5, default="d") == "d"


@pytest.mark.parametrize("name", ["abc", "A.b-c_9", "x" * 32])
def test_usernames(name):
    assert v.username(name) == name


@pytest.mark.parametrize("name", ["abcd\n", "ab", "x" * 33, "abc d", "äbcd", "abc\u200b", "", None, 1234,
                                  ["abcd"], "abc\x00"])
def test_username_rule_is_the_whole_string(name):
    err = refused(v.username, name)
    assert (err.field, err.message) == ("username", v.USERNAME_RULE)


def test_choice():
    assert v.choice({}, "ack_type", ("delivered", "read"), "delivered") == "delivered"
    assert refused(v.choice, {"ack_type": "seen"}, "ack_type", ("delivered", "read")).field == "ack_type"
    assert refused(v.choice, {"ack_type": ["read"]}, "ack_type", ("delivered", "read")).field == "ack_type"


@pytest.mark.parametrize("raw", ["+1", " 1", "1 ", "1_000", "١٢", "0x10", "1.0", "-1", "1e3",
                                 "99999999999999999999", "9223372036854775808"])
def test_query_integers_are_ascii_digits_in_range(raw):
    assert refused(v.query_int, raw, "cursor").field == "cursor"


def test_query_integer_values():
    assert v.query_int(None, "cursor", default=0) == 0
    assert v.query_int("", "cursor", default=0) == 0
    assert v.query_int("9223372036854775807", "cursor") == 2 ** 63 - 1
    assert v.query_int("007", "limit", minimum=1, maximum=200) == 7
    assert refused(v.query_int, "201", "limit", minimum=1, maximum=200).message == "limit must be between 1 and 200"


def test_obj():
    assert v.obj({"a": 1}) == {"a": 1}
    assert refused(v.obj, [], "payload").field == "payload"
    assert refused(v.obj, "x").field is None


def test_the_path_stops_at_an_odd_key():
    assert refused(v.parse_json, json.dumps({"payload": {"k" * 41: {"x": 2 ** 64}}})).field is None
    assert refused(v.parse_json, json.dumps({"payload": {"a-b": 2 ** 64}})).field is None
    assert refused(v.parse_json, json.dumps([{"x": 2 ** 64}])).field is None
