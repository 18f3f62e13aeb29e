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
