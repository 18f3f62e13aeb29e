"""Load-tool users: register and log in many over the REST API, retrying what the pipeline says
is retryable. For gevent tools (monkey-patched before this is imported)."""
import json
import urllib.error
import urllib.request
import uuid

import gevent
from gevent.pool import Pool

REGISTER_CONCURRENCY = 20


def post(url: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def healthy(url: str) -> bool:
    """Whether the gateway at ``url`` answers /health with 200 (False while it is down)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def post_retrying(url: str, body: dict, attempts: int = 5, taken_ok: bool = False) -> dict | None:
    """``post`` that retries the pipeline's retryable answers (504/10008, 503/50008) with backoff.
    With ``taken_ok`` a 409 on a retry counts as success (an earlier attempt got through)."""
    for attempt in range(attempts):
        try:
            return post(url, body)
        except urllib.error.HTTPError as err:
            if taken_ok and attempt and err.code == 409:
                return None
            if err.code not in (503, 504) or attempt == attempts - 1:
                raise
        gevent.sleep(0.5 * 2 ** attempt)
    return None


def register_users(url: str, count: int, tag: str = "load") -> list[tuple[int, str]]:
    """``count`` new users, registered and logged in, as (user_id, token) in order."""
    prefix = tag + uuid.uuid4().hex[:6]

    def one(i):
        creds = {"username": f"{prefix}{i}", "password": "load-password"}
        post_retrying(url + "/api/v1/auth/register", creds, taken_ok=True)
        login = post_retrying(url + "/api/v1/auth/login", creds)["data"]
        return login["user"]["id"], login["token"]
    return list(Pool(REGISTER_CONCURRENCY).imap(one, range(count)))
