"""The report and the leaderboard built from real tiny-model runs, opened in headless
Chromium.

Generators: the tiny Stable Diffusion at its default 4 steps and at 2 steps, and
tests/support/broken_generator.py's "refuses" server, which refuses every image of
object_1 (all its candidate seeds) and one of scene_1's.
All share the session's describer and scorer. Runs: 4 cases, 2 rounds x 2 candidates.
Screenshots are kept in the module's output folder (and in $REGEN_TEST_SCREENS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import broken_generator
from support.browser import launch, open_page

from regen.orchestrator.runner import run
from regen.orchestrator.seeds import candidate_seed
from regen.orchestrator.settings import OrchestratorSettings

pytestmark = pytest.mark.slow

ROUNDS, CANDIDATES = 2, 2
REFUSED_CASE, PARTLY_REFUSED_CASE = "object_1", "scene_1"
CATEGORIES = ["complex_scenarios", "human_portraits", "natural_scenes", "simple_objects"]


def _regen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regen.cli", *args], capture_output=True, text=True, env=dict(os.environ), timeout=900
    )


def _common(dataset: Path, out: Path) -> list[str]:
    return ["--dataset", str(dataset), "--out", str(out), "--limit", "4", "--rounds", str(ROUNDS)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, scene_dataset, describer_address, generator_address, scorer_address) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("runs")
    started = time.monotonic()
    # The first run through the command, to check what it prints at the end.
    cli = _regen(
        "run",
        *_common(scene_dataset, out),
        "--candidates",
        str(CANDIDATES),
        "--run-name",
        "sd4-seed0",
        "--progress",
        "none",
        f"--describer={describer_address}",
        f"--generator={generator_address}",
        f"--scorer={scorer_address}",
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    def settings(name: str, generator: str, seed: int = 0, steps: int | None = None) -> OrchestratorSettings:
        return OrchestratorSettings(
            dataset=str(scene_dataset),
            out=out,
            run_name=name,
            limit=4,
            rounds=ROUNDS,
            candidates=CANDIDATES,
            seed=seed,
            concurrency=4,
            describer=describer_address,
            generator=generator,
            scorer=scorer_address,
            generation={"steps": steps},
        )

    run(settings("sd2-seed0", generator_address, steps=2))
    refuse = {candidate_seed(0, REFUSED_CASE, r, k) for r in range(1, ROUNDS + 1) for k in range(1, CANDIDATES + 1)}
    refuse.add(candidate_seed(0, PARTLY_REFUSED_CASE, 1, 1))
    with broken_generator.serving("refuses", frozenset(refuse)) as (address, _servicer):
        run(settings("refuser-seed0", address))
    return {"out": out, "cli": cli, "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright, browser = launch()
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()


def _bench(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "benchmark_final.json").read_text())


def test_regen_run_ends_with_the_summary_table(runs):
    stdout = runs["cli"].stdout
    run_dir = runs["out"] / "sd4-seed0"
    assert "4 of 4 cases done" in stdout
    for words in ("metric", "mean", "95% CI", "answered only", "selection", "judge_mean"):
        assert words in stdout, stdout
    bench = _bench(run_dir)
    selection = bench["metrics"]["selection"]
    assert f"{selection['mean']:.4f}" in stdout and f"[{selection['ci_low']:.4f}, {selection['ci_high']:.4f}]" in stdout
    assert "cases: 4 done, 0 refused, 0 failed of 4 (coverage 100.0%)" in stdout
    assert "candidates: 0 of 16 refused (0.0%), 0 prompts truncated to the token budget" in stdout
    assert "usage: describer" in stdout and "; generator 8 calls, 16 images;" in stdout
    assert "cost: n/a (n/a per case)" in stdout
    assert f"report: {run_dir / 'report.html'}" in stdout
    assert (run_dir / "report.html").is_file() and (run_dir / "report_files" / "thumbs").is_dir()
    assert "incomplete" not in runs["cli"].stderr


def test_refusals_are_counted_not_dropped(runs):
    bench = _bench(runs["out"] / "refuser-seed0")
    assert bench["cases"] == {"total": 4, "done": 3, "refused": 1, "failed": 0, "pending": 0}
    assert bench["complete"] and bench["coverage"] == pytest.approx(0.75)
    assert bench["candidates"]["total"] == 16 and bench["candidates"]["refused"] == 5
    assert bench["refused"][0]["case"] == REFUSED_CASE
    final = json.loads((runs["out"] / "refuser-seed0" / REFUSED_CASE / "final" / "final_metrics.json").read_text())
    assert final["status"] == "refused" and final["refusal_reasons"] == ["content policy (test generator)"]
    finals = [
        json.loads(p.read_text())
        for p in (runs["out"] / "refuser-seed0").glob("*/final/final_metrics.json")
        if json.loads(p.read_text())["status"] == "done"
    ]
    judged = [f["metrics"]["judge_content"] for f in finals]
    assert bench["metrics"]["judge_content"]["mean"] == pytest.approx((sum(judged) + 1) / 4)
    assert bench["answered"]["metrics"]["judge_content"]["mean"] == pytest.approx(sum(judged) / 3)


def test_report_in_chromium(runs, browser, tmp_path_factory):
    report = runs["out"] / "refuser-seed0" / "report.html"
    started = time.monotonic()
    assert _regen("report", str(report.parent)).returncode == 0
    page = open_page(browser, report)
    view = page.page
    assert page.visible_cases() == ["complex_1", "portrait_1", "scene_1", "object_1"]
    assert "4 of 4 cases shown" in view.inner_text("#shown")
    page.screenshot(tmp_path_factory.getbasetemp() / "screens" / "report.png")
    view.click("#expand")
    count, failed = page.all_images_loaded()
    # Per done case: reference, best, and per round the reference and the rendered candidates.
    assert count > 4 * 2 and failed == []
    # The refused case is marked as such.
    assert "refused" in view.get_attribute(f"#case-{REFUSED_CASE}", "class")
    assert "refused: every candidate of every round" in view.inner_text(f"#case-{REFUSED_CASE}")
    # Filtering by category, by outcome, by a metric's value; sorting by a metric.
    view.select_option("#f-category", "simple_objects")
    assert page.visible_cases() == [REFUSED_CASE]
    view.select_option("#f-category", "")
    view.select_option("#f-status", "refused")
    assert page.visible_cases() == [REFUSED_CASE]
    view.select_option("#f-status", "")
    view.select_option("#f-metric", "selection")
    view.fill("#f-max", "0")
    assert page.visible_cases() == [REFUSED_CASE]  # at the penalty, 0
    view.fill("#f-max", "")
    view.select_option("#sort-key", "judge_mean")
    view.select_option("#sort-dir", "desc")
    order = page.visible_cases()
    values = [float(view.get_attribute(f"#case-{case}", "data-m-judge_mean")) for case in order]
    assert values == sorted(values, reverse=True) and order[-1] == REFUSED_CASE
    assert "4 of 4 cases shown" in view.inner_text("#shown")
    assert page.problems == []
    view.locator("#cases").scroll_into_view_if_needed()
    page.screenshot(tmp_path_factory.getbasetemp() / "screens" / "report-cases.png")
    view.close()
    assert time.monotonic() - started < 60


def test_leaderboard_and_its_page(runs, browser, tmp_path_factory):
    out = runs["out"]
    board_dir = tmp_path_factory.mktemp("board")
    done = _regen(
        "compare", str(out / "sd4-seed0"), str(out / "sd2-seed0"), str(out / "refuser-seed0"), "--out", str(board_dir)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leaderboard" in done.stdout and f"html: {board_dir / 'leaderboard.html'}" in done.stdout
    board = json.loads((board_dir / "leaderboard.json").read_text())
    labels = [row["generator"] for row in board["generators"]]
    assert sorted(labels) == ["broken-example", "stable-diffusion steps=2", "stable-diffusion steps=4"]
    refuser = next(row for row in board["generators"] if row["generator"] == "broken-example")
    assert refuser["outcomes"]["refused"] == 1 and refuser["outcomes"]["coverage"] == pytest.approx(0.75)
    assert len(board["pairwise"]["selection"]) == 3 and all(p["n"] == 4 for p in board["pairwise"]["selection"])
    # The shared describer gave every generator the same IUT and first prompt.
    assert board["consistency"] == {"cases": 4, "consistent": True, "mismatches": [], "note": None}
    assert "| 1 |" in (board_dir / "leaderboard.md").read_text()

    page = open_page(browser, board_dir / "leaderboard.html")
    view = page.page
    count, failed = page.all_images_loaded()
    # The references and three generators' best images, less the one refused case.
    assert count == 4 * (1 + 3) - 1 and failed == []
    assert page.visible_cases() == ["complex_1", "portrait_1", "scene_1", "object_1"]
    page.screenshot(tmp_path_factory.getbasetemp() / "screens" / "leaderboard.png", full_page=True)
    view.select_option("#f-category", "human_portraits")
    assert page.visible_cases() == ["portrait_1"]
    view.select_option("#f-category", "")
    view.select_option("#f-status", "refused")
    assert page.visible_cases() == [REFUSED_CASE]
    assert page.problems == []
    view.close()


def _as_seed(run_dir: Path, seed: int, into: Path) -> Path:
    """A copy of a run relabelled as run with another seed (the pooling arithmetic is
    checked by hand in test_stats.py; this exercises the command on real run folders)."""
    copy = into / f"{run_dir.name}-as-seed{seed}"
    shutil.copytree(run_dir, copy)
    run_file = copy / "run.json"
    data = json.loads(run_file.read_text())
    data["config"]["seed"], data["run_name"] = seed, copy.name
    run_file.write_text(json.dumps(data))
    return copy


def test_seeds_are_pooled_and_mismatches_refused(runs, tmp_path):
    out = runs["out"]
    sd4, sd2 = out / "sd4-seed0", out / "sd2-seed0"
    sd4_1, sd2_1 = _as_seed(sd4, 1, tmp_path), _as_seed(sd2, 1, tmp_path)
    done = _regen("compare", str(sd4), str(sd4_1), str(sd2), str(sd2_1), "--out", str(tmp_path / "pooled"))
    assert done.returncode == 0, done.stderr
    board = json.loads((tmp_path / "pooled" / "leaderboard.json").read_text())
    assert [row["seeds"] for row in board["generators"]] == [[0, 1], [0, 1]]
    assert all(row["metrics"]["selection"]["values"] == 8 for row in board["generators"])

    refused = _regen("compare", str(sd4), str(sd2_1), "--out", str(tmp_path / "no"))
    assert refused.returncode == 2
    assert "run seeds differ between generators" in refused.stderr
    assert "stable-diffusion steps=4: 0; stable-diffusion steps=2: 1" in refused.stderr
    assert not (tmp_path / "no").exists()
