"""The web view in a real browser: Debian's headless Chromium driven by selenium.

The overview shows the counts the database holds, a submit made elsewhere appears
without a reload, and a requeue clicked on a dead item's page (its confirm accepted)
changes the item and records its event. Skipped, saying why, only where Chromium and
its driver are not installed (.ci/run installs them with apt-get).
"""

from __future__ import annotations

import getpass
import json
import shutil
from pathlib import Path

import pytest
from conftest import WebClient, orch_process

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not shutil.which("chromium"):
    pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs "
                "them: apt-get install chromium chromium-driver)", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 15


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def orch(web: WebClient, *args: str) -> dict | list:
    p = orch_process("--socket", str(web.daemon.sock), "--json", *args, db=web.daemon.db)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def log_in(browser, web: WebClient, path: str = "/") -> None:
    browser.get(f"{web.url}?token={web.token}")
    assert "token" not in browser.current_url  # swapped for a cookie at once
    browser.get(web.url.rstrip("/") + path)


def card(browser, status: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f".card.s-{status} b").text


def test_the_overview_counts_and_a_new_submit_appears_without_reload(browser, web):
    with web.daemon.client() as c:
        for _ in range(3):
            c.submit_task(queue="alpha")
        dead = c.submit_task(queue="alpha", max_attempts=1)
        got = c.claim_task("w1", "alpha", item_id=dead["id"])
        c.release_task(dead["id"], got["token"], "failed", error="boom")
    log_in(browser, web)
    assert (card(browser, "pending"), card(browser, "dead")) == ("3", "1")
    alert = browser.find_element(By.CSS_SELECTOR, "a.alert.dead")
    assert alert.text.split()[:2] == ["1", "dead"] and alert.get_attribute("href").endswith(
        "/items?status=dead")
    row = browser.find_element(By.XPATH, "//table[contains(@class,'queues')]//tr[td/a='alpha']")
    assert row.text.split() == ["alpha", "3", "·", "·", "·", "1", "·", "·", "4"]
    browser.execute_script("window.stillTheSamePage = true")
    orch(web, "submit", "--queue", "alpha")  # another process, through the daemon
    WebDriverWait(browser, WAIT_S).until(lambda b: card(b, "pending") == "4")
    assert browser.execute_script("return window.stillTheSamePage") is True
    assert browser.find_element(By.ID, "live-state").text == "live"


def test_a_requeue_from_the_page_changes_the_item_and_adds_its_event(browser, web):
    with web.daemon.client() as c:
        dead = c.submit_task({"n": 1}, queue="alpha", max_attempts=1)
        got = c.claim_task("w1", "alpha", item_id=dead["id"])
        c.release_task(dead["id"], got["token"], "failed", error="boom")
    iid = dead["id"]
    log_in(browser, web, f"/items/{iid}")
    button = browser.find_element(By.CSS_SELECTOR, "button.retry")
    button.click()  # asked first: dismissed, nothing happens
    WebDriverWait(browser, WAIT_S).until(ec.alert_is_present())
    browser.switch_to.alert.dismiss()
    assert orch(web, "show", str(iid))["status"] == "dead"
    browser.find_element(By.CSS_SELECTOR, "button.retry").click()
    WebDriverWait(browser, WAIT_S).until(ec.alert_is_present())
    assert "Requeue item" in browser.switch_to.alert.text
    browser.switch_to.alert.accept()
    WebDriverWait(browser, WAIT_S).until(lambda b: "done=retry" in b.current_url)
    assert f"Requeued by web:{getpass.getuser()}." in browser.find_element(
        By.CSS_SELECTOR, "p.done").text
    item = orch(web, "show", str(iid))
    assert (item["status"], item["attempts"], item["max_attempts"]) == ("pending", 1, 2)
    last = orch(web, "events", "--item", str(iid))[-1]
    assert (last["type"], last["detail"]["by"], last["detail"]["previous_status"]) == \
        ("requeued", f"web:{getpass.getuser()}", "dead")
    assert browser.find_elements(By.CSS_SELECTOR, "button.retry") == []
