import shutil
from pathlib import Path

import pytest

from count01.config import Config


@pytest.fixture
def tiny() -> Config:
    """A config that trains in about a second: enough to exercise every code path."""
    return Config(steps=60, n_seeds=2, batch_size=64, checkpoint_every=20, eval_size=512,
                  exhaustive_len=6, max_len=8, long_max_len=12)


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--window-size=1200,1600")


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by selenium; skipped where either is missing."""
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


def listing(d: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) below d: a snapshot to compare after a refusal."""
    d = Path(d)
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(d.rglob("*"))}


def refused(args: list[str], capsys, match: str, *watched: Path) -> str:
    """Run the CLI on a bad input: exit code 2, one to three lines on stderr holding `match`, no
    traceback, and nothing created or changed below any of the `watched` directories."""
    from count01.cli import main

    before = [listing(w) for w in watched]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}: {err}"
    assert 1 <= err.count("\n") <= 3 and err.endswith("\n"), err
    assert "Traceback" not in err and match in err, err
    for w, b in zip(watched, before):
        assert listing(w) == b, f"{w} changed"
    return err
