"""register — create an account.

Input: topic ``<ns>.register``, a request envelope (common/rpc.py) whose body is
``{username, password, email?, nickname?}``.
Output: a reply on the requester's Redis channel: the new user, or 10002 (bad field) / 30002 (taken).
Idempotency: the request id; a redelivered request is answered with the user it created.
Failures: database errors are retried (20001), then dead-lettered with the password redacted.
"""
from common import accounts
from functions import rpc

REDACT = ("body",)


def handle(event, ctx):
    def work(body):
        fields = accounts.validate_registration(body)
        return accounts.register(fields, event.value["request_id"], ctx.config).public()
    return rpc.serve(event, ctx, work)
