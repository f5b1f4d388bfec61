"""The statistics against numbers worked out by hand: headline means with refusals at
their penalties, the answered-only means and coverage, the exact sign-flip test, Holm's
adjustment, seed pooling, and a leaderboard of a constructed pair where one generator
is better on every case."""

from __future__ import annotations

import json
import shutil

import pytest

from regen.orchestrator.compare import CompareError, write_leaderboard
from regen.orchestrator.compare.runs import load_runs
from regen.orchestrator.results import read_json
from regen.orchestrator.stats import holm, sign_flip_test, summarize, summarize_pooled


def test_means_count_refusals_at_their_penalties(tmp_path, fake_run):
    # a_1 done (selection 0.6, judge 4/3), a_2 refused, b_1 done (0.8, judge 4/3), b_2 failed.
    run_dir = fake_run(
        tmp_path, "r", {"a_1": ("done", 0.6), "a_2": ("refused", None), "b_1": ("done", 0.8), "b_2": ("failed", None)}
    )
    bench = read_json(run_dir / "benchmark_final.json")
    assert bench["format"] == "regen.benchmark_final/3"
    assert bench["cases"] == {"total": 4, "done": 2, "refused": 1, "failed": 1, "pending": 0}
    assert bench["complete"] is False
    assert bench["coverage"] == pytest.approx(2 / 3)
    assert bench["penalties"] == {
        "clip": 0.0,
        "dinov2": 0.0,
        "ssim": 0.0,
        "selection": 0.0,
        "judge_content": 1.0,
        "judge_quality": 1.0,
        "judge_mean": 1.0,
    }
    headline, answered = bench["metrics"], bench["answered"]["metrics"]
    # (0.6 + 0 + 0.8) / 3 and (0.6 + 0.8) / 2; the failed case is in neither.
    assert headline["selection"]["mean"] == pytest.approx(1.4 / 3) and headline["selection"]["n"] == 3
    assert answered["selection"]["mean"] == pytest.approx(0.7) and answered["selection"]["n"] == 2
    # ssim = selection / 2: (0.3 + 0 + 0.4) / 3.
    assert headline["ssim"]["mean"] == pytest.approx(0.7 / 3)
    # The judge: (4 + 1 + 4) / 3 content, (3 + 1 + 3) / 3 quality, (3.5 + 1 + 3.5) / 3 mean.
    assert headline["judge_content"]["mean"] == pytest.approx(3.0)
    assert headline["judge_quality"]["mean"] == pytest.approx(7 / 3)
    assert headline["judge_mean"]["mean"] == pytest.approx(8 / 3)
    assert answered["judge_mean"]["mean"] == pytest.approx(3.5)
    # Candidates: 4 per finished case (2 rounds x 2), all 4 of a_2 refused.
    assert bench["candidates"] == {"total": 12, "refused": 4, "truncated": 0, "refusal_rate": pytest.approx(1 / 3)}
    assert bench["refused"] == [{"case": "a_2", "category": "a", "candidates": 4, "reasons": ["content policy"]}]
    assert [f["case"] for f in bench["failed"]] == ["b_2"]
    # Per category: a has one done and one refused case.
    a = bench["categories"]["a"]
    assert (a["done"], a["refused"], a["coverage"]) == (1, 1, 0.5)
    assert a["metrics"]["selection"]["mean"] == pytest.approx(0.3)
    assert a["answered"]["metrics"]["selection"]["mean"] == pytest.approx(0.6)
    # The headline curve counts the refused case at 0 after every round.
    assert [r["mean_best_selection"] for r in bench["rounds"]] == [pytest.approx(1.4 / 3)] * 2
    # Usage: 2 Generate calls and $0.02 per case that ran (the failed one recorded none).
    assert bench["usage"]["cost"]["total_usd"] == pytest.approx(0.06)
    assert bench["usage"]["cost"]["per_case_usd"] == pytest.approx(0.06 / 4)
    assert bench["usage"]["per_case"]["a_1"]["calls"] == 2


def test_sign_flip_test_exact_values():
    # All 2^3 sign patterns of (1, 1, 1): only +++ and --- reach |mean| 1.
    assert sign_flip_test([1.0, 1.0, 1.0], resamples=100, seed=0) == {"n": 3, "p": 0.25, "method": "exact"}
    # (1, -1) has mean 0: every pattern is as extreme.
    assert sign_flip_test([1.0, -1.0], resamples=100, seed=0)["p"] == 1.0
    # (3, 1): patterns ++ (2), -- (-2) reach 2; +- and -+ give 1.
    assert sign_flip_test([3.0, 1.0], resamples=100, seed=0)["p"] == 0.5
    # Beyond 16 pairs: seeded random patterns, p = (1 + hits) / (1 + resamples) >= 1 / 1001.
    many = sign_flip_test([0.1] * 20, resamples=1000, seed=3)
    assert many["method"].startswith("random") and many["p"] == pytest.approx(1 / 1001)
    assert sign_flip_test([0.1] * 20, resamples=1000, seed=3) == many


