"""report.html in a real browser (headless Chromium): every image loads, every section is there,
nothing is fetched from the network. A screenshot is saved in the test's tmp directory."""

from __future__ import annotations

from pathlib import Path

from count01.present.report import SECTIONS
from count01.study import build_report


def assert_renders(browser, page: Path, shot: Path) -> int:
    """Open report.html: every image loads, every section shows, nothing is fetched but data:
    URIs; save a screenshot. Returns the number of images."""
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert images and all(done and width > 0 for done, width in images)
    for sid in SECTIONS:
        shown = browser.execute_script(
            "const s = document.getElementById(arguments[0]);"
            "return s !== null && s.getBoundingClientRect().height > 0", sid)
        assert shown, f"section {sid} is missing or empty"
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("data:") for name in fetched)
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
    return len(images)


def test_report_renders_with_every_image_and_section(browser, tmp_path):
    from test_report import FIGURES, fake_run

    page = build_report(fake_run(tmp_path / "run")).html
    assert assert_renders(browser, page, tmp_path / "report.png") == len(FIGURES) + 1  # sensitivity
