"""After a revocation the gateway tells the gateways holding the user's sockets; when Redis cannot
be reached the tokens are revoked all the same (every request checks them) and the failure is logged."""
from types import SimpleNamespace

import redis

from common import config


class DeadRedis:
    def pipeline(self, transaction=False):
        raise redis.ConnectionError("redis is down")


def test_a_revocation_notice_that_cannot_be_published_is_logged(tmp_path, caplog):
    from gateway import http
    from gateway.app import create_app

    cfg = config.load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path / "x.db")})
    app = create_app(cfg, gateway=SimpleNamespace(redis=DeadRedis(), cfg=cfg))
    with app.test_request_context("/api/v1/auth/logout", method="POST"):
        http._revoked(42)  # does not raise
    assert "revocation of user 42 not announced code=20002: ConnectionError" in caplog.text