def test_holm_by_hand():
    # Sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_pooled_interval_includes_the_seed_spread():
    # Each case scores 0 with one seed and 1 with the other: every case's mean is 0.5,
    # so resampling the cases alone would give [0.5, 0.5]; the seeds widen it.
    groups = [[0.0, 1.0]] * 6
    pooled = summarize_pooled(groups, resamples=4000, confidence=0.95, seed=1)
    assert pooled["mean"] == 0.5 and pooled["n"] == 6 and pooled["values"] == 12
    assert pooled["ci_low"] < 0.4 and pooled["ci_high"] > 0.6
    assert summarize([0.5] * 6, resamples=4000, confidence=0.95, seed=1)["ci_low"] == 0.5
    # One value per case: exactly the plain bootstrap.
    single = [[0.1], [0.5], [0.3]]
    assert summarize_pooled(single, resamples=500, confidence=0.95, seed=2) == summarize(
        [0.1, 0.5, 0.3], resamples=500, confidence=0.95, seed=2
    )
    # Unequal numbers of seeds per case: each case weighs the same.
    assert summarize_pooled([[1.0, 3.0], [2.0]], resamples=200, confidence=0.9, seed=0)["mean"] == 2.0


def _cases(values: list[float]) -> dict[str, tuple[str, float]]:
    return {f"{'ab'[i % 2]}_{i}": ("done", v) for i, v in enumerate(values)}


def test_a_generator_better_on_every_case_is_significant(tmp_path, fake_run):
    """8 paired cases, A = B + 0.1 on each, C = B: the exact sign-flip p of A vs B is
    2 / 2^8; Holm over the 3 pairs multiplies the smallest by 3."""
    base = [0.30, 0.42, 0.51, 0.38, 0.61, 0.47, 0.55, 0.33]
    a = fake_run(tmp_path, "gen-a", _cases([v + 0.1 for v in base]), steps=8)
    b = fake_run(tmp_path, "gen-b", _cases(base), steps=4)
    c = fake_run(tmp_path, "gen-c", _cases(base), steps=2)
    board, out = write_leaderboard([b, a, c], tmp_path / "board")
    assert out == tmp_path / "board"
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.html", "leaderboard.json", "leaderboard.md"]
    rows = {row["generator"]: row for row in board["generators"]}
    assert set(rows) == {"fake-sd steps=8", "fake-sd steps=4", "fake-sd steps=2"}
    assert board["generators"][0]["generator"] == "fake-sd steps=8" and board["generators"][0]["rank"] == 1
    assert rows["fake-sd steps=8"]["metrics"]["selection"]["mean"] == pytest.approx(sum(base) / 8 + 0.1)
    # One seed: the row repeats the run's own benchmark numbers, interval included.
    assert (
        rows["fake-sd steps=4"]["metrics"]["selection"] == read_json(b / "benchmark_final.json")["metrics"]["selection"]
    )
    pairs = {(p["a"], p["b"]): p for p in board["pairwise"]["selection"]}
    ab = pairs[("fake-sd steps=4", "fake-sd steps=8")]
    assert ab["n"] == 8 and ab["mean_difference"] == pytest.approx(-0.1)
    assert ab["ci_low"] == pytest.approx(-0.1) and ab["ci_high"] == pytest.approx(-0.1)
    assert ab["p"] == pytest.approx(2 / 256) and ab["test"] == "exact"
    assert ab["p_holm"] == pytest.approx(3 * 2 / 256)
    assert ab["significant"] and ab["better"] == "fake-sd steps=8"
    bc = pairs[("fake-sd steps=4", "fake-sd steps=2")]
    assert bc["mean_difference"] == 0 and bc["p"] == 1.0 and not bc["significant"] and bc["better"] is None
    assert rows["fake-sd steps=8"]["significantly_better_than"] == ["fake-sd steps=4", "fake-sd steps=2"]
    assert rows["fake-sd steps=2"]["significantly_better_than"] == []
    assert board["consistency"]["consistent"]
    md = (out / "leaderboard.md").read_text()
    assert "| 1 | fake-sd steps=8 |" in md and "significant: fake-sd steps=8 better" in md
    assert json.loads((out / "leaderboard.json").read_text()) == json.loads(json.dumps(board))


