"""The web client (gateway/static, served at ``/``) in a real headless Chromium, against the real
system under gunicorn: what a person sees in two or three browser windows.

Private chat with receipts, typing and presence; a group of three; a reader who closes the page
and comes back; a gateway restart under two open pages (with a message stored while its ack was
lost); markup in messages shown as text; a long history scrolled back to its first message; and
the page's security: its Content-Security-Policy and the WebSocket's Origin check.
"""
from __future__ import annotations

import http.client
import json
import signal
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.integration.browser.conftest import PASSWORD, ChatPage, post_message, unique, user_id
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_two_people_chat_privately_with_receipts_typing_and_presence(people):
    alice, bob = people(2)
    alice.register(unique("alice"))
    bob.register(unique("bob"))

    alice.chat_with(bob.username)
    # Presence is for contacts only (docs/SECURITY.md): a stranger's is not shown, nor is it after
    # an unsolicited message...
    alice.send("Hi Bob! Lunch at noon?")
    expect(alice.page.locator("#messages li.msg[data-status=stored]")).to_have_count(1)
    expect(alice.page.locator("#peer-dot")).not_to_have_class("dot online")

    # Bob's list shows the new conversation, unread, with its last message; opening it reads it.
    conv = bob.conversation(alice.username)
    expect(conv.locator(".badge")).to_have_text("1")
    expect(conv.locator(".conv-preview")).to_have_text("Hi Bob! Lunch at noon?")
    bob.open_conversation(alice.username)
    bob.expect_messages(["Hi Bob! Lunch at noon?"])
    expect(conv.locator(".badge")).to_be_hidden()
    expect(alice.page.locator("#messages li.msg .msg-meta")).to_contain_text("read")

    bob.page.type("#composer-input", "Sure", delay=30)
    expect(alice.page.locator("#typing")).to_contain_text("typing")
    bob.send("Sure — see you there.")
    alice.expect_messages(["Hi Bob! Lunch at noon?", "Sure — see you there."])
    expect(alice.page.locator("#peer-dot")).to_have_class("dot online")  # ...but once he answered
    bob.expect_messages(["Hi Bob! Lunch at noon?", "Sure — see you there."])
    expect(alice.page.locator("#typing")).to_have_text("")
    alice.screenshot("private-chat-alice")
    bob.screenshot("private-chat-bob")

    # Bob leaves: Alice's dot goes grey.
    bob.page.close()
    expect(alice.page.locator("#peer-dot")).to_have_class("dot offline")


def test_a_group_of_three(people):
    alice, bob, carol = people(3)
    for person, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        person.register(unique(name))
    group = unique("trio-")
    alice.create_group(group, [bob.username, carol.username])
    expect(alice.page.locator("#messages li.system")).to_contain_text("created the group")

    alice.send("Welcome, both of you")
    for person in (bob, carol):
        expect(person.conversation(group).locator(".badge")).to_have_text("2")  # creation + message
        person.open_conversation(group)
        person.expect_messages(["Welcome, both of you"])
    bob.send("Thanks Alice")
    carol.expect_messages(["Welcome, both of you", "Thanks Alice"])
    carol.send("Hello all")
    expected = ["Welcome, both of you", "Thanks Alice", "Hello all"]
    for person in (alice, bob, carol):
        person.expect_messages(expected)
        person.expect_stored()
    # The same order in every window: the seqs the server gave.
    seqs = [p.page.eval_on_selector_all("#messages li.msg", "els => els.map(e => e.dataset.seq)")
            for p in (alice, bob, carol)]
    assert seqs[0] == seqs[1] == seqs[2] and len(set(seqs[0])) == 3
    expect(alice.page.locator("#messages li.msg.mine .msg-meta").first).to_contain_text("read by 2")
    expect(alice.page.locator("#messages li.msg:not(.mine) .msg-from").first).to_have_text(bob.username)
    carol.screenshot("group-carol")


def test_a_reader_who_closes_the_page_finds_every_message_once_in_order(people):
    alice, bob = people(2)
    alice.register(unique("alice"))
    bob.register(unique("bob"))
    alice.chat_with(bob.username)
    alice.send("before you left")
    bob.open_conversation(alice.username)
    bob.expect_messages(["before you left"])
    expect(alice.page.locator("#messages li.msg .msg-meta")).to_contain_text("read")

    bob.page.close()
    sent = [f"while you were away {i}" for i in range(1, 6)]
    for text in sent:
        alice.send(text)
    alice.expect_messages(["before you left", *sent])
    alice.expect_stored()

    bob.open().login(bob.username)
    expect(bob.conversation(alice.username).locator(".badge")).to_have_text("5")
    bob.open_conversation(alice.username)
    bob.expect_messages(["before you left", *sent])


