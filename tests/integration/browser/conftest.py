"""Browser fixtures: Debian's Chromium (deploy/local/tools.sh installs it) driven by Playwright for
Python, against the real system of the integration tests (their fixtures, tests/integration/
conftest.py: functions as processes, the gateway under gunicorn, the session's namespace and
database). Playwright's own browser download is never used.

Every page records the dialogs it opened (an ``alert`` run by injected markup would show here),
its uncaught errors and the Content-Security-Policy violations it reported; :class:`ChatPage`
drives the client the way a person does (forms, buttons, the message list). Screenshots go to
``results/browser/`` (git-ignored).
"""
from __future__ import annotations

import subprocess
import uuid

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.conftest import REPO

RESULTS = REPO / "results" / "browser"
PASSWORD = "correct-horse-battery"
# The flags that work on these machines (../shared/FACTS.md): no sandbox as root, and no background
# traffic, which the closed network here refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def browser():
    path = subprocess.run(["bash", str(REPO / "deploy" / "local" / "tools.sh"), "path", "chromium"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def chat_system(module_procs):
    """The chat functions, the gateway the browsers use (``web``, on a port of its own that a
    restart reuses) and a second gateway for the test's own API calls (``api``)."""
    for name in ("register", "login", "send", "deliver"):
        module_procs.function(name)
    return {"web": module_procs.gateway(), "api": module_procs.gateway(), "procs": module_procs}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class ChatPage:
    """One browser window of one person, and what it observed."""

    def __init__(self, context, base: str):
        self.context = context
        self.base = base
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.csp: list[str] = []
        self.frames: list[str] = []  # the sockets' traffic, to show when an expectation fails
        self.page = None
        self.username = None
        self.open()

    def open(self) -> "ChatPage":
        page = self.context.new_page()
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda m: self.csp.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("websocket", self._watch)
        page.goto(self.base + "/")
        self.page = page
        return self

    def _watch(self, ws) -> None:
        self.frames.append(f"open {ws.url}")
        ws.on("framesent", lambda f: self.frames.append("out " + ("auth" if '"auth"' in f else f)))
        ws.on("framereceived", lambda f: self.frames.append(f"in  {f}"))
        ws.on("close", lambda _: self.frames.append("closed"))

    # -- account ---------------------------------------------------------------------------------
    def register(self, username: str) -> "ChatPage":
        return self._login_form(username, "#register-button")

    def login(self, username: str) -> "ChatPage":
        return self._login_form(username, "#login-button")

    def _login_form(self, username: str, button: str) -> "ChatPage":
        self.username = username
        self.page.fill("#login-form [name=username]", username)
        self.page.fill("#login-form [name=password]", PASSWORD)
        self.page.click(button)
        expect(self.page.locator("#me-name")).to_have_text(username)
        self.wait_online()
        return self

    def wait_online(self) -> None:
        expect(self.page.locator("#status")).to_have_attribute("data-state", "online")

    def token(self) -> str:
        return self.page.evaluate("JSON.parse(sessionStorage.getItem('pingme.session')).token")

    # -- conversations ---------------------------------------------------------------------------
    def chat_with(self, username: str) -> None:
        self.page.fill("#new-chat-form [name=username]", username)
        self.page.click("#new-chat-form button")
        expect(self.page.locator("#conversation-title")).to_have_text(username)

    def create_group(self, name: str, members: list[str]) -> None:
        self.page.fill("#new-group-form [name=name]", name)
        self.page.fill("#new-group-form [name=members]", ", ".join(members))
        self.page.click("#new-group-form button")
        expect(self.page.locator("#conversation-title")).to_have_text(name)

    def conversation(self, name: str):
        return self.page.locator("#conversations li.conv").filter(
            has=self.page.locator(".conv-name", has_text=name))

    def open_conversation(self, name: str) -> None:
        self.conversation(name).click()
        expect(self.page.locator("#conversation-title")).to_have_text(name)

    # -- messages --------------------------------------------------------------------------------
    def send(self, text: str) -> None:
        self.page.fill("#composer-input", text)
        self.page.click("#send-button")

    @property
    def texts(self):
        """The chat messages shown, top to bottom (system lines excluded)."""
        return self.page.locator("#messages li.msg .msg-text")

    def expect_messages(self, expected: list[str]) -> None:
        """Exactly these messages, in this order: none missing, none twice."""
        try:
            expect(self.texts, f"{self.username}'s messages").to_have_text(expected)
        except AssertionError as exc:
            traffic = "\n".join(self.frames[-40:])
            raise AssertionError(f"{exc}\nthe socket's last frames:\n{traffic}") from None

    def expect_stored(self) -> None:
        """Every message shown has its seq (no pending or failed one left)."""
        expect(self.page.locator("#messages li.msg:not([data-status=stored])")).to_have_count(0)

    def screenshot(self, name: str) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(RESULTS / f"{name}.png"))

    def assert_clean(self) -> None:
        """Nothing ran that should not have: no dialog, no uncaught error, no CSP violation."""
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.errors == [], f"uncaught errors: {self.errors}"
        assert self.csp == [], f"Content-Security-Policy violations: {self.csp}"


@pytest.fixture
def people(browser, chat_system):
    """``people(n)``: n people, each in a browser context of its own (own storage, own socket)."""
    contexts: list = []
    pages: list[ChatPage] = []

    def make(n: int) -> list[ChatPage]:
        for _ in range(n):
            contexts.append(browser.new_context(viewport={"width": 1100, "height": 700}))
            pages.append(ChatPage(contexts[-1], chat_system["web"].base))
        return pages[-n:]

    yield make
    for page in pages:
        page.assert_clean()
    for context in contexts:
        context.close()


def post_message(api, token: str, body: dict) -> dict:
    """POST /api/v1/messages, sent again with the same msg_id after a 10008 (the documented
    answer to a timed-out send; on this busy 2-core machine a reply can take over 5 s)."""
    for _ in range(5):
        status, answer = api.call("POST", "/api/v1/messages", body, token=token)
        if status != 504:
            break
    assert status == 200, answer
    return answer["data"]


def user_id(chat_system, person: ChatPage) -> int:
    status, body = chat_system["api"].call("GET", f"/api/v1/users?username={person.username}",
                                           token=person.token())
    assert status == 200, body
    return body["data"]["id"]