def test_with_six_cases_holm_keeps_it_from_significance(tmp_path, fake_run):
    """6 cases: p = 2 / 64 per pair, but Holm over 3 pairs gives 3 x 2/64 > 0.05."""
    base = [0.30, 0.42, 0.51, 0.38, 0.61, 0.47]
    runs = [
        fake_run(tmp_path, "a", _cases([v + 0.1 for v in base]), steps=8),
        fake_run(tmp_path, "b", _cases(base), steps=4),
        fake_run(tmp_path, "c", _cases(base), steps=2),
    ]
    board, _ = write_leaderboard(runs, tmp_path / "board")
    best = next(
        p for p in board["pairwise"]["selection"] if p["a"] == "fake-sd steps=8" and p["b"] == "fake-sd steps=4"
    )
    assert best["p"] == pytest.approx(2 / 64) and best["p_holm"] == pytest.approx(3 * 2 / 64)
    assert not best["significant"]


def test_seeds_of_one_generator_are_pooled(tmp_path, fake_run):
    values = [0.3, 0.5, 0.4, 0.6]
    runs = [
        fake_run(tmp_path, "a0", _cases(values), steps=8, seed=0),
        fake_run(tmp_path, "a1", _cases([v + 0.2 for v in values]), steps=8, seed=1),
        fake_run(tmp_path, "b0", _cases(values), steps=4, seed=0),
        fake_run(tmp_path, "b1", _cases(values), steps=4, seed=1),
    ]
    board, _ = write_leaderboard(runs, tmp_path / "board")
    rows = {row["generator"]: row for row in board["generators"]}
    pooled = rows["fake-sd steps=8"]
    assert pooled["seeds"] == [0, 1] and len(pooled["runs"]) == 2
    assert pooled["metrics"]["selection"]["mean"] == pytest.approx(sum(values) / 4 + 0.1)
    assert pooled["metrics"]["selection"]["values"] == 8
    pair = board["pairwise"]["selection"][0]
    assert pair["n"] == 4 and pair["mean_difference"] == pytest.approx(0.1)
    assert board["like_for_like"]["seeds"] == [0, 1]


def test_mismatched_runs_are_refused_naming_each_difference(tmp_path, fake_run):
    a = fake_run(tmp_path, "a", _cases([0.3, 0.4]), steps=8)
    b = fake_run(tmp_path, "b", _cases([0.3, 0.4]), steps=4)
    run = read_json(b / "run.json")
    run["config"]["rounds"] = 3
    run["models"]["describer"]["revision"] = "d2"
    run["models"]["scorer"]["metric_ids"]["clip"] = "clip:other@r9"
    run["dataset"]["cases"][0]["sha256"] = "f" * 64
    (b / "run.json").write_text(json.dumps(run))
    with pytest.raises(CompareError) as caught:
        load_runs([a, b])
    message = str(caught.value)
    assert "not like for like" in message
    assert "rounds: 2 in a; 3 in b" in message
    assert "describer revision: 'd1' in a; 'd2' in b" in message
    assert "metric ids:" in message and "clip:other@r9" in message
    assert "dataset manifest hash" in message
    assert "candidates" not in message.replace("every reference", "")  # what agrees is not named

    c = fake_run(tmp_path, "c", _cases([0.3, 0.4]), steps=4, seed=1)
    with pytest.raises(CompareError, match=r"run seeds differ between generators .*steps=8: 0; .*steps=4: 1"):
        load_runs([a, c])
    shutil.copytree(a, tmp_path / "a-again")
    with pytest.raises(CompareError, match="the same generator twice with run seed 0: a, a"):
        load_runs([a, tmp_path / "a-again"])


def test_a_different_iut_is_flagged(tmp_path, fake_run):
    a = fake_run(tmp_path, "a", _cases([0.3, 0.4]), steps=8)
    b = fake_run(tmp_path, "b", _cases([0.3, 0.4]), steps=4)
    (b / "a_0" / "iut.json").write_text(json.dumps({"global_description": "something else"}))
    board, _ = write_leaderboard([a, b], tmp_path / "board")
    check = board["consistency"]
    assert not check["consistent"]
    assert check["mismatches"] == [{"case": "a_0", "what": "iut", "groups": [["fake-sd steps=8"], ["fake-sd steps=4"]]}]
