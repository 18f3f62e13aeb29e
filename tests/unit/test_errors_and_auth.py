import re
import time
from pathlib import Path

import pytest

from common import auth
from common.config import JwtConfig
from common.errors import RESERVED, AppError, Code

JWT = JwtConfig(secret="x" * 40, ttl_seconds=60, issuer="pingme")


def test_code_table_is_unique_and_complete():
    # __members__ keeps aliases (iterating Code skips them): a reused number shows up here.
    names = {name: int(code) for name, code in Code.__members__.items()}
    reused = {name: value for name, value in names.items() if list(names.values()).count(value) > 1}
    assert not reused
    for value in (0, 10001, 10002, 10003, 10004, 10005, 10006, 10007, 20001, 20002, 20003, 20004,
                  30001, 30002, 30003, 30004, 30005, 40001, 40002, 40003,
                  50001, 50002, 50003, 50004, 50005, 50006, 50007, 50008):
        assert Code(value).message


def test_every_code_is_sent_somewhere_except_the_reserved_ones_which_the_table_marks():
    repo = Path(__file__).resolve().parents[2]
    source = "\n".join(p.read_text() for pkg in ("common", "functions", "gateway")
                       for p in (repo / pkg).rglob("*.py") if p.name != "errors.py")
    used = {code for code in Code if re.search(rf"\bCode\.{code.name}\b", source)}
    assert used == set(Code) - RESERVED
    table = (repo / "docs" / "PROTOCOL.md").read_text()
    for code in RESERVED:
        assert re.search(rf"^\| {int(code)} \| reserved\b", table, re.M), code


def test_app_error_round_trips_through_a_reply():
    exc = AppError(Code.INVALID_PARAMS, "username is required", field="username")
    again = AppError.from_dict(exc.to_dict())
    assert (again.code, again.message, again.field) == (Code.INVALID_PARAMS, "username is required", "username")
    assert AppError.from_dict({"code": "garbage"}).code is Code.SERVER_ERROR


def test_password_hash_verifies_only_the_right_password():
    stored = auth.hash_password("correct horse", 1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert auth.verify_password("correct horse", stored)
    assert not auth.verify_password("wrong horse", stored)
    assert not auth.verify_password("correct horse", "garbage")
    assert auth.hash_password("correct horse", 1000) != stored  # salted


def test_token_round_trip_and_claims():
    token = auth.issue_token(42, JWT, now=1_000_000)
    assert auth.verify_token(token, JWT, now=1_000_010) == 42


def test_expired_token_is_30004():
    token = auth.issue_token(42, JWT, now=1_000_000)
    with pytest.raises(AppError) as info:
        auth.verify_token(token, JWT, now=1_000_060)
    assert info.value.code is Code.TOKEN_EXPIRED


@pytest.mark.parametrize("token", ["", "not.a.jwt", "abc"])
def test_malformed_token_is_30005(token):
    with pytest.raises(AppError) as info:
        auth.verify_token(token, JWT)
    assert info.value.code is Code.INVALID_TOKEN


def test_forged_or_foreign_token_is_30005():
    forged = auth.issue_token(42, JwtConfig(secret="y" * 40, ttl_seconds=60, issuer="pingme"))
    foreign = auth.issue_token(42, JwtConfig(secret="x" * 40, ttl_seconds=60, issuer="other"))
    for token in (forged, foreign):
        with pytest.raises(AppError) as info:
            auth.verify_token(token, JWT, now=time.time())
        assert info.value.code is Code.INVALID_TOKEN
