"""The live page in a real headless Chromium (Debian's chromium and
chromium-driver, installed by scripts/system-deps)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.applications import Starlette

from saltbus.client import Sender
from saltbus.config import Config
from saltbus.http import TokenStore, create_app
from saltbus.server import EmbeddedPublisher
from tests.http_support import make_tokens, serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")
NEWEST_N = "const r = document.querySelector('#events tr.event'); return r && r.event.data.n"


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    return make_tokens(tmp_path / "tokens.json", viewer=(["*"], []), app=(["app/*"], []))


@pytest.fixture
def app(bus_config: Config, tmp_path: Path, secrets: dict[str, str]) -> Starlette:
    return create_app(bus_config, tokens=TokenStore.open(tmp_path / "tokens.json"))


@pytest.fixture
def base_url(app: Starlette, publisher: EmbeddedPublisher) -> Iterator[str]:
    with serve(app) as url:
        yield url


@pytest.fixture
def sender(bus_config: Config, publisher: EmbeddedPublisher) -> Iterator[Sender]:
    with Sender(bus_config) as firing:
        yield firing


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def _until(driver: WebDriver, condition: Callable[[WebDriver], T], what: str) -> T:
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition, what)


def _tags(driver: WebDriver) -> list[str]:
    """The tags of the rows shown, top (newest) first."""
    script = (
        "return Array.from(document.querySelectorAll('#events tr.event'))"
        ".filter(r => !r.classList.contains('hidden')).map(r => r.dataset.tag)"
    )
    tags = driver.execute_script(script)
    assert isinstance(tags, list)
    return [str(tag) for tag in tags]


def _status(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "status").get_attribute("class"))


def _live(driver: WebDriver, app: Starlette, members: int = 1) -> None:
    _until(driver, lambda d: "live" in _status(d), "the page's stream is live")
    deadline = time.monotonic() + WAIT
    while app.state.bridge.hub.members < members:
        assert time.monotonic() < deadline, "the page's stream never reached the bridge"
        time.sleep(0.02)


def _screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if os.environ.get("SALTBUS_ARTIFACTS"):
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(path, artifacts / name)
    return path


def _severe_console_messages(driver: WebDriver) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE"
    ]


def test_the_page_shows_filters_and_pauses(
    browser: WebDriver,
    app: Starlette,
    base_url: str,
    sender: Sender,
    secrets: dict[str, str],
    tmp_path: Path,
):
    browser.get(f"{base_url}/#token={secrets['viewer']}")
    _live(browser, app)
    assert "token" not in browser.current_url  # the secret left the address bar
    assert "token viewer" in browser.find_element(By.ID, "who").text

    # Events fired after load appear, the newest at the top.
    sender.fire("salt/auth", {"id": "web1", "act": "accept"})
    sender.fire("salt/job/20240101/new", {"fun": "test.ping", "minions": ["web1", "web2"]})
    sender.fire("app/deploy", {"version": "1.2.3", "hosts": ["web1", "web2"], "ok": True})
    _until(browser, lambda d: len(_tags(d)) == 3, "three events shown")
    assert _tags(browser) == ["app/deploy", "salt/job/20240101/new", "salt/auth"]

    # Click: the data, pretty-printed.
    browser.find_element(By.CSS_SELECTOR, "#events tr[data-tag='app/deploy']").click()
    detail = browser.find_element(By.ID, "detail").text
    assert '"version": "1.2.3"' in detail and '\n  "hosts": [' in detail
    assert browser.find_element(By.ID, "detail-tag").text == "app/deploy"

    # Filter: rows shown are hidden or kept, and the server filters what comes next.
    browser.find_element(By.ID, "filter").send_keys("salt/")
    _until(browser, lambda d: _tags(d) == ["salt/job/20240101/new", "salt/auth"], "filtered")
    _live(browser, app)
    sender.fire("app/ignored", {})
    sender.fire("salt/key", {"id": "web3", "act": "accept"})
    _until(browser, lambda d: _tags(d)[0] == "salt/key", "a new matching event")
    assert "app/ignored" not in _tags(browser)
    filtered = browser.find_elements(By.CSS_SELECTOR, "#events tr[data-tag='app/ignored']")
    assert filtered == []  # filtered by the server, not only hidden

    # Pause: events wait; resume: they appear.
    browser.find_element(By.ID, "pause").click()
    _until(browser, lambda d: "paused" in _status(d), "paused")
    sender.fire("salt/minion/web3/start", {})
    _until(browser, lambda d: d.find_element(By.ID, "pending").text == "1 new", "1 waiting")
    time.sleep(0.3)
    assert "salt/minion/web3/start" not in _tags(browser)
    browser.find_element(By.ID, "pause").click()
    _until(browser, lambda d: _tags(d)[0] == "salt/minion/web3/start", "shown after resume")
    assert "live" in _status(browser)

    # The events/s counter.
    for n in range(40):
        minion = f"web{n % 4 + 1}"
        sender.fire(f"salt/job/20240101/ret/{minion}", {"id": minion, "return": True, "n": n})
    _until(browser, lambda d: int(d.find_element(By.ID, "rate").text) > 0, "a rate")
    newest = browser.find_element(By.CSS_SELECTOR, "#events tr.event")
    newest.click()
    assert "selected" in str(newest.get_attribute("class"))

    shot = _screenshot(browser, tmp_path, "live-page.png")
    assert shot.stat().st_size > 10_000

    # A burst keeps the table bounded, the newest on top.
    for n in range(1500):
        sender.fire("salt/burst", {"n": n})
    _until(browser, lambda d: d.execute_script(NEWEST_N) == 1499, "the burst shown")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#events tr.event")) == 1000
    assert _severe_console_messages(browser) == []


def _seqs(driver: WebDriver) -> list[int]:
    """The seqs of the rows, top (newest) first."""
    script = (
        "return Array.from(document.querySelectorAll('#events tr.event')).map(r => r.dataset.seq)"
    )
    seqs = driver.execute_script(script)
    assert isinstance(seqs, list)
    return [int(seq) for seq in seqs]


def test_the_page_opens_with_the_backlog_then_goes_on_live(
    browser: WebDriver, app: Starlette, base_url: str, sender: Sender, secrets: dict[str, str]
):
    fired = [sender.fire("app/old", {"n": n}, ack=True).seq for n in range(150)]
    browser.get(f"{base_url}/#token={secrets['viewer']}")
    # The last 100 from the journal, newest on top.
    _until(browser, lambda d: len(_seqs(d)) == 100, "the backlog shown")
    assert _seqs(browser) == fired[:-101:-1]
    assert browser.execute_script(NEWEST_N) == 149
    _live(browser, app)
    live = [sender.fire("app/new", {"n": n}, ack=True).seq for n in range(3)]
    _until(browser, lambda d: len(_seqs(d)) == 103, "the live events shown")
    # Backlog and live met with no gap and no duplicate.
    assert _seqs(browser) == (fired[-100:] + live)[::-1]
    assert _tags(browser)[:3] == ["app/new"] * 3
    assert _severe_console_messages(browser) == []


def test_a_new_token_in_the_fragment_replaces_the_old_one(
    browser: WebDriver, app: Starlette, base_url: str, sender: Sender, secrets: dict[str, str]
):
    sender.fire("salt/auth", {"id": "web1"}, ack=True)
    sender.fire("app/one", {}, ack=True)
    browser.get(f"{base_url}/#token={secrets['viewer']}")
    _until(browser, lambda d: _tags(d) == ["app/one", "salt/auth"], "the viewer's backlog")
    assert "token viewer" in browser.find_element(By.ID, "who").text
    browser.execute_script("window.sameDocument = true")

    # Another link with another token, opened in the same tab.
    browser.get(f"{base_url}/#token={secrets['app']}")
    _until(browser, lambda d: "token app" in d.find_element(By.ID, "who").text, "the new token")
    assert browser.execute_script("return window.sameDocument") is True  # not a reload
    _until(browser, lambda d: _tags(d) == ["app/one"], "only what the new token may read")
    assert "token" not in browser.current_url
    _live(browser, app)
    sender.fire("salt/key", {"id": "web2"})
    sender.fire("app/two", {})
    _until(browser, lambda d: _tags(d)[0] == "app/two", "a live event of the new token")
    assert "salt/key" not in _tags(browser)
    stored = browser.execute_script("return sessionStorage.getItem('saltbus-token')")
    assert stored == secrets["app"]


def test_the_page_asks_for_a_token(
    browser: WebDriver, app: Starlette, base_url: str, sender: Sender, secrets: dict[str, str]
):
    browser.get(f"{base_url}/")
    form = browser.find_element(By.ID, "login")
    _until(browser, lambda d: form.is_displayed(), "the token form")
    # Not waiting for events while there is no token to ask for them with.
    empty = browser.find_element(By.ID, "empty").text
    assert "Waiting" not in empty and "token" in empty
    field = browser.find_element(By.ID, "token-input")
    field.send_keys("sbt_wrong\n")
    _until(
        browser,
        lambda d: "not valid" in d.find_element(By.ID, "login-error").text,
        "a wrong token refused",
    )
    field.send_keys(secrets["viewer"] + "\n")
    _live(browser, app)
    assert not form.is_displayed()
    assert browser.find_element(By.ID, "empty").text == "Waiting for events…"
    sender.fire("app/hello", {})
    _until(browser, lambda d: _tags(d) == ["app/hello"], "the event shown")
