"""The render job's Ray Data plan: the asset stage stays its own CPU operator beside the render actors, the
CPU reservations of actors and stages add up to the cluster's cores, and each rendered row moves on alone."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import storage
from pipelines.render import (LOAD_CPUS, METRICS_CPUS, RECORD_ALONE_CPUS, RenderConfig, actor_resources,
                              render_dataset, run_render)
from pipelines.stages import state_uri, video_uri
from tests.pipelines.helpers import short_speech, write_jsonl


def optimized_operators(ds, capsys) -> list[str]:
    """The physical operators Ray Data executes for `ds` (after fusion), from `Dataset.explain()`."""
    capsys.readouterr()
    ds.explain()
    text = capsys.readouterr().out
    plan = text.split("-------- Physical Plan (Optimized) --------", 1)[1]
    return [line.lstrip("+- ").strip() for line in plan.splitlines() if line.strip()]


def plan_for(config: RenderConfig, cluster_cpus: float = 2.0):
    return render_dataset([{"row": 0}], config, checkpoint="unused", run_id="r", options=storage.StorageOptions(),
                          image_size=128, cluster_cpus=cluster_cpus)


@pytest.mark.parametrize("overrides", [
    {}, {"metrics": False}, {"actors": 2},
    # an explicit reservation equal to the asset stage's: the remote args Ray Data compares would match
    {"cpus_per_actor": LOAD_CPUS}, {"cpus_per_actor": 1.0, "metrics": False},
], ids=["default", "no-metrics", "two-actors", "cpus-equal-to-load", "one-cpu"])
def test_asset_stage_is_not_fused_into_the_render_actor(ray_local, tmp_path, capsys, overrides):
    """Regression: Ray Data fused `Map(load_assets)` into the `RenderActor` operator (same num_cpus), so image
    decode and face alignment ran inside the render worker and one of two cores idled."""
    operators = optimized_operators(plan_for(RenderConfig(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), **overrides)), capsys)
    actor = [op for op in operators if "RenderActor" in op]
    assert len(actor) == 1 and actor[0].startswith("ActorPoolMapOperator[") and "load_assets" not in actor[0], operators
    assert "TaskPoolMapOperator[Map(load_assets)]" in operators, operators


def test_actor_resources_leave_room_for_the_cpu_stages():
    def config(**kw):
        return RenderConfig("m.jsonl", "out", **kw)

    # 2 cores, no metrics: one actor renders on both cores and reserves what the asset and record tasks leave
    assert actor_resources(config(metrics=False), 2.0) == (2.0 - LOAD_CPUS - RECORD_ALONE_CPUS, 2)
    # with metrics a core goes to measuring: one render thread
    cpus, threads = actor_resources(config(), 2.0)
    assert threads == 1 and cpus + LOAD_CPUS + METRICS_CPUS == pytest.approx(2.0)
    # actors share the cores
    cpus, threads = actor_resources(config(actors=2, metrics=False), 2.0)
    assert threads == 1 and 2 * cpus + LOAD_CPUS + RECORD_ALONE_CPUS == pytest.approx(2.0)
    assert actor_resources(config(actors=4, metrics=False), 16.0) == ((16.0 - 0.5) / 4, 4)
    # an actor fits on one node: three 1-CPU nodes give it what one node leaves, and one thread
    assert actor_resources(config(metrics=False), 3.0, node_cpus=1.0) == (1.0 - LOAD_CPUS, 1)
    # a single node of 2 cores: the same as without the node's size
    assert actor_resources(config(metrics=False), 2.0, node_cpus=2.0) == actor_resources(config(metrics=False), 2.0)
    # GPU actors and explicit reservations
    assert actor_resources(config(gpus_per_actor=1.0), 8.0) == (1.0, 1)
    assert actor_resources(config(cpus_per_actor=3.5), 8.0) == (3.5, 3)
    assert actor_resources(config(cpus_per_actor=0.5), 8.0) == (0.5, 1)


def test_cpus_per_actor_must_be_positive():
    with pytest.raises(ValueError, match="cpus_per_actor must be > 0"):
        RenderConfig("m.jsonl", "out", cpus_per_actor=0)


def test_a_render_job_executes_the_asset_stage_apart(ray_local, tmp_path, astronaut_png, speech_wav):
    """The plan Ray Data logs when it starts the real job names the asset stage and the actor as two operators."""
    speech = short_speech(speech_wav, tmp_path / "speech.wav", 0.4)
    portrait = shutil.copy(astronaut_png, tmp_path)  # inside the manifest's folder: the input policy's root
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [{"id": "a", "portrait": str(portrait), "audio": str(speech)}])
    plans: list[str] = []

    class Plans(logging.Handler):
        def emit(self, record):
            if "Execution plan of Dataset" in record.getMessage():
                plans.append(record.getMessage())

    handler = Plans()
    # the executor's own logger: Ray Data replaces the handlers of "ray.data" when it configures its logging
    logger = logging.getLogger("ray.data._internal.execution.streaming_executor")
    logger.addHandler(handler)
    try:
        outcome = run_render(RenderConfig(str(manifest), str(tmp_path / "out"), metrics=False, framing="crop",
                                          tracking_uri=f"sqlite:///{tmp_path}/ml.db"))
    finally:
        logger.removeHandler(handler)
    assert outcome.counts["ok"] == 1, outcome.results.to_dict("records")
    assert len(plans) == 1, plans
    assert "TaskPoolMapOperator[Map(load_assets)] -> ActorPoolMapOperator[MapBatches(RenderActor)]" in plans[0], plans[0]


def test_a_rendered_row_is_recorded_while_its_calls_longer_row_still_renders(ray_local, tmp_path, astronaut_png,
                                                                              speech_wav):
    """Regression: the rows an actor call yielded stayed in one Ray Data block until the call ended, so the
    state record of a 0.4 s row waited for the 10 s row rendered after it in the same call (one slot, shortest
    first). Each yielded row is a block of its own now: its record is written before the long video is out."""
    portrait = shutil.copy(astronaut_png, tmp_path)
    short = short_speech(speech_wav, tmp_path / "short.wav", 0.4)
    long = short_speech(speech_wav, tmp_path / "long.wav", 10.0)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [{"id": "long", "portrait": str(portrait), "audio": str(long)},
                                                         {"id": "short", "portrait": str(portrait), "audio": str(short)}])
    out = str(tmp_path / "out")
    outcome = run_render(RenderConfig(str(manifest), out, run_id="r", metrics=False, framing="crop",
                                      rows_per_batch=1, tracking_uri=f"sqlite:///{tmp_path}/ml.db"))
    assert outcome.counts["ok"] == 2, outcome.results.to_dict("records")
    short_recorded = Path(state_uri(out, "r", "short")).stat().st_mtime
    long_published = Path(video_uri(out, "r", "long")).stat().st_mtime
    assert short_recorded < long_published, (short_recorded, long_published)
