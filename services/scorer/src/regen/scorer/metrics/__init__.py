"""The scorer's metrics, by name. Adding one: a module with a class that satisfies
`regen.scorer.metrics.base.Metric` (see clip.py, ssim.py), and its line here; or, from
another distribution, an entry point in the group "regen.scorer.metrics"."""

from __future__ import annotations

from regen.common.registry import Registry
from regen.scorer.metrics.base import Metric

REGISTRY: Registry[type[Metric]] = Registry(
    "regen.scorer.metrics",
    "metric",
    {
        "clip": "regen.scorer.metrics.clip:ClipMetric",
        "dinov2": "regen.scorer.metrics.dinov2:Dinov2Metric",
        "ssim": "regen.scorer.metrics.ssim:SsimMetric",
    },
)
