"""login — check a password and start a session; change a password.

Input: topic ``<ns>.login``, a request envelope (common/rpc.py) whose body is ``{username, password}``;
or, with ``op: "password"`` and the authenticated ``user_id`` in the envelope (set by the gateway,
never by the client), ``{password, new_password}``.
Output: a reply on the requester's Redis channel: ``{token, expires_in, refresh_token,
refresh_expires_in, user}`` (common/sessions.py), or 30003 for an unknown user and a wrong password
alike (no account enumeration), 10002 for a bad field. A password change first revokes every token
of the user, then stores the new hash, then answers with a new session for the caller.
Idempotency: logging in twice starts two sessions and changes nothing stored; a redelivered password
change finds the new password in place and answers 30003 (the change is done; the caller logs in).
Scale: the password hash is the cost (auth.password_iterations); run more login workers for it.
"""
from common import accounts
from functions import request
from common.errors import Code
from functions.api import Invalid, Spec

# One password hash per poll, so no reply waits for a batch (see register).
SPEC = Spec(redact=("body",), max_records=1)


def handle(event, ctx):
    if event.value.get("op") == "password":
        user_id = event.value.get("user_id")
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
            raise Invalid(Code.UNMARSHAL_FAILED, "a password change names its user")
        return request.serve(event, ctx, lambda body, _in_time: accounts.change_password(
            user_id, accounts.validate_password_change(body), ctx.config, ctx.redis))
    return request.serve(event, ctx, lambda body, _in_time: accounts.login(
        accounts.validate_login(body), ctx.config, ctx.redis))
