"""The report at full size (100 cases x 3 rounds x 3 candidates, written by hand): built
in seconds, thumbnails written once, and the page stays responsive in Chromium."""

from __future__ import annotations

import time

import pytest
from support.browser import launch, open_page

from regen.orchestrator.report import write_report

pytestmark = pytest.mark.slow

CATEGORIES = ("portrait", "scene", "object", "complex")


def test_a_hundred_cases_build_fast_and_filter_fast(tmp_path, fake_run):
    cases = {}
    for i in range(100):
        status = "refused" if i % 25 == 3 else "failed" if i % 50 == 7 else "done"
        cases[f"{CATEGORIES[i % 4]}_{i}"] = (status, 0.2 + 0.6 * ((i * 37) % 100) / 100)
    run_dir = fake_run(tmp_path, "big", cases, rounds=3, candidates=3, image_size=256)

    started = time.monotonic()
    report = write_report(run_dir)
    first = time.monotonic() - started
    thumbs = list((run_dir / "report_files" / "thumbs").rglob("*.jpg"))
    # 94 done cases: the reference and 9 candidates (the best is one of them); 4 refused
    # and 2 failed ones: the reference.
    assert len(thumbs) == 94 * 10 + 4 + 2
    stamps = {p: p.stat().st_mtime_ns for p in thumbs}
    started = time.monotonic()
    write_report(run_dir)
    again = time.monotonic() - started
    assert {p: p.stat().st_mtime_ns for p in thumbs} == stamps, "thumbnails are written once"
    assert first < 60 and again < 10, (first, again)
    assert report.stat().st_size < 5_000_000

    playwright, browser = launch()
    try:
        started = time.monotonic()
        page = open_page(browser, report)
        loaded = time.monotonic() - started
        view = page.page
        assert len(page.visible_cases()) == 100
        started = time.monotonic()
        view.select_option("#sort-key", "selection")
        view.select_option("#f-category", "scene")
        shown = page.visible_cases()
        filtered = time.monotonic() - started
        assert len(shown) == 25
        view.click("#expand")
        count, failed = page.all_images_loaded()
        # Done: reference and best, and per round the reference and 3 candidates; refused:
        # the reference, again in each round; failed: the reference.
        assert count == 94 * (2 + 3 * 4) + 4 * (1 + 3) + 2 and failed == []
        assert page.problems == []
        assert loaded < 10 and filtered < 2, (loaded, filtered)
    finally:
        browser.close()
        playwright.stop()


def test_the_leaderboard_page_marks_significant_differences(tmp_path, fake_run):
    """8 paired cases where one generator is 0.1 better on each: the page marks it."""
    from regen.orchestrator.compare import write_leaderboard

    base = [0.30, 0.42, 0.51, 0.38, 0.61, 0.47, 0.55, 0.33]
    runs = [
        fake_run(tmp_path, "a", {f"{'ab'[i % 2]}_{i}": ("done", v + 0.1) for i, v in enumerate(base)}, steps=8),
        fake_run(tmp_path, "b", {f"{'ab'[i % 2]}_{i}": ("done", v) for i, v in enumerate(base)}, steps=4),
    ]
    _board, out = write_leaderboard(runs, tmp_path / "board")
    playwright, browser = launch()
    try:
        page = open_page(browser, out / "leaderboard.html")
        view = page.page
        row = view.inner_text('#leaderboard tr[data-generator="fake-sd steps=8"]')
        assert "▲ fake-sd steps=4" in row
        assert "significant: fake-sd steps=8 better" in view.inner_text('details[data-metric="selection"]')
        count, failed = page.all_images_loaded()
        assert count == 8 * 3 and failed == []
        assert page.problems == []
        page.screenshot(tmp_path / "leaderboard-significant.png")
    finally:
        browser.close()
        playwright.stop()
