"""Access-token claims (common/auth.py): a session's token names it and the user's token version;
claims of the wrong type are refused like a forged token."""
import jwt
import pytest

from common import auth
from common.config import JwtConfig
from common.errors import AppError, Code

JWT = JwtConfig(secret="x" * 40, ttl_seconds=60, issuer="pingme")
NOW = 1_700_000_000


def signed(**claims) -> str:
    return jwt.encode({"sub": "7", "iat": NOW, "exp": NOW + 60, "iss": "pingme", **claims}, JWT.secret,
                      algorithm="HS256")


def test_a_session_token_carries_its_session_and_version():
    claims = auth.decode_token(auth.issue_token(7, JWT, NOW, version=3, sid="a" * 32), JWT, NOW)
    assert (claims["sub"], claims["ver"], claims["sid"], claims["exp"]) == ("7", 3, "a" * 32, NOW + 60)
    bare = auth.decode_token(auth.issue_token(7, JWT, NOW), JWT, NOW)
    assert "sid" not in bare and "ver" not in bare
    assert auth.verify_token(signed(ver=0, sid="b" * 32), JWT, NOW) == 7


def test_two_tokens_issued_for_one_session_in_one_second_differ():
    """A refresh right after a login gets a token of its own, not the one it replaces."""
    first, second = (auth.issue_token(7, JWT, NOW, version=0, sid="a" * 32) for _ in range(2))
    assert first != second
    assert auth.decode_token(first, JWT, NOW)["jti"] != auth.decode_token(second, JWT, NOW)["jti"]


@pytest.mark.parametrize("claims", [
    {"sub": 7}, {"sub": "07"}, {"sub": "0"}, {"sub": "-7"}, {"sub": "7\n"}, {"sub": "1" * 20},
    {"ver": True}, {"ver": "1"}, {"ver": 1.0},
    {"sid": 5}, {"sid": "short"}, {"sid": "A" * 32}, {"sid": "a" * 32 + "\n"},
])
def test_claims_of_the_wrong_shape_are_an_invalid_token(claims):
    with pytest.raises(AppError) as err:
        auth.decode_token(signed(**claims), JWT, NOW)
    assert err.value.code == Code.INVALID_TOKEN


@pytest.mark.parametrize("token", [None, 5, b"abc", ""])
def test_a_token_that_is_not_a_string(token):
    with pytest.raises(AppError) as err:
        auth.decode_token(token, JWT, NOW)
    assert err.value.code == Code.INVALID_TOKEN


def test_a_verified_token_is_remembered_but_its_expiry_is_checked_on_every_use():
    token = auth.issue_token(9, JWT, NOW, version=1, sid="c" * 32)
    auth._verified.cache_clear()
    first = auth.decode_token(token, JWT, NOW)
    first["sub"] = "666"  # a caller's change does not reach the next caller
    again = auth.decode_token(token, JWT, NOW + 59)
    assert again["sub"] == "9" and auth._verified.cache_info().hits == 1  # no second HMAC
    with pytest.raises(AppError) as err:
        auth.decode_token(token, JWT, NOW + 60)
    assert err.value.code == Code.TOKEN_EXPIRED
    # Remembered per secret and issuer: another key's gateway refuses it.
    with pytest.raises(AppError) as err:
        auth.decode_token(token, JwtConfig(secret="y" * 40, ttl_seconds=60, issuer="pingme"), NOW)
    assert err.value.code == Code.INVALID_TOKEN


def test_a_refused_token_is_not_remembered():
    forged = signed()[:-2] + "AA"
    auth._verified.cache_clear()
    for _ in range(2):
        with pytest.raises(AppError) as err:
            auth.decode_token(forged, JWT, NOW)
        assert err.value.code == Code.INVALID_TOKEN
    assert auth._verified.cache_info().currsize == 0
