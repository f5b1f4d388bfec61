"""The report's plots as inline SVG, drawn by pygal: no script or style is fetched (its
tooltip script, which pygal would load from the network, is left out), and each chart
gets a fixed id so the same run gives the same page."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pygal  # type: ignore[import-untyped]
from pygal.style import Style  # type: ignore[import-untyped]

STYLE = Style(
    background="transparent",
    plot_background="#ffffff",
    foreground="#333333",
    foreground_strong="#111111",
    foreground_subtle="#cccccc",
    colors=("#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04"),
    font_family="system-ui, sans-serif",
    title_font_size=14,
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=11,
    value_font_size=10,
)


def _render(chart: Any, chart_id: str) -> str:
    svg = chart.render(is_unicode=True)
    uuid = re.search(r'id="chart-([0-9a-f-]+)"', svg)
    if uuid:
        svg = svg.replace(uuid.group(1), chart_id)
    # Drop pygal's comments (a generation date and links): the page stays the same per run.
    return re.sub(r"<!--.*?-->", "", svg)


def _options(title: str, width: int, height: int) -> dict:
    return dict(
        title=title,
        width=width,
        height=height,
        explicit_size=True,
        js=[],
        disable_xml_declaration=True,
        style=STYLE,
        show_legend=True,
        legend_at_bottom=True,
        print_values=False,
    )


def rounds_chart(series: Mapping[str, Sequence[float | None]], *, chart_id: str = "rounds") -> str:
    """Best-so-far selection score after each round, one line per series."""
    chart = pygal.Line(
        **_options("Best-so-far selection score by round", 520, 320), dots_size=4, x_title="round", y_title="mean"
    )
    rounds = max((len(v) for v in series.values()), default=0)
    chart.x_labels = [str(r) for r in range(1, rounds + 1)]
    for name, values in series.items():
        chart.add(name, list(values))
    return _render(chart, chart_id)


def distribution_chart(metric: str, values: Sequence[float], *, note: str = "", bins: int = 10) -> str:
    """A histogram of one metric's values over the answered cases; `note` follows the
    metric's name in the title (e.g. how many refused cases the headline adds)."""
    chart = pygal.Histogram(**_options(f"{metric} {note}".strip(), 340, 230), y_title="cases")
    chart.show_legend = False
    data = np.asarray(values, dtype=np.float64)
    if len(data):
        low, high = float(data.min()), float(data.max())
        if high - low < 1e-9:
            low, high = low - 0.05, high + 0.05
        counts, edges = np.histogram(data, bins=bins, range=(low, high))
        chart.add(
            "cases", [(int(c), float(a), float(b)) for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True)]
        )
    return _render(chart, f"dist-{metric}")
