"""register — create an account.

Input: topic ``<ns>.register``, a request envelope (common/rpc.py) whose body is
``{username, password, email?, nickname?}``.
Output: a reply on the requester's Redis channel: the new user, or 10002 (bad field) / 30002 (taken).
Idempotency: the request id (a redelivered request is answered with the user it created), and
the credentials (a retry with the same username and password gets the same account).
Deadline: an account that would be committed after the request's deadline is rolled back.
Failures: database errors are retried (20001), then dead-lettered with the password redacted.
"""
from common import accounts
from functions import request
from functions.api import Spec

# One request per poll: each costs a password hash (~0.1 s), and a reply must not wait for the rest
# of a batch (that held answers past the caller's deadline under a burst).
SPEC = Spec(redact=("body",), max_records=1)


def handle(event, ctx):
    def work(body, in_time):
        fields = accounts.validate_registration(body)
        return accounts.register(fields, event.value["request_id"], ctx.config, in_time).public()
    return request.serve(event, ctx, work)
