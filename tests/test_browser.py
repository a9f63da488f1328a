"""The web page in a real headless Chromium: search, grid, details, "more like this", upload; the
duplicates view and a decision in it; keyword facets and a date range as filters; corrections
(confirm, reject, add, withdraw) on an image's details.

Uses Debian's ``chromium`` and ``chromium-driver`` through Selenium with the driver path given, so
Selenium Manager never downloads anything; skipped only when those two programs are absent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FACET_PHOTOS
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


def _shown(driver: object) -> list[str]:
    """The uris of the grid's cards, read in one script (the grid is replaced as filters change)."""
    script = "return [...document.querySelectorAll('#grid .card')].map(c => c.title)"
    return list(driver.execute_script(script))  # type: ignore[attr-defined]


def _set_date(driver: object, field: str, day: str) -> None:
    """Set a date input as a person's pick does: its value, then a change event."""
    driver.execute_script(  # type: ignore[attr-defined]
        "const i = document.getElementById(arguments[0]); i.value = arguments[1];"
        "i.dispatchEvent(new Event('change', {bubbles: true}));",
        field,
        day,
    )


def test_keyword_facet_and_date_range_filter_the_results(facet_home, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    home, photos = Path(shutil.copytree(facet_home[0], tmp_path / "home")), facet_home[1]
    wait = WebDriverWait(browser, WAIT_S)
    with running_server(home) as server:
        facets = server.get("/api/facets").json()
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "facet-keywords"), "Beach"))
        items = browser.find_elements(By.CSS_SELECTOR, "#facet-keywords .facet-item")
        assert [i.text.split() for i in items] == [[f["value"], str(f["count"])] for f in facets["keywords"]]
        tag_items = browser.find_elements(By.CSS_SELECTOR, "#facet-tags .facet-item")
        assert [i.get_attribute("data-value") for i in tag_items] == [f["value"] for f in facets["tags"]]

        browser.find_element(By.ID, "q").send_keys("a photo", Keys.ENTER)
        wait.until(lambda d: len(_shown(d)) == len(FACET_PHOTOS))
        items[0].click()  # Beach (also spelt "beach")
        wait.until(lambda d: len(_shown(d)) == 4)
        _set_date(browser, "since", "2020-01-01")
        _set_date(browser, "until", "2021-12-31")
        wait.until(lambda d: "until=2021-12-31" in d.current_url and len(_shown(d)) == 2)

        api = server.search("q=a+photo&k=24&keyword=beach&since=2020-01-01&until=2021-12-31")
        assert _shown(browser) == [h["uri"] for h in api["hits"]]
        assert {Path(u).name for u in _shown(browser)} == {"b.jpg", "c.jpg"}
        assert {Path(u).parent for u in _shown(browser)} == {photos}
        active = browser.find_element(By.ID, "active-filters").text
        assert "keyword: Beach" in active and "taken from: 2020-01-01" in active
        pressed = browser.find_element(By.CSS_SELECTOR, '#facet-keywords [data-value="Beach"]')
        assert pressed.get_attribute("aria-pressed") == "true"
        browser.save_screenshot(str(SCREENSHOT.with_name("vistag-facets.png")))

        browser.find_element(By.CSS_SELECTOR, '#active-filters [data-remove="until"]').click()
        wait.until(lambda d: "until=" not in d.current_url and len(_shown(d)) == 3)
        assert {Path(u).name for u in _shown(browser)} == {"b.jpg", "c.jpg", "f.jpg"}  # beach, since 2020
        browser.find_element(By.CSS_SELECTOR, "#active-filters .clear-filters").click()
        wait.until(lambda d: len(_shown(d)) == len(FACET_PHOTOS))
        assert not browser.find_element(By.ID, "active-filters").is_displayed()
        assert browser.find_element(By.ID, "since").get_attribute("value") == ""

        first = facets["tags"][0]
        browser.find_element(By.CSS_SELECTOR, "#facet-tags .facet-item").click()
        wait.until(lambda d: "tag=" in d.current_url)
        expected = server.search(f"q=a+photo&k=24&tag={first['value'].replace(' ', '+')}")["hits"]
        wait.until(lambda d: _shown(d) == [h["uri"] for h in expected])
        assert len(expected) == first["count"]
        assert (
            Select(browser.find_element(By.ID, "tag")).first_selected_option.get_attribute("value")
            == first["value"]
        )
        browser.find_element(By.CSS_SELECTOR, "#facet-tags .facet-item").click()  # a second click removes it
        wait.until(lambda d: "tag=" not in d.current_url)
        assert not browser.find_element(By.ID, "active-filters").is_displayed()

        canon = '#facet-cameras [data-value="Canon EOS R5"]'
        browser.find_element(By.CSS_SELECTOR, canon).click()
        wait.until(lambda d: "camera=" in d.current_url and len(_shown(d)) == 2)
        assert {Path(u).name for u in _shown(browser)} == {"a.jpg", "b.jpg"}
        assert "camera: Canon EOS R5" in browser.find_element(By.ID, "active-filters").text
        browser.find_element(By.CSS_SELECTOR, canon).click()
        wait.until(lambda d: "camera=" not in d.current_url and len(_shown(d)) == len(FACET_PHOTOS))

        browser.get(f"http://127.0.0.1:{server.port}/#q=a+photo&keyword=beach")  # typed in another case
        wait.until(lambda d: len(_shown(d)) == 4)
        beach = '#facet-keywords [data-value="Beach"]'
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, beach).get_attribute("aria-pressed") == "true")
        browser.find_element(By.CSS_SELECTOR, beach).click()  # so a click removes it
        wait.until(lambda d: "keyword=" not in d.current_url and len(_shown(d)) == len(FACET_PHOTOS))

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def _check_detail_metadata(driver: object, image: dict) -> None:
    """The details show the date taken (UTC, as stored) and keywords the API gives, and leave out
    the photo metadata the image has none of."""
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-meta dd"))
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detail-meta dt")]  # type: ignore[attr-defined]
    values = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detail-meta dd")]  # type: ignore[attr-defined]
    shown = dict(zip(names, values, strict=True))
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(image["taken"])) if image["taken"] else None
    assert shown.get("taken") == taken and shown.get("keywords") == (", ".join(image["keywords"]) or None)
    assert image["keywords"] or taken is None  # the facet corpus: e.jpg alone has neither
    assert not {"camera", "lens", "place"} & set(shown) and shown["path"] == image["uri"]


