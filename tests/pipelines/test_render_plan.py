"""The render job's Ray Data plan: every stage is its own actor operator (the asset stage beside the render
actors, not inside them), the CPU reservations of actors and stages add up to the cluster's cores, and each
rendered row moves on alone."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import storage
from pipelines.render import (LOAD_CPUS, METRICS_CPUS, RECORD_CPUS, RENDER_ROWS_PER_SLOT, RenderConfig,
                              actor_layout, render_dataset, run_render)
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
    return render_dataset([{"row": 0}], config, actor_layout(config, cluster_cpus, rows=1), checkpoint="unused",
                          run_id="r", options=storage.StorageOptions(), image_size=128)


@pytest.mark.parametrize("overrides", [
    {}, {"metrics": False}, {"actors": 2},
    # an explicit reservation equal to the asset stage's: the remote args Ray Data compares would match
    {"cpus_per_actor": LOAD_CPUS}, {"cpus_per_actor": 1.0, "metrics": False},
], ids=["default", "no-metrics", "two-actors", "cpus-equal-to-load", "one-cpu"])
def test_asset_stage_is_not_fused_into_the_render_actor(ray_local, tmp_path, capsys, overrides):
    """Regression: Ray Data fused the asset tasks into the `RenderActor` operator (same num_cpus), so image
    decode and face alignment ran inside the render worker and one of two cores idled. The small stages are
    actor operators of their own (StageActor), which never start a worker process per row."""
    config = RenderConfig(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), **overrides)
    operators = optimized_operators(plan_for(config), capsys)
    actor = [op for op in operators if "RenderActor" in op]
    assert len(actor) == 1 and actor[0].startswith("ActorPoolMapOperator[") and "AssetLoader" not in actor[0], operators
    stages = ["AssetLoader", "Measurer", "Recorder"] if config.metrics else ["AssetLoader", "Recorder"]
    for stage in stages:
        assert f"ActorPoolMapOperator[Map({stage})]" in operators, operators
    assert not [op for op in operators if op.startswith("TaskPoolMapOperator")], operators


def test_cpu_actors_reserve_what_the_cpu_stages_leave_and_share_the_cores():
    def layout(cluster_cpus, node_cpus=None, rows=None, **kw):
        got = actor_layout(RenderConfig("m.jsonl", "out", **kw), cluster_cpus, node_cpus, rows)
        return got.actors, got.cpus, got.threads

    # 2 cores, no metrics: one 1-thread actor per core, reserving what the asset and record actors leave
    actors, cpus, threads = layout(2.0, metrics=False)
    assert (actors, threads) == (2, 1) and 2 * cpus + LOAD_CPUS + RECORD_CPUS == pytest.approx(2.0)
    # with metrics a core goes to measuring: one actor, one thread
    actors, cpus, threads = layout(2.0)
    assert (actors, threads) == (1, 1) and cpus + LOAD_CPUS + RECORD_CPUS + METRICS_CPUS == pytest.approx(2.0)
    assert layout(16.0, metrics=False) == (16, (16.0 - 0.5) / 16, 1)
    # an explicit count shares the cores out as threads
    assert layout(2.0, actors=1, metrics=False) == (1, 2.0 - LOAD_CPUS - RECORD_CPUS, 2)
    assert layout(16.0, actors=4, metrics=False) == (4, (16.0 - 0.5) / 4, 4)
    # an actor fits on one node: three 1-CPU nodes give it what one node leaves, and one thread
    assert layout(3.0, node_cpus=1.0, actors=1, metrics=False) == (1, 1.0 - LOAD_CPUS, 1)
    assert layout(2.0, node_cpus=2.0, metrics=False) == layout(2.0, metrics=False)
    # GPU actors and explicit reservations
    assert layout(8.0, gpus_per_actor=1.0) == (1, 1.0, 1)
    assert layout(8.0, cpus_per_actor=3.5) == (1, 3.5, 3)  # as many as fit beside the stages
    assert layout(8.0, cpus_per_actor=0.5) == (7, 0.5, 1)  # one per rendering core


def test_a_small_job_starts_no_more_actors_than_its_rows_fill_and_splits_its_rows_between_them():
    def layout(rows, cluster_cpus=16.0, **kw):
        got = actor_layout(RenderConfig("m.jsonl", "out", metrics=False, rows_per_batch=4, **kw), cluster_cpus, rows=rows)
        return got.actors, got.threads, got.rows_per_call

    assert layout(3) == (1, 16, 4)  # one call's slots: one actor on every core
    assert layout(32, cluster_cpus=2.0) == (2, 1, 8)  # two calls for each actor
    assert layout(16, cluster_cpus=2.0) == (2, 1, 4)  # never under a row per slot
    assert layout(10) == (3, 5, 4)
    assert layout(10_000) == (16, 1, 4 * RENDER_ROWS_PER_SLOT)  # a long job: full calls
    assert layout(64, actors=1, cluster_cpus=2.0) == (1, 2, 16)
    assert layout(8, actors=1, cluster_cpus=2.0) == (1, 2, 8)  # a lone actor: one call, shortest rows first


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
    assert ("ActorPoolMapOperator[Map(AssetLoader)] -> ActorPoolMapOperator[MapBatches(RenderActor)] -> "
            "ActorPoolMapOperator[Map(Recorder)]") in plans[0], plans[0]


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
                                      actors=1, rows_per_batch=1, tracking_uri=f"sqlite:///{tmp_path}/ml.db"))
    assert outcome.counts["ok"] == 2, outcome.results.to_dict("records")
    short_recorded = Path(state_uri(out, "r", "short")).stat().st_mtime
    long_published = Path(video_uri(out, "r", "long")).stat().st_mtime
    assert short_recorded < long_published, (short_recorded, long_published)
