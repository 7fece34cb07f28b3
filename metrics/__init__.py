"""Per-video quality metrics (sync, identity, control adherence, motion, image quality, reference and learned
metrics), the results schema, run aggregates and run comparison.

`compute_video_metrics` is imported lazily so that `metrics.schema` stays cheap (no dlib/OpenCV).
"""

from __future__ import annotations

__all__ = ["compute_video_metrics"]


def __getattr__(name: str):
    if name == "compute_video_metrics":
        from .video import compute_video_metrics

        return compute_video_metrics
    raise AttributeError(name)
