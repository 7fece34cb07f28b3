"""Histograms of per-video metrics, one panel per metric and one series per group of rows, as PNG bytes:
the compare report's baseline against current, and the nightly report's languages."""

from __future__ import annotations

import io
import math

import pandas as pd

PANEL_COLUMNS = 4
DPI = 90


def histogram_png(groups: dict[str, pd.DataFrame], metrics: list[str], panel_inches: tuple[float, float],
                  bins: int) -> bytes:
    """Each metric's values in each group (non-numeric and missing values left out)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI, pods, cron
    import matplotlib.pyplot as plt

    columns = max(1, min(PANEL_COLUMNS, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(panel_inches[0] * columns, panel_inches[1] * rows),
                                squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label, frame in groups.items():
            values = pd.to_numeric(frame[metric], errors="coerce").dropna() if metric in frame else []
            if len(values):
                ax.hist(values, bins=bins, alpha=0.5, label=label)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()