def test_details_confirm_reject_add_and_withdraw_corrections(facet_home, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    home = Path(shutil.copytree(facet_home[0], tmp_path / "home"))
    wait = WebDriverWait(browser, WAIT_S)

    def recorded(image_id: str) -> set[tuple[str, str]]:
        return {
            (c["label"], c["verdict"]) for c in server.get(f"/api/images/{image_id}").json()["corrections"]
        }

    with running_server(home, env={"VISTAG_WRITE_TOKEN": TOKEN}) as server:
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "images indexed"))
        wait.until(EC.element_to_be_clickable((By.ID, "q"))).send_keys("a photo", Keys.ENTER)
        card = wait.until(_cards)[0]
        image_id = card.get_attribute("data-id")
        card.click()
        wait.until(EC.visibility_of_element_located((By.ID, "detail")))
        _check_detail_metadata(browser, server.get(f"/api/images/{image_id}").json())
        first, second = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-tags li[data-label]"))[
            :2
        ]
        labels = [first.get_attribute("data-label"), second.get_attribute("data-label")]
        browser.find_element(By.ID, "correction-token").send_keys(TOKEN)
        first.find_element(By.CSS_SELECTOR, "button[data-verdict='yes']").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-corrections"), labels[0]))
        rejecting = f"#detail-tags li[data-label='{labels[1]}'] button[data-verdict='no']"
        browser.find_element(By.CSS_SELECTOR, rejecting).click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-corrections"), labels[1]))
        field = browser.find_element(By.ID, "correction-label")
        field.send_keys("a lamp", Keys.ENTER)
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-corrections"), "a lamp"))
        assert recorded(image_id) == {(labels[0], "yes"), (labels[1], "no"), ("a lamp", "yes")}
        chosen = browser.find_element(By.CSS_SELECTOR, f"#detail-tags li[data-label='{labels[0]}'] .chosen")
        assert chosen.get_attribute("data-verdict") == "yes"
        browser.save_screenshot(str(SCREENSHOT.with_name("vistag-corrections.png")))

        lamp = next(
            li
            for li in browser.find_elements(By.CSS_SELECTOR, "#detail-corrections li[data-correction]")
            if "a lamp" in li.text
        )
        lamp.find_element(By.CSS_SELECTOR, "button[data-withdraw]").click()
        wait.until(lambda d: "a lamp" not in d.find_element(By.ID, "detail-corrections").text)
        assert recorded(image_id) == {(labels[0], "yes"), (labels[1], "no")}

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
