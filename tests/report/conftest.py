"""Run folders written by hand (no services): the files `regen run` writes, with chosen
numbers, for checking the statistics by hand and the report's speed at full size."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from regen.orchestrator.aggregate import aggregate
from regen.orchestrator.report.model import run_cases
from regen.orchestrator.results import RunLayout, atomic_write_bytes, atomic_write_json

METRIC_IDS = {"clip": "clip:fake@r1", "dinov2": "dinov2:fake@r1", "ssim": "ssim;fake"}


def _png(color: tuple[int, int, int], size: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (size, size), color)
    image.putpixel((0, 0), (255 - color[0], 0, 0))
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _candidate(k: int, selection: float, refused: bool) -> dict[str, Any]:
    return {
        "index": k,
        "file": None if refused else f"candidate_{k}.png",
        "prompt": f"a prompt, variant {k}",
        "seed": 1000 + k,
        "refused": refused,
        "refusal_reason": "content policy" if refused else "",
        "prompt_truncated": False,
        "prompt_tokens": 12,
        "width": 32,
        "height": 32,
        "scores": {} if refused else {"clip": selection, "dinov2": selection, "ssim": selection / 2},
        "selection": None if refused else selection,
    }


def write_fake_run(
    root: Path,
    name: str,
    cases: dict[str, tuple[str, float | None]],
    *,
    seed: int = 0,
    steps: int = 4,
    rounds: int = 2,
    candidates: int = 2,
    image_size: int = 32,
    judge: tuple[int, int] = (4, 3),
) -> Path:
    """A finished run of `cases` (id -> (status, selection)): status done, refused or
    failed; a done case's best (round 1, candidate 1) has the given selection score and
    clip = dinov2 = selection, ssim = selection / 2, and the judge's `judge` ratings."""
    dataset = root / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    run_dir = root / name
    layout = RunLayout(run_dir)
    listed = []
    for i, case in enumerate(cases):
        path = dataset / f"{case}.png"
        if not path.exists():
            path.write_bytes(_png((20 * i % 256, 120, 200), image_size))
        listed.append({"id": case, "category": case.split("_")[0], "file": path.name, "sha256": f"{i:064x}"})
    run = {
        "format": "regen.run/1",
        "run_name": name,
        "config_hash": "0" * 64,
        "config": {
            "rounds": rounds,
            "candidates": candidates,
            "seed": seed,
            "limit": None,
            "selection_weights": {"clip": 0.5, "dinov2": 0.5},
            "generation": {
                "width": None,
                "height": None,
                "steps": steps,
                "guidance_scale": None,
                "negative_prompt": "",
            },
            "bootstrap_resamples": 2000,
            "confidence": 0.95,
        },
        "dataset": {"name": "fake", "root": str(dataset), "cases": listed},
        "models": {
            "describer": {
                "model_id": "fake-mllm",
                "revision": "d1",
                "backend": "fake",
                "device": "cpu",
                "dtype": "f32",
                "template_version": "t1",
            },
            "generator": {
                "model_id": "fake-sd",
                "revision": "g1",
                "backend": "fake",
                "device": "cpu",
                "dtype": "f32",
                "prompt_token_budget": 77,
                "default_width": 32,
                "default_height": 32,
                "default_steps": 4,
                "default_guidance_scale": 5.0,
            },
            "scorer": {"models": [], "metrics": [], "metric_ids": METRIC_IDS},
        },
        "versions": {"regen": "test"},
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    atomic_write_json(layout.run_file, run)
    for case, (status, selection) in cases.items():
        category = case.split("_")[0]
        if status == "failed":
            atomic_write_json(
                layout.error_file(case),
                {"case": case, "status": "failed", "failure": {"stage": "score", "round": 1, "error": "boom"}},
            )
            continue
        atomic_write_json(
            layout.iut_file(case),
            {"global_description": f"scene {case}", "global_features": {}, "objects": [], "relationships": []},
        )
        refused = status == "refused"
        value = selection if selection is not None else 0.0
        for r in range(1, rounds + 1):
            it = layout.iteration_dir(case, r)
            scored = [_candidate(k, value - 0.01 * (r - 1) - 0.01 * (k - 1), refused) for k in range(1, candidates + 1)]
            for c in scored:
                if c["file"]:
                    atomic_write_bytes(
                        it / c["file"],
                        _png((int(255 * abs(c["selection"])) % 256, 60 * c["index"] % 256, 90), image_size),
                    )
            best = (
                None
                if refused
                else {"round": r, "candidate": 1, "selection": scored[0]["selection"], "prompt": "p", "seed": 1001}
            )
            meta = {
                "case": case,
                "round": r,
                "prompt": "a prompt" if r == 1 else f"a prompt, revised {r - 1}",
                "prompt_source": "write_prompt" if r == 1 else f"revise(iteration_{r - 1})",
                "variants_seed": 7,
                "candidates": scored,
                "best": best,
                "best_so_far": None if refused else {**best, "round": 1, "selection": value},  # type: ignore[dict-item]
                "compared": None,
                "differences": []
                if r == rounds or refused
                else [{"aspect": "content", "description": "the sky differs"}],
                "revised_prompt": None if r == rounds or refused else f"a prompt, revised {r}",
                "describer_calls": {},
                "timings": {},
            }
            atomic_write_json(it / "metadata.json", meta)
        common = {
            "case": case,
            "category": category,
            "reference": {"file": f"{case}.png", "sha256": "0"},
            "metric_ids": METRIC_IDS,
            "candidates": {
                "total": rounds * candidates,
                "refused": rounds * candidates if refused else 0,
                "truncated": 0,
            },
            "best_selection_by_round": [None if refused else value] * rounds,
            "round_best_selection": [None if refused else value] * rounds,
            "usage": {
                "generator": {
                    "Generate": {
                        "calls": rounds,
                        "images_received": 0 if refused else rounds * candidates,
                        "cost_usd": 0.01 * rounds,
                    }
                }
            },
            "timings": {"stages_s": {"generate": 0.1}, "total_s": 0.2},
        }
        if refused:
            final = {
                **common,
                "status": "refused",
                "best": None,
                "metrics": {},
                "judge": None,
                "refusal_reasons": ["content policy"],
            }
        else:
            final = {
                **common,
                "status": "done",
                "best": {
                    "round": 1,
                    "candidate": 1,
                    "selection": value,
                    "prompt": "a prompt, variant 1",
                    "seed": 1001,
                    "file": "iteration_1/candidate_1.png",
                },
                "metrics": {
                    "clip": value,
                    "dinov2": value,
                    "ssim": value / 2,
                    "selection": value,
                    "judge_content": judge[0],
                    "judge_quality": judge[1],
                    "judge_mean": sum(judge) / 2,
                },
                "judge": {"content_consistency": judge[0], "perceptual_quality": judge[1], "rationale": "close enough"},
            }
            atomic_write_bytes(
                layout.final_dir(case) / "best_image.png",
                (layout.iteration_dir(case, 1) / "candidate_1.png").read_bytes(),
            )
        atomic_write_json(layout.final_metrics_file(case), final)
    atomic_write_json(layout.benchmark_file, aggregate(layout, run_cases(run), run=run))
    return run_dir


@pytest.fixture
def fake_run() -> Callable[..., Path]:
    return write_fake_run
