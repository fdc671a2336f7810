"""The HTML report in a real browser (headless Chromium driven by selenium), on a desktop and on a phone:
no console errors, no sideways scrolling of the page, every image loaded and shown at the size it was drawn.

`make test-deps` installs Chromium with apt-get where it can; elsewhere these tests skip and say why.
LOWBIT_REPORT_SCREENSHOTS=docs makes them also write full-page screenshots (docs/report-1400.png and
docs/report-420.png are made this way).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

WIDTHS = (1400, 420)


def _binary(*names: str) -> str | None:
    return next((p for n in names if (p := shutil.which(n))), None)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="selenium is missing: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chrome = _binary("chromium", "chromium-browser", "google-chrome")
    driver_path = _binary("chromedriver")
    if not chrome or not driver_path:
        pytest.skip("Chromium or its driver is not installed (Debian: apt-get install chromium chromium-driver; "
                    "`make test-deps` does it where apt-get is available)")
    opts = Options()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        opts.add_argument(a)  # --no-sandbox: containers run tests as root, where Chromium's sandbox refuses
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        # an explicit driver: selenium's own manager would try to download one
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    except WebDriverException as e:
        pytest.skip(f"Chromium did not start: {e.msg.splitlines()[0] if e.msg else e}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module", params=WIDTHS, ids=[f"{w}px" for w in WIDTHS])
def loaded(request, browser, report_html):
    """The report open at one window width, every image decoded; the console's entries of the load."""
    from selenium.webdriver.support.ui import WebDriverWait

    width = request.param
    browser.set_window_size(width, 1000)
    browser.get_log("browser")  # drop what came before
    browser.get(report_html.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && [...document.images].every(i => i.complete)"))
    assert browser.execute_script("return window.innerWidth") == width  # the window really is this wide
    return width, browser, browser.get_log("browser")


def test_no_console_errors(loaded):
    _, _, log = loaded
    assert [e for e in log if e["level"] == "SEVERE"] == []


def test_the_page_never_scrolls_sideways(loaded):
    width, d, _ = loaded
    scroll, inner = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"at {width} px the page is {scroll} px wide"
    # wide tables scroll inside their own box instead
    assert d.execute_script("return [...document.querySelectorAll('table')]"
                            ".every(t => getComputedStyle(t.parentElement).overflowX === 'auto')")


def test_every_image_is_loaded_and_shown_as_drawn(loaded):
    width, d, _ = loaded
    images = d.execute_script("return [...document.images].map(i => [i.currentSrc.slice(0, 22), i.naturalWidth, "
                              "i.getBoundingClientRect().width, i.getBoundingClientRect().right])")
    assert images
    for src, natural, shown, right in images:
        assert src == "data:image/png;base64," and natural > 0
        assert right <= width
        # not shrunk (text drawn at 8 pt and up stays 11 CSS px and up): the phone gets its own layout
        assert shown >= 0.97 * natural, (width, natural, shown)


def test_screenshots(loaded):
    """Full-page screenshots, only where asked for (LOWBIT_REPORT_SCREENSHOTS=folder)."""
    folder = os.environ.get("LOWBIT_REPORT_SCREENSHOTS")
    if not folder:
        pytest.skip("set LOWBIT_REPORT_SCREENSHOTS=docs to write the screenshots")
    width, d, _ = loaded
    chrome = d.execute_script("return window.outerHeight - window.innerHeight")
    d.set_window_size(width, d.execute_script("return document.documentElement.scrollHeight") + chrome)
    out = Path(folder) / f"report-{width}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(out))
    from PIL import Image

    # a 256-colour palette: a page of text and plots loses nothing visible, the file a third of its size
    Image.open(out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    d.set_window_size(width, 1000)
