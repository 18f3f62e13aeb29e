"""login — check a password and issue a JWT.

Input: topic ``<ns>.login``, a request envelope (common/rpc.py) whose body is ``{username, password}``.
Output: a reply on the requester's Redis channel: ``{token, expires_in, user}``, or 30003 for an
unknown user and a wrong password alike (no account enumeration), 10002 for a bad field.
Idempotency: none needed; logging in twice issues two valid tokens and changes nothing stored.
Scale: the password hash is the cost (auth.password_iterations); run more login workers for it.
"""
from common import accounts
from functions import request
from functions.api import Spec

# One password hash per poll, so no reply waits for a batch (see register).
SPEC = Spec(redact=("body",), max_records=1)


def handle(event, ctx):
    return request.serve(event, ctx, lambda body, _in_time: accounts.login(accounts.validate_login(body), ctx.config))
