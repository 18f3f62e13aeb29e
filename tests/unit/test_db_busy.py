"""Every pooled database connection busy for the pool's whole wait is answered like a database
outage (503, 20001: try again), not as a server error (500, 10001)."""
from types import SimpleNamespace

from playhouse.pool import MaxConnectionsExceeded

from common import config


def test_a_full_connection_pool_is_a_database_error(tmp_path, caplog):
    from gateway.app import create_app

    cfg = config.load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path / "x.db")})
    app = create_app(cfg, gateway=SimpleNamespace(redis=None, cfg=cfg))

    def busy():
        raise MaxConnectionsExceeded("Exceeded maximum connections.")
    app.add_url_rule("/busy", view_func=busy)
    answer = app.test_client().get("/busy")
    assert (answer.status_code, answer.get_json()["code"]) == (503, 20001)
    assert "database unavailable on GET /busy code=20001: MaxConnectionsExceeded" in caplog.text
