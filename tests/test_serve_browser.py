"""The page of ``poetry-gpt serve`` in headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium; nothing downloads a browser).

It loads the page, fills the fields, clicks 写诗, waits for the poems, checks that they are the API's
poems for the same seed, that each can be copied, that a bad acrostic shows its message next to the
acrostic field, and that the page fits a phone-sized window; it saves screenshots (desktop and
phone width) in the test's tmp folder, or in ``$POETRY_GPT_SCREENSHOTS`` when set.

Without the browser the test skips with the reason, except under ``CI=true`` (``.ci/run`` installs it),
where that is a failure.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_serve import call, texts

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def _browser_or_skip():
    """``(chromium, chromedriver)`` paths, or skip (fail under CI=true) saying what is missing."""
    chromium = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(DRIVER)
    try:
        import selenium  # noqa: F401
        missing = []
    except ImportError:
        missing = ["the selenium package (pip install -e '.[test]')"]
    if chromium is None:
        missing.append("chromium (apt-get install -y chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install -y chromium-driver)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI=true requires it (.ci/run installs it)")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("POETRY_GPT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, condition, seconds: float = 300):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)


def _type(driver, element_id: str, text: str) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(text)


def _poem_texts(driver) -> list[str]:
    cards = driver.find_elements("css selector", "#poems .poem")
    return [c.get_attribute("data-text") for c in cards]


def _write(driver) -> None:
    driver.find_element("id", "write").click()
    _wait(driver, lambda d: d.find_element("id", "write").is_enabled())


def test_the_page_writes_the_apis_poems_and_shows_errors(serve_url, browser, shots):
    from selenium.webdriver.support.ui import Select

    browser.get(serve_url + "/")
    _wait(browser, lambda d: len(d.find_elements("css selector", "#form-select option")) == 5)
    assert "context 64" in browser.find_element("id", "facts").text
    # the defaults are shown in the sampling fields
    browser.find_element("css selector", "#sampling summary").click()
    assert browser.find_element("id", "top_k").get_attribute("value") == "64"
    assert browser.find_element("id", "min_p").get_attribute("value") == "0.05"
    assert browser.find_element("id", "strict-row").is_displayed()  # the vocabulary has 格律 (tone) data

    _type(browser, "opening", "春花")
    _type(browser, "title", "山月")
    Select(browser.find_element("id", "form-select")).select_by_value("五绝")
    browser.find_element("id", "rhyme").click()
    _type(browser, "n", "3")
    _type(browser, "seed", "7")
    _write(browser)
    _wait(browser, lambda d: len(d.find_elements("css selector", "#poems .poem.writing")) == 0
          and len(d.find_elements("css selector", "#poems .poem")) == 3)
    shown = _poem_texts(browser)
    status, api = call(serve_url, "/api/generate", {"openings": ["春花"], "title": "山月", "form": "五绝",
                                                    "rhyme": True, "n": 3, "seed": 7})
    assert status == 200 and shown == texts(api)
    bodies = [c.text for c in browser.find_elements("css selector", "#poems .poem .body")]
    assert all(body.startswith("春花") for body in bodies), bodies
    assert len(browser.find_elements("css selector", "#poems .poem button.copy")) == 3
    assert "3 poem(s)" in browser.find_element("id", "status").text
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "serve-page.png"))

    # a bad acrostic: the message appears next to the acrostic field, the poems stay
    _type(browser, "acrostic", "龙虎风云")
    _write(browser)
    error = _wait(browser, lambda d: d.find_element("css selector", '.err[data-for="acrostic"]').text or False, 60)
    assert "龙" in error and "vocabulary" in error
    assert "bad" in browser.find_element("id", "acrostic").get_attribute("class")
    assert _poem_texts(browser) == shown

    # a phone-sized window: one column, nothing wider than the screen
    browser.set_window_size(390, 844)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    inner = browser.execute_script("return window.innerWidth")
    assert width <= inner, (width, inner)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "serve-page-phone.png"))
    browser.execute_script("document.getElementById('status').scrollIntoView()")
    browser.save_screenshot(str(shots / "serve-page-phone-poems.png"))
    browser.set_window_size(1200, 900)
