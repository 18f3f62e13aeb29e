"""The WebSocket upgrade's Origin rule (gateway/ws.py) and its setting, app.allowed_origins."""
import pytest

from common.config import ConfigError, load
from gateway.ws import origin_allowed


@pytest.mark.parametrize("origin, host, allowed, expected", [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", (), True),         # the gateway's own page
    ("https://chat.example.com", "chat.example.com", (), True),
    ("https://chat.example.com", "chat.example.com:443", (), True),  # default port either way
    ("HTTP://Chat.Example.com:80/", "chat.example.com", (), True),
    ("http://127.0.0.1:9999", "127.0.0.1:8080", (), False),         # another port is another origin
    ("http://chat.example.com.evil.example", "chat.example.com", (), False),
    ("null", "chat.example.com", (), False),                        # sandboxed or file: pages
    ("ftp://chat.example.com", "chat.example.com", (), False),
    ("http://app.example.org", "gw.example.com", ("http://app.example.org",), True),
    ("http://other.example.org", "gw.example.com", ("http://app.example.org",), False),
    ("http://anything.example", "gw.example.com", ("*",), True),
])
def test_origin_rule(origin, host, allowed, expected):
    assert origin_allowed(origin, host, allowed) is expected


def test_allowed_origins_setting(tmp_path):
    conf = tmp_path / "empty.yml"
    conf.write_text("")
    assert load({"APP_CONF": str(conf)}).app.allowed_origins == ()
    cfg = load({"APP_CONF": str(conf), "ALLOWED_ORIGINS": "https://Chat.Example.com/, http://localhost:3000"})
    assert cfg.app.allowed_origins == ("https://chat.example.com", "http://localhost:3000")
    for bad in ("chat.example.com", "https://chat.example.com/path", "ws://chat.example.com"):
        with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
            load({"APP_CONF": str(conf), "ALLOWED_ORIGINS": bad})
