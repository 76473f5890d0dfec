"""The rollouts admin in a real browser against the real server: headless Chromium (Selenium,
Debian's chromium + chromium-driver, which `.ci/run` installs) logs in through the admin login
form, opens a rollout plan, clicks Pause and sees the phase change, on the page and over the API.

Without chromium/chromedriver the test is skipped with the reason, except under CI=true, where
it fails: CI must run it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.liveserver import ServeProcess, cli

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

TIMEOUT = 20  # seconds, for every wait on the browser or the server
PASSWORD = "a-long-enough-secret-42"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # Chromium refuses to run as root with its sandbox (CI containers)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # the server is on loopback; never go through a proxy from the env
    "--window-size=1280,1024",
)


def _browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = ", ".join(
        name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
    )
    message = f"{missing} not installed (apt-get install chromium chromium-driver; .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    chromium, chromedriver = _browser_binaries()
    # Selenium Manager must never try to download a browser or a driver.
    monkeypatch.setenv("SE_AVOID_BROWSER_DOWNLOAD", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports
    driver = webdriver.Chrome(
        service=Service(chromedriver, log_output=str(tmp_path / "chromedriver.log")),
        options=options,
    )
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def _publish_plan(srv: ServeProcess) -> str:
    release = requests.post(
        srv.url("/v1/releases"),
        json={"release_id": "rel-browser-1", "channel": "stable"},
        timeout=TIMEOUT,
    )
    assert release.status_code == 201, release.text
    plan = requests.post(
        srv.url("/v1/rollouts"),
        json={
            "plan_id": "plan-browser",
            "release_id": "rel-browser-1",
            # Stages without gates move only by hand: the server's evaluator leaves them alone.
            "stages": [
                {"stage_id": "canary", "percent": 10},
                {"stage_id": "all", "percent": 100},
            ],
            "created_by": "alice",
        },
        timeout=TIMEOUT,
    )
    assert plan.status_code == 201, plan.text
    return "plan-browser"


def test_log_in_open_a_plan_pause_it_and_see_the_phase_change(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    data = tmp_path / "data"
    wait = WebDriverWait(browser, TIMEOUT)
    with ServeProcess(data) as srv:
        created = cli(
            "createsuperuser",
            "--data-dir",
            str(data),
            "--noinput",
            "--username",
            "ops",
            "--email",
            "ops@example.com",
            env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        )
        assert created.returncode == 0, created.stderr
        plan_id = _publish_plan(srv)

        try:
            # Log in through the admin's login form, landing on the rollout plan list.
            browser.get(srv.url("/admin/login/?next=/admin/rollouts/rolloutplan/"))
            wait.until(ec.presence_of_element_located((By.ID, "id_username"))).send_keys("ops")
            browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
            browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
            wait.until(ec.url_contains("/admin/rollouts/rolloutplan/"))
            row = wait.until(
                ec.presence_of_element_located(
                    (By.XPATH, f"//table[@id='result_list']//tr[.//a[text()='{plan_id}']]")
                )
            )
            assert "published" in row.text and "0/2 stages, 10%" in row.text

            # Open the plan: published, stage canary, its history.
            row.find_element(By.LINK_TEXT, plan_id).click()
            phase = wait.until(ec.presence_of_element_located((By.ID, "rollout-phase")))
            assert phase.get_attribute("data-phase") == "published"
            assert "canary" in browser.find_element(By.ID, "rollout-current-stage").text

            # Pause it, with a reason.
            browser.find_element(By.ID, "rollout-reason").send_keys("checking a crash report")
            browser.find_element(By.CSS_SELECTOR, "#rollout-action-pause button").click()
            wait.until(
                ec.text_to_be_present_in_element_attribute(
                    (By.ID, "rollout-phase"), "data-phase", "paused"
                )
            )
            assert browser.find_element(By.ID, "rollout-phase").text == "paused"
            message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success").text
            assert "went from published to paused" in message
            history = browser.find_element(By.ID, "rollout-history").text
            assert "ops" in history and "checking a crash report" in history
            # Paused: Resume is offered now, Pause no longer.
            assert browser.find_elements(By.ID, "rollout-action-resume")
            assert not browser.find_elements(By.ID, "rollout-action-pause")
            # Cancel asks first (a script of the page, allowed by the admin's CSP); dismissed,
            # nothing happens.
            browser.find_element(By.CSS_SELECTOR, "#rollout-action-cancel button").click()
            alert = wait.until(ec.alert_is_present())
            assert "cannot be undone" in alert.text
            alert.dismiss()
            assert browser.find_element(By.ID, "rollout-phase").get_attribute("data-phase") == (
                "paused"
            )
            # The admin's Content-Security-Policy blocked nothing the pages need.
            blocked = [
                entry["message"]
                for entry in browser.get_log("browser")
                if "Content Security Policy" in entry["message"]
            ]
            assert blocked == []
        except Exception as exc:
            raise AssertionError(
                f"{exc}\n--- page {browser.current_url} ---\n{browser.page_source[:4000]}"
                f"\n--- server log ---\n{srv.logs()[-4000:]}"
            ) from exc

        # The API sees the same change, made by the admin user.
        status = requests.get(srv.url(f"/v1/rollouts/{plan_id}/status"), timeout=TIMEOUT).json()
        assert status["phase"] == "paused"
        last = status["history"][-1]
        assert (last["action"], last["operator"], last["reason"]) == (
            "pause",
            "ops",
            "checking a crash report",
        )
