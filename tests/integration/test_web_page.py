"""The web page at ``/`` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against the real ``bentoml serve``
(with an API key): the 401 without the key, ten items for a user, a click that
changes the list within 2 s, no console errors; a screenshot (the README's, when
``RECSYS_SCREENSHOT_TO=docs/web_page.png``)."""

import os
import shutil
import time

import httpx
import pytest

from tests.conftest import API_KEY, AUTH, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium and chromedriver on this machine (make install installs "
                    "Debian's chromium and chromium-driver where apt-get can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,950"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def items(driver, list_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.get_attribute("data-item-id")
            for li in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} li[data-item-id]")]


def errors_in_console(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_page_and_its_files_are_open_and_the_report_mounts_are_not(pipeline, service):
    page = httpx.get(f"{service}/", timeout=10)
    assert page.status_code == 200 and '<script src="/page/app.js"></script>' in page.text
    for path in ("/page/app.js", "/page/style.css"):
        asset = httpx.get(f"{service}{path}", timeout=10)
        assert asset.status_code == 200 and "http://" not in asset.text
        assert "https://" not in asset.text  # nothing fetched from outside the service
    assert httpx.get(f"{service}/page/config.json", timeout=10).json()["api_key_required"]
    assert httpx.get(f"{service}/reports/index.html", timeout=10).status_code == 401
    report = httpx.get(f"{service}/reports/index.html", headers=AUTH, timeout=10)
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert (pipeline.settings.reports_dir / "index.html").read_text() == report.text


def test_sample_users_and_history_are_what_the_online_store_holds(pipeline, service):
    from infra import redis_server
    from serving.online import OnlineFeatures

    samples = httpx.post(f"{service}/sample_users", json={}, headers=AUTH, timeout=10).json()
    online = OnlineFeatures(redis_server.ensure(pipeline.settings).client(),
                            pipeline.settings.feast_project, pipeline.settings.recent_items)
    lengths = {name: len(online.recent(user)) for name, user in samples.items()}
    assert lengths["most_active"] >= lengths["median"] > 0 and lengths["new_visitor"] == 0
    user = samples["median"]
    history = httpx.post(f"{service}/history", json={"user_id": user}, headers=AUTH,
                         timeout=10).json()
    assert [i["item_id"] for i in history["items"]] == online.recent(user)[::-1]
    assert history["degraded"] is False and all(i["title"] for i in history["items"])


def test_choose_click_and_watch_the_list_change(service, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{service}/")
    error = wait_for(lambda: browser.find_element(By.ID, "error").is_displayed()
                     and browser.find_element(By.ID, "error").text)
    assert "401" in error and "API key" in error  # key set on the service, not entered
    assert items(browser, "recs") == []
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for(lambda: len(items(browser, "recs")) == 10)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert "v1" in browser.find_element(By.ID, "answer-meta").text
    assert wait_for(lambda: browser.find_element(By.ID, "fleet").find_elements(
        By.CSS_SELECTOR, "tbody tr"))
    # A median user, then a click on their third item.
    browser.find_element(By.CSS_SELECTOR, "#samples button[data-sample=median]").click()
    user = browser.find_element(By.ID, "samples").find_element(
        By.CSS_SELECTOR, "button[data-sample=median]").get_attribute("title")
    wait_for(lambda: browser.find_element(By.ID, "recs-user").text == f"for {user}"
             and len(items(browser, "recs")) == 10)
    before = items(browser, "recs")
    clicked = before[2]
    started = time.monotonic()
    browser.find_element(By.CSS_SELECTOR, f'#recs li[data-item-id="{clicked}"]').click()
    wait_for(lambda: browser.find_elements(By.ID, "rtt"), timeout=2.0, step=0.01)
    took = time.monotonic() - started
    after = items(browser, "recs")
    assert clicked not in after and len(after) == 10 and after != before
    assert items(browser, "history")[0] == clicked  # the newest recent item
    shown_ms = float(browser.find_element(By.ID, "rtt").text.removesuffix(" ms"))
    assert 0 < shown_ms < took * 1000 + 50
    assert errors_in_console(browser) == []
    screenshot = tmp_path / "web_page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("RECSYS_SCREENSHOT_TO"):
        shutil.copyfile(screenshot, os.environ["RECSYS_SCREENSHOT_TO"])


def test_a_wrong_key_shows_the_services_401(service, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{service}/")
    field = browser.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys("not-the-key")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    error = wait_for(lambda: browser.find_element(By.ID, "error").is_displayed()
                     and browser.find_element(By.ID, "error").text)
    assert error.startswith("401") and "missing or wrong API key" in error
