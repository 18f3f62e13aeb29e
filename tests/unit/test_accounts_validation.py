import pytest

from common import accounts
from common.errors import AppError, Code


def test_valid_registration_defaults_nickname():
    fields = accounts.validate_registration({"username": "alice", "password": "s3cret-pass"})
    assert fields == {"username": "alice", "password": "s3cret-pass", "email": None, "nickname": "alice"}


@pytest.mark.parametrize("body, field", [
    ({"password": "s3cret-pass"}, "username"),
    ({"username": "al", "password": "s3cret-pass"}, "username"),
    ({"username": "has space", "password": "s3cret-pass"}, "username"),
    ({"username": 7, "password": "s3cret-pass"}, "username"),
    ({"username": "alice"}, "password"),
    ({"username": "alice", "password": "short"}, "password"),
    ({"username": "alice", "password": "x" * 129}, "password"),
    ({"username": "alice", "password": "s3cret-pass", "email": "nope"}, "email"),
    ({"username": "alice", "password": "s3cret-pass", "nickname": "n" * 65}, "nickname"),
])
def test_invalid_registration_names_the_field(body, field):
    with pytest.raises(AppError) as info:
        accounts.validate_registration(body)
    assert info.value.code is Code.INVALID_PARAMS
    assert info.value.field == field


def test_non_object_body_is_10002():
    with pytest.raises(AppError) as info:
        accounts.validate_login(["alice"])
    assert info.value.code is Code.INVALID_PARAMS


def test_profile_update_needs_a_known_field():
    assert accounts.validate_profile_update({"nickname": "Al"}) == {"nickname": "Al"}
    with pytest.raises(AppError) as info:
        accounts.validate_profile_update({"password": "x"})
    assert info.value.code is Code.INVALID_PARAMS
    with pytest.raises(AppError) as info:
        accounts.validate_profile_update({"avatar": 5})
    assert info.value.field == "avatar"


@pytest.mark.parametrize("body, field", [
    ({"username": "abcd\n", "password": "s3cret-pass"}, "username"),     # the `$` anchor let it through
    ({"username": "alice", "password": "s3cret-pass\ud800"}, "password"),
    ({"username": "alice", "password": "s3cret-pass", "email": "a@b.co\n"}, "email"),
    ({"username": "alice", "password": "s3cret-pass", "nickname": "\udc00"}, "nickname"),
    ({"username": "alice", "password": True}, "password"),
    ({"username": ["alice"], "password": "s3cret-pass"}, "username"),
])
def test_registration_strictness(body, field):
    with pytest.raises(AppError) as info:
        accounts.validate_registration(body)
    assert (info.value.code, info.value.field) == (Code.INVALID_PARAMS, field)


def test_find_uses_the_whole_username_rule():
    with pytest.raises(AppError) as info:
        accounts.find("abcd\n")
    assert (info.value.code, info.value.field) == (Code.INVALID_PARAMS, "username")


def test_profile_text_must_be_valid_unicode():
    with pytest.raises(AppError) as info:
        accounts.validate_profile_update({"avatar": "http://x/\ud800"})
    assert info.value.field == "avatar"
