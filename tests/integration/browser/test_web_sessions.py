"""The web client's session (docs/SECURITY.md): it refreshes an expired access token without the
person noticing, a logout ends the session on the server, and a logout everywhere from another
device sends the page back to the login form (its socket closed with 4003)."""
from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import expect

from common import auth
from tests.integration.browser.conftest import PASSWORD, post_message, unique, user_id
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module", autouse=True)
def pipeline_ready(chat_system):
    """The first registration of a fresh system can outlast the page's wait (the functions' first
    requests): one through the API first."""
    api = chat_system["web"]
    wait_for(lambda: api.call("POST", "/api/v1/auth/register", {"username": unique("warm"), "password": PASSWORD})[0]
             == 201, timeout=60, what="a registration to go through")


def session(page) -> dict:
    return page.page.evaluate("JSON.parse(sessionStorage.getItem('pingme.session'))")


def test_an_expired_access_token_is_refreshed_without_a_new_login(people, chat_system, cfg):
    (alice,) = people(1)
    alice.register(unique("alice"))
    before = session(alice)
    assert before["refreshToken"].startswith("rt1.")
    expired = auth.issue_token(before["me"]["id"], cfg.jwt, now=time.time() - cfg.jwt.ttl_seconds - 60)
    alice.page.evaluate("t => { const s = JSON.parse(sessionStorage.getItem('pingme.session'));"
                        " s.token = t; sessionStorage.setItem('pingme.session', JSON.stringify(s)); }", expired)
    alice.page.reload()  # the socket and the conversation list start with the expired token
    alice.wait_online()
    expect(alice.page.locator("#login-view")).to_be_hidden()
    after = session(alice)
    assert after["token"] not in (expired, before["token"])
    assert after["refreshToken"] != before["refreshToken"]  # rotated: the old one is spent
    api = chat_system["api"]
    assert api.call("GET", "/api/v1/user/profile", token=after["token"])[0] == 200


def test_logout_ends_the_session_on_the_server(people, chat_system):
    (bob,) = people(1)
    bob.register(unique("bob"))
    token = bob.token()
    bob.page.click("#logout-button")
    expect(bob.page.locator("#login-view")).to_be_visible()
    api = chat_system["api"]  # the page does not wait for the server's answer to its logout
    wait_for(lambda: api.call("GET", "/api/v1/user/profile", token=token)[1]["code"] == 30005,
             what="the logged-out token to be refused")


def test_logout_everywhere_from_another_device_sends_the_page_to_the_login_form(people, chat_system):
    (carol,) = people(1)
    carol.register(unique("carol"))
    api = chat_system["api"]
    status, body = api.call("POST", "/api/v1/auth/login", {"username": carol.username, "password": PASSWORD})
    assert status == 200, body
    assert api.call("POST", "/api/v1/auth/logout-all", token=body["data"]["token"])[0] == 200
    expect(carol.page.locator("#login-view")).to_be_visible()
    expect(carol.page.locator("#login-error")).to_contain_text("log in again")
    assert any("closed" in f for f in carol.frames), json.dumps(carol.frames[-5:])


def test_an_api_call_that_finds_its_token_expired_refreshes_once_and_is_retried(people, cfg):
    (dave,) = people(1)
    dave.register(unique("dave"))
    good = dave.token()
    expired = auth.issue_token(session(dave)["me"]["id"], cfg.jwt, now=time.time() - cfg.jwt.ttl_seconds - 60)
    result = dave.page.evaluate("""async ([expired, good]) => {
        const { api, useSession } = await import('/static/api.js');
        let token = expired, refreshes = 0;
        useSession({ token: () => token, refresh: async () => { refreshes += 1; token = good; return true; } });
        const profile = await api('GET', '/api/v1/user/profile', { auth: true });
        let failed = null;
        useSession({ token: () => expired, refresh: async () => { refreshes += 1; return false; } });
        try { await api('GET', '/api/v1/user/profile', { auth: true }); } catch (err) { failed = err.code; }
        return { username: profile.username, refreshes, failed };
    }""", [expired, good])
    assert result == {"username": dave.username, "refreshes": 2, "failed": 30004}


def test_messages_refused_by_the_send_rate_limit_are_sent_again_when_the_server_says(browser, chat_system):
    """A person who types faster than the send budget loses nothing: each refused message (10007)
    goes again after its retry hint, with the same msg_id."""
    from tests.integration.browser.conftest import ChatPage

    limited = chat_system["procs"].gateway(RATE_LIMIT_ENABLED="true", RATE_LIMIT_WS_SEND_USER="2/2s",
                                           RATE_LIMIT_REGISTER_ADDRESS="100/1m")
    contexts = [browser.new_context() for _ in range(2)]
    try:
        erin, frank = (ChatPage(context, limited.base) for context in contexts)
        erin.register(unique("erin"))
        frank.register(unique("frank"))
        erin.chat_with(frank.username)
        texts = [f"message {i}" for i in range(6)]
        for text in texts:
            erin.send(text)
        erin.expect_messages(texts)
        erin.expect_stored()
        assert any('"code":10007' in f for f in erin.frames), "the budget never refused anything"
        try:
            frank.open_conversation(erin.username)
        except Exception as exc:
            raise AssertionError(f"{exc}\nfrank's socket:\n" + "\n".join(frank.frames[-30:])) from None
        frank.expect_messages(texts)
        for page in (erin, frank):
            page.assert_clean()
    finally:
        for context in contexts:
            context.close()


def test_syncs_refused_by_the_sync_rate_limit_are_asked_again_when_the_server_says(browser, chat_system):
    """A page that comes back with more open conversations than the sync budget allows at once
    misses nothing: each sync refused with 10007 is asked again after its retry hint."""
    from tests.integration.browser.conftest import ChatPage

    env = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_WS_SYNC_USER": "1/3s", "RATE_LIMIT_REGISTER_ADDRESS": "100/1m"}
    procs, api = chat_system["procs"], chat_system["api"]
    limited = procs.gateway(**env)
    contexts = [browser.new_context() for _ in range(3)]
    try:
        frank, erin, gina = (ChatPage(context, limited.base) for context in contexts)
        for page, name in ((frank, "frank"), (erin, "erin"), (gina, "gina")):
            page.register(unique(name))
        for peer in (erin, gina):  # two conversations open in frank's page
            frank.chat_with(peer.username)
            frank.send(f"hello {peer.username}")
            frank.expect_stored()
        to_frank = user_id(chat_system, frank)
        assert limited.proc.stop() == 0  # frank's page loses its socket; both peers write meanwhile
        for peer in (erin, gina):
            post_message(api, peer.token(), {"msg_id": f"away-{peer.username}", "to_user_id": to_frank,
                                             "content": f"while you were away, {peer.username}"})
        limited = procs.gateway(APP_PORT=limited.base.rsplit(":", 1)[1], **env)
        frank.wait_online()  # it syncs both conversations at once: one of the two is refused
        for peer in (erin, gina):
            frank.open_conversation(peer.username)
            frank.expect_messages([f"hello {peer.username}", f"while you were away, {peer.username}"])
        assert any('"code":10007' in f and '"ref":"sync"' in f for f in frank.frames), "no sync was refused"
        frank.assert_clean()
    finally:
        for context in contexts:
            context.close()