def _gateway_restart(chat_system, during):
    """Stop the browsers' gateway as a rollout does (SIGTERM: sockets closed with 1012), run
    ``during()`` while it is down, start a new one on the same port."""
    web = chat_system["web"]
    assert web.proc.stop() == 0
    try:
        during()
    finally:  # the next tests need it too
        chat_system["web"] = chat_system["procs"].gateway(APP_PORT=web.base.rsplit(":", 1)[1])


def test_gateway_restart_under_two_open_pages_loses_and_duplicates_nothing(people, chat_system):
    alice, bob = people(2)
    alice.register(unique("alice"))
    bob.register(unique("bob"))
    alice.chat_with(bob.username)
    alice.send("one")
    bob.open_conversation(alice.username)
    bob.send("two")
    for person in (alice, bob):
        person.expect_messages(["one", "two"])

    def while_down():
        for person in (alice, bob):
            expect(person.page.locator("#status")).not_to_have_attribute("data-state", "online")
        alice.send("three, written while the gateway was away")
        bob.send("four, also written while it was away")
        alice.send("five, stored but its ack lost")
        # A send that reached the pipeline but whose ack never came back (the socket closed first):
        # stored now through the other gateway with the same msg_id; the page resends it anyway.
        pending = alice.page.locator("#messages li.msg[data-status=pending]").last
        expect(pending.locator(".msg-text")).to_have_text("five, stored but its ack lost")
        post_message(chat_system["api"], alice.token(), {
            "msg_id": pending.get_attribute("data-msg-id"), "to_user_id": user_id(chat_system, bob),
            "content": "five, stored but its ack lost"})

    _gateway_restart(chat_system, while_down)
    for person in (alice, bob):
        person.wait_online()

    def stored():
        status, body = chat_system["api"].call(
            "GET", f"/api/v1/conversations/{_conversation_id(alice)}/messages", token=alice.token())
        assert status == 200, body
        return [m["content"] for m in body["data"]["messages"]] if len(body["data"]["messages"]) >= 5 else None
    in_seq_order = wait_for(stored, timeout=30, what="every message to be stored")
    assert sorted(in_seq_order) == sorted(["one", "two", "three, written while the gateway was away",
                                          "four, also written while it was away", "five, stored but its ack lost"])
    for person in (alice, bob):
        person.expect_messages(in_seq_order)
        person.expect_stored()
    # Bob's window shows the conversation, so he has read all of it, and Alice is told.
    expect(alice.page.locator("#messages li.msg.mine .msg-meta")).to_contain_text(["read"] * 3)
    # Bob's window shows the conversation, so he has read all of it, and Alice's window says so
    # (from his receipts, or from his own later message: sending moves the sender's read cursor).
    expect(alice.page.locator("#messages li.msg.mine .msg-meta")).to_contain_text(["read"] * 3)
    alice.screenshot("after-restart-alice")


def _conversation_id(person: ChatPage) -> int:
    return int(person.page.locator("#conversations li.conv.active").get_attribute("data-conversation-id"))


def test_markup_in_messages_is_shown_as_text_and_runs_nothing(people):
    alice, bob = people(2)
    alice.register(unique("alice"))
    bob.register(unique("bob"))
    payloads = ["<script>alert(1)</script>", '<img src=x onerror="alert(document.domain)">',
                "<b>not bold</b> & <i>not italic</i>"]
    bob.chat_with(alice.username)
    for text in payloads:
        bob.send(text)
    alice.open_conversation(bob.username)
    for person in (alice, bob):
        person.expect_messages(payloads)
        assert person.page.locator("#messages img, #messages script, #messages b, #messages i").count() == 0
    expect(alice.conversation(bob.username).locator(".conv-preview")).to_have_text(payloads[-1])
    # The `people` fixture then checks that no page opened a dialog, threw or broke its CSP.


