"""The web page in a real headless Chromium: search, grid, details, "more like this", upload; the
duplicates view and a decision in it.

Uses Debian's ``chromium`` and ``chromium-driver`` through Selenium with the driver path given, so
Selenium Manager never downloads anything; skipped only when those two programs are absent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TOKEN, copy_home, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path("/tmp/vistag-browser.png")
WAIT_S = 30
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look anything up
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _cards(driver: object) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#grid .card") or False  # type: ignore[attr-defined]


def _thumbnails_loaded(driver: object) -> bool:
    script = (
        "const imgs = [...document.querySelectorAll('#grid img')].slice(0, 8);"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
    )
    return bool(driver.execute_script(script))  # type: ignore[attr-defined]


def test_search_details_more_like_this_and_upload(indexed_home, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    home = copy_home(indexed_home, tmp_path / "home")
    wait = WebDriverWait(browser, WAIT_S)
    with running_server(home) as server:
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "images indexed"))
        wait.until(EC.element_to_be_clickable((By.ID, "q"))).send_keys("a red circle", Keys.ENTER)

        cards = wait.until(_cards)
        assert len(cards) == 24  # the page's default k; the corpus has more good images
        wait.until(_thumbnails_loaded)
        assert "Results for" in browser.find_element(By.ID, "heading").text
        scores = [float(c.find_element(By.CSS_SELECTOR, ".score").text) for c in cards]
        assert scores == sorted(scores, reverse=True)
        browser.save_screenshot(str(SCREENSHOT))

        first_uri = cards[2].get_attribute("title")
        cards[2].click()
        wait.until(EC.visibility_of_element_located((By.ID, "detail")))
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-meta"), first_uri))
        assert browser.find_element(By.ID, "detail-name").text == Path(first_uri).name

        browser.find_element(By.ID, "more-like-this").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "heading"), "More like image"))
        wait.until(lambda d: _cards(d) and _cards(d)[0].get_attribute("title") == first_uri)
        top = _cards(browser)[0]
        assert top.find_element(By.CSS_SELECTOR, ".score").text == "1.000"
        assert "similar=" in browser.current_url

        example = next(p for p in indexed_home[1].good if p.suffix == ".png")
        browser.find_element(By.ID, "upload").send_keys(str(example))
        wait.until(EC.text_to_be_present_in_element((By.ID, "heading"), example.name))
        wait.until(lambda d: _cards(d) and _cards(d)[0].get_attribute("title") == str(example))

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no failed loads, no CSP violations, no script errors


def _groups(driver: object) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#dup-groups .dup-group") or False  # type: ignore[attr-defined]


def test_duplicates_view_shows_groups_and_resolves_one(family_home, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    home = Path(shutil.copytree(family_home, tmp_path / "home"))
    wait = WebDriverWait(browser, WAIT_S)
    with running_server(home, env={"VISTAG_WRITE_TOKEN": TOKEN}) as server:
        listed = server.get("/api/duplicates").json()["groups"]
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "images indexed"))
        browser.find_element(By.ID, "duplicates-link").click()
        groups = wait.until(_groups)
        assert [g.get_attribute("data-group") for g in groups] == [g["id"] for g in listed]
        keepers = [g.find_element(By.CSS_SELECTOR, ".dup-member.keeper") for g in groups]
        assert [k.get_attribute("data-id") for k in keepers] == [str(g["keep"]) for g in listed]
        assert all("Suggested keeper" in k.text for k in keepers)
        assert not browser.find_element(By.ID, "filters").is_displayed()
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('#dup-groups img')].slice(0, 4)"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        browser.save_screenshot(str(SCREENSHOT.with_name("vistag-duplicates.png")))

        target = listed[0]
        other = next(m for m in target["members"] if m["id"] != target["keep"])
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        section = groups[0]
        member = section.find_element(By.CSS_SELECTOR, f'.dup-member[data-id="{other["id"]}"]')
        assert Path(other["uri"]).name in member.text
        browser.execute_script("arguments[0].scrollIntoView()", member)
        member.find_element(By.CSS_SELECTOR, "button[data-action='keep']").click()
        wait.until(EC.staleness_of(section))
        wait.until(EC.text_to_be_present_in_element((By.ID, "notice"), f"keep image {other['id']}"))

        after = server.get("/api/duplicates").json()["groups"]
        assert target["id"] not in {g["id"] for g in after}
        shown = [g.get_attribute("data-group") for g in (_groups(browser) or [])]
        assert shown == [g["id"] for g in after]  # what the page dropped is what the server no longer lists
        browser.refresh()
        wait.until(EC.text_to_be_present_in_element((By.ID, "dup-summary"), f"{len(after)} group"))
        assert [g.get_attribute("data-group") for g in (_groups(browser) or [])] == [g["id"] for g in after]

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
