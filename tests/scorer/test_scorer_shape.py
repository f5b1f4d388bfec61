"""The scorer's shape: a transport-free core, and metrics that are one file each,
registered by one line (or, from another distribution, an entry point)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import textwrap
from pathlib import Path

import pytest
from support.scenes import scene

from regen.common.images import encode_png
from regen.common.settings import load_settings
from regen.scorer.core import ScorerCore
from regen.scorer.metrics import REGISTRY
from regen.scorer.settings import ScorerSettings

# A whole new metric, as a newcomer would write it: one module, nothing else edited.
PLUGIN = """
from typing import ClassVar

import numpy as np

from regen.scorer.metrics.base import MetricBase, MetricInfo


class MeanAbsoluteError(MetricBase):
    name: ClassVar[str] = "mae"

    def __init__(self) -> None:
        self.info = MetricInfo(
            id="mae;range=255", name=self.name, definition="mean absolute RGB difference", higher_is_better=False
        )

    @classmethod
    def load(cls, options, context):
        return cls()

    def score(self, pairs):
        values = []
        for pair in pairs:
            candidate = pair.candidate.resize(pair.reference.image.size)
            a = np.asarray(pair.reference.image, dtype=np.float64)
            values.append(float(np.abs(a - np.asarray(candidate, dtype=np.float64)).mean()))
        return values
"""


def test_a_metric_plugin_is_one_file_and_one_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "regen_mae_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("mae", "regen_mae_plugin:MeanAbsoluteError", "regen.scorer.metrics")
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        found = real(**selection)
        if selection.get("group") != "regen.scorer.metrics":
            return found
        return importlib.metadata.EntryPoints([*found, entry])

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert REGISTRY.names()[-1] == "mae"
    core = ScorerCore.load(load_settings(ScorerSettings, preset="tiny", metrics=["ssim", "mae"]))
    assert [m.name for m in core.describe().metrics] == ["ssim", "mae"]
    assert core.describe().metrics[1].higher_is_better is False
    reference = encode_png(scene("object_1", (64, 64)))
    other = encode_png(scene("portrait_2", (64, 64)))
    same, different = asyncio.run(core.score(reference, [reference, other]))
    assert same["mae;range=255"] == 0.0 < different["mae;range=255"]


def test_metric_options_are_checked_by_the_metric(tiny_models: Path) -> None:
    with pytest.raises(ValueError, match=r"metric_options\.dinov2: pooling: Input should be 'mean' or 'cls'"):
        ScorerCore.load(load_settings(ScorerSettings, preset="tiny", metric_options={"dinov2": {"pooling": "max"}}))
    with pytest.raises(ValueError, match=r"metric_options\.clipp: no such metric is configured"):
        ScorerCore.load(load_settings(ScorerSettings, preset="tiny", metric_options={"clipp": {}}))
    with pytest.raises(ValueError, match=r"metrics: unknown metric 'lpips'; choose one of clip, dinov2, ssim"):
        ScorerCore.load(load_settings(ScorerSettings, preset="tiny", metrics=["lpips"]))