def test_a_long_history_scrolls_back_to_the_first_message(people, chat_system):
    api = chat_system["api"]
    alice_name, bob_name = unique("alice"), unique("bob")
    for name in (alice_name, bob_name):
        assert api.call("POST", "/api/v1/auth/register", {"username": name, "password": PASSWORD})[0] == 201
    bob_token = api.call("POST", "/api/v1/auth/login", {"username": bob_name, "password": PASSWORD})[1]["data"]["token"]
    to_alice = api.call("GET", f"/api/v1/users?username={alice_name}", token=bob_token)[1]["data"]["id"]
    history = [f"history {i}" for i in range(1, 131)]
    for i, text in enumerate(history):
        post_message(api, bob_token, {"msg_id": f"hist-{to_alice}-{i}", "to_user_id": to_alice, "content": text})

    (alice,) = people(1)
    alice.login(alice_name)
    alice.open_conversation(bob_name)
    expect(alice.texts).to_have_count(50)  # the latest page
    expect(alice.texts.last).to_have_text("history 130")
    pane = alice.page.locator("#messages-pane")
    for _ in range(10):  # scroll to the top; each time the next older page comes in above
        shown = alice.texts.count()
        if shown == len(history):
            break
        pane.evaluate("el => { el.scrollTop = 0; }")
        expect(alice.texts).not_to_have_count(shown)
    alice.expect_messages(history)
    expect(alice.page.locator("#load-older")).to_be_hidden()  # nothing older left
    # Each page came in above what the reader was looking at, which stayed in place.
    pane.evaluate("el => { el.scrollTop = 0; }")
    expect(alice.texts.first).to_be_in_viewport()
    alice.screenshot("history-top")


def _upgrade(base: str, origin: str | None) -> tuple[int, dict | None]:
    """A WebSocket upgrade request as a browser on ``origin`` sends it: the HTTP status, and the
    error body when refused."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if origin is not None:
        headers["Origin"] = origin
    try:
        conn.request("GET", "/ws", headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read()) if response.status != 101 else None
        return response.status, body
    finally:
        conn.close()


def test_finding_a_user_by_username(chat_system):
    api = chat_system["api"]
    name = unique("Dora")
    assert api.call("POST", "/api/v1/auth/register", {"username": name, "password": PASSWORD})[0] == 201
    token = api.call("POST", "/api/v1/auth/login", {"username": name, "password": PASSWORD})[1]["data"]["token"]
    status, body = api.call("GET", f"/api/v1/users?username={name.lower()}", token=token)  # any letter case
    assert status == 200 and body["data"]["username"] == name and "email" not in body["data"]
    assert api.call("GET", f"/api/v1/users/{body['data']['id']}", token=token)[1]["data"] == body["data"]
    assert _code(api.call("GET", "/api/v1/users?username=nobody-here", token=token)) == (404, 30001)
    assert _code(api.call("GET", "/api/v1/users?username=a", token=token)) == (400, 10002)
    assert _code(api.call("GET", "/api/v1/users", token=token)) == (400, 10002)
    assert _code(api.call("GET", f"/api/v1/users?username={name}")) == (401, 30005)
    assert _code(api.call("GET", "/api/v1/users/999999999", token=token)) == (404, 30001)


def _code(answer) -> tuple[int, int]:
    return answer[0], answer[1]["code"]


def test_the_page_is_locked_down_and_foreign_origins_cannot_open_the_socket(browser, chat_system):
    web = chat_system["web"]
    host = web.base.removeprefix("http://")
    with urllib.request.urlopen(web.base + "/", timeout=10) as response:
        headers, page = response.headers, response.read().decode()
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="/static/app.js"></script>' in page and "style=" not in page

    assert _upgrade(web.base, None)[0] == 101                        # not a browser: not checked
    assert _upgrade(web.base, f"http://{host}")[0] == 101            # the gateway's own page
    status, body = _upgrade(web.base, "http://evil.example")
    assert (status, body["code"]) == (403, 10004), body
    assert _upgrade(web.base, f"http://{host}.evil.example")[0] == 403
    assert _upgrade(web.base, "null")[0] == 403                      # a sandboxed or file: page

    # In the browser: a page of another origin (the other gateway's port, a document without a
    # CSP of its own) opens the socket only where a gateway's ALLOWED_ORIGINS lists it.
    other = chat_system["api"].base
    allowing = chat_system["procs"].gateway(ALLOWED_ORIGINS=other)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(other + "/static/style.css")
        opener = """url => new Promise(resolve => {
            const ws = new WebSocket(url);
            ws.onmessage = () => { ws.close(); resolve("open"); };
            ws.onerror = () => resolve("refused");
        })"""
        assert page.evaluate(opener, web.base.replace("http", "ws") + "/ws") == "refused"
        assert page.evaluate(opener, allowing.base.replace("http", "ws") + "/ws") == "open"
    finally:
        context.close()
        allowing.proc.signal(signal.SIGTERM)
    assert f"origin '{other}' is not allowed" in web.proc.log()
