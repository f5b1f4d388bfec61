"""Opening the pages in a real headless Chromium (Debian's, driven by playwright; no
browser download): page errors, console errors and any request that is not a local
file are collected, every image is loaded and checked, screenshots are kept.

Screenshots go to the test's output folder, and also to $REGEN_TEST_SCREENS when set."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("REGEN_TEST_CHROMIUM", "/usr/bin/chromium")


def launch() -> Any:
    """(playwright, browser); skips the test when Chromium or playwright is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    playwright = sync_api.sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    return playwright, browser


@dataclass
class Page:
    page: Any
    problems: list[str] = field(default_factory=list)

    def all_images_loaded(self) -> tuple[int, list[str]]:
        """Load every image now (lazy ones too) and wait; (count, sources that failed)."""
        self.page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
        # Polled from here: wait_for_function evaluates its predicate with eval() in the
        # page, which the report's Content-Security-Policy (rightly) forbids.
        deadline = time.monotonic() + 60
        while not self.page.evaluate("Array.from(document.images).every(i => i.complete)"):
            if time.monotonic() > deadline:
                raise AssertionError("images still loading after 60 s")
            self.page.wait_for_timeout(100)
        failed = self.page.evaluate(
            "Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src'))"
        )
        return self.page.evaluate("document.images.length"), failed

    def visible_cases(self, selector: str = "article.case") -> list[str]:
        return self.page.evaluate(
            f"Array.from(document.querySelectorAll('{selector}'))"
            ".filter(e => !e.classList.contains('hidden')).map(e => e.dataset.case)"
        )

    def screenshot(self, path: Path, **options: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), **options)
        screens = os.environ.get("REGEN_TEST_SCREENS")
        if screens:
            Path(screens).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(screens) / path.name)
        return path


def open_page(browser: Any, path: Path, width: int = 1400, height: int = 1000) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    opened = Page(page)
    page.on("pageerror", lambda error: opened.problems.append(f"script error: {error}"))
    page.on("console", lambda m: opened.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: None if r.url.startswith("file://") else opened.problems.append(f"fetch: {r.url}"))
    page.on("requestfailed", lambda r: opened.problems.append(f"failed: {r.url}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return opened
