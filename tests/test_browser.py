"""report.html in a real browser (headless Chromium): every image loads, every section is there,
nothing is fetched from the network. A screenshot is saved in the test's tmp directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from count01.report import SECTIONS, build_report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--window-size=1200,1600")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    driver = CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    d = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        yield d
    finally:
        d.quit()


def test_report_renders_with_every_image_and_section(browser, tmp_path):
    from test_report import FIGURES, fake_run

    run = fake_run(tmp_path / "run")
    page = build_report(run).html
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) == len(FIGURES)
    assert all(done and width > 0 for done, width in images)
    for sid in SECTIONS:
        shown = browser.execute_script(
            "const s = document.getElementById(arguments[0]);"
            "return s !== null && s.getBoundingClientRect().height > 0", sid)
        assert shown, f"section {sid} is missing or empty"
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("data:") for name in fetched)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
