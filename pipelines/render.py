"""The render job as a library: manifest -> Ray Data -> generator actors -> MP4s + results Parquet -> MLflow.

`run_render(RenderConfig(...))` is what `eartalk render` / `python -m jobs.render` and the nightly call.
Outputs under `output_uri`:

    videos/<run_id>/<id>.mp4     H.264 yuv420p + AAC of the input speech, published only when complete
    state/<run_id>/<id>.json     a row's final result, published once, after its video (resume reads these)
    results/<run_id>.parquet     one row per manifest row (ok / failed / skipped), metrics.schema columns
    leases/<run_id>.json         the running driver's lease: actors publish only while it is renewed (lease.py)

Everything a run writes is keyed by its run id, so two jobs on one output with overlapping row ids never
overwrite each other's videos: each results table describes its own job's files.

Re-running with the same run id skips rows whose video and state record exist (status 'skipped',
previous figures kept). The resume scan reads the run's results file from its last attempt (one GET) and
looks up state/<run_id>/ only for the rows that file does not hold as done (`published_results`).
SIGINT or SIGTERM (Ctrl-C, `ray job stop`, Kubernetes) stops the job taking rows: the rows that finished are
recorded, the rest fail with "interrupted", the MLflow run ends KILLED and the exit code is 128 + the signal,
so a rerun with the same run id finishes the job. Every side effect goes to a deterministic key, so Ray's task retries and actor
restarts can only overwrite an output with an identical one, never duplicate it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import posixpath
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import storage
from metrics.schema import SchemaError, results_frame, validate_schema, write_results

from .inputs import LIMITS, InputError, InputPolicy, probe_local
from .lease import DriverLease
from .manifest import FRAMINGS, SAFE_ID, ManifestError, ManifestRow, read_manifest, validate_rows
from .stages import (HEAVY_COLUMNS, STATE_DIR, VIDEO_DIR, AssetLoader, Measurer, Recorder, RenderActor, measure_saved,
                     video_uri)

log = logging.getLogger("eartalk.render")

# ---- tunables
ROWS_PER_RENDER_BATCH = 4  # videos one render actor streams at once (its slots): keeps a device busy, bounds memory
RENDER_ROWS_PER_SLOT = 4  # rows per actor call for each slot: a slot whose video ends takes the call's next row
# with several actors, a small job's rows are cut into at least this many calls per actor: a call starts once
# all its rows are loaded, and when one actor's last call ends, the others' last calls are what remains of
# the job. A lone actor takes a small job in one call, whose slots start the shortest rows first.
MIN_CALLS_PER_ACTOR = 2
# Ray Data cuts an operator's output into a block once it passes this many bytes. Below one row's size, every
# row the actor yields is a block of its own and goes on to the metrics and record stages at once; at Ray's
# default (128 MiB) a call's rows would wait in one block until its last video ends.
ROW_BLOCK_BYTES = 1
# CPUs a render actor reserves. None: CPU actors share the cluster's CPUs that the CPU stages do not reserve
# and run the rendering cores over the actors as torch threads (actor_layout); GPU actors take GPU_ACTOR_CPUS.
RENDER_CPUS_PER_ACTOR: float | None = None
GPU_ACTOR_CPUS = 1.0  # beside the device: frame conversion, compositing and the MP4 encode
MIN_ACTOR_CPUS = 0.1  # the smallest reservation of a CPU actor when the stages leave less per actor
# Image decode + face alignment + audio resample per row: about 5 % of a row's render time on a CPU. A fraction
# of a core, so the asset actors are scheduled beside render actors that reserve the cores' remainder.
LOAD_CPUS = 0.25
# Each small stage runs on a pool of StageActor (pipelines/stages.py) from one actor, reserved by actor_layout,
# to this many per render actor, started where CPUs are free (a GPU render actor outruns one asset loader).
STAGE_ACTORS_PER_RENDER_ACTOR = 2
MAX_SIDE = 1024  # px: default longest side of a `portrait`-framed video (faces.composite)
METRICS_CPUS = 1  # landmarking a video is single-threaded dlib
RECORD_CPUS = 0.25  # one small upload per row: a fraction of a core, like the asset stage
EXPERIMENT = "eartalk-render"
STORE_ATTEMPTS = 3  # writes of the results table before the job falls back to a local copy
STORE_BACKOFF_S = 2.0  # first wait between them, doubled each time (s3fs retries each attempt itself too)
# resume: rows the results file leaves open, up to this many, are looked up key by key (2 concurrent GETs each);
# more, and state/ and videos/ are listed (1,000 keys a request, one page after another). On a loopback moto S3
# under load, 2,000 GETs took 53 s and listing both prefixes of a 20,000-row run 43 s: the two cost alike
# near 1,000 rows left open per 20,000 listed, and 500 keeps the lookups the cheaper side of that
RESUME_PROBE_ROWS = 500


class ConfigError(ValueError):
    """A usage or configuration problem: exit code 2."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; `ray job stop`, Kubernetes and systemd send SIGTERM


class JobInterrupted(KeyboardInterrupt):
    """A stop signal reached the driver while it waited on the pipeline (a KeyboardInterrupt, as Ray Data
    expects of Ctrl-C, so its executor shuts down cleanly)."""


class StopSignals:
    """Context manager: SIGINT / SIGTERM stop the job instead of killing the driver.

    The first signal is remembered (`signum`) and, while `armed` (the driver waiting on the pipeline), raises
    JobInterrupted there; later ones are logged and ignored, so the results and the MLflow run of the rows
    that finished are still written. Signal handlers can only be set from the main thread; elsewhere (a
    library caller's worker thread) this is a no-op and signals keep their own handling.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        """(Re)install the handlers: ray.init installs its own SIGTERM handler (sys.exit), so call again after it."""
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                previous = signal.signal(s, self.handle)
                self.previous.setdefault(s, previous)

    def handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("%s again: still recording the rows that finished; the job ends once they are written", name)
            return
        self.signum = signum
        log.warning("%s: taking no more rows; recording the rows that finished", name)
        if self.armed:
            raise JobInterrupted(name)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self.previous.items():
            signal.signal(s, previous)


@dataclass
class RenderConfig:
    manifest_uri: str
    output_uri: str
    run_id: str | None = None  # default: a new id; reuse one to resume
    checkpoint: str | None = None  # default: the shipped tiny checkpoint
    actors: int | None = None  # None: one per core for CPU actors, one for GPU actors (actor_layout)
    gpus_per_actor: float = 0.0
    tracking_uri: str | None = None  # MLflow; default: sqlite:///mlflow.db
    max_failed_fraction: float = 0.0
    s3_endpoint: str | None = None  # default: $AWS_ENDPOINT_URL
    metrics: bool = True
    experiment: str = EXPERIMENT
    rows_per_batch: int = ROWS_PER_RENDER_BATCH
    cpus_per_actor: float | None = RENDER_CPUS_PER_ACTOR  # None: actor_layout decides
    mlflow_tags: dict[str, str] = field(default_factory=dict)
    # input policy (pipelines/inputs.py): roots besides the manifest's folder, schemes besides local and s3
    allowed_roots: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ()
    framing: str = "portrait"  # rows without a `framing` cell: the whole portrait, or "crop" (the model's crop alone)
    max_side: int = MAX_SIDE  # px: longest side of a portrait-framed video (smaller portraits keep their size)
    max_seconds: float | None = None  # s: a row whose speech is longer fails before it is rendered (None: no cap)

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise ConfigError(f"--framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if isinstance(self.max_side, bool) or not isinstance(self.max_side, int) or self.max_side < 16:
            raise ConfigError(f"--max-side must be an integer of at least 16 (px), got {self.max_side!r}")
        if self.max_seconds is not None and (isinstance(self.max_seconds, bool)
                                             or not isinstance(self.max_seconds, (int, float))
                                             or not 0 < self.max_seconds < math.inf):
            raise ConfigError(f"--max-seconds must be a positive number of seconds, got {self.max_seconds!r}")
        if self.run_id is not None and (not SAFE_ID.match(self.run_id) or ".." in self.run_id):
            # it names state/<run_id>/ and results/<run_id>.parquet: a separator or '..' would leave --output
            raise ConfigError(f"--run-id {self.run_id!r}: use letters, digits, '.', '_', '-' only (no path "
                              "separators or '..'), starting with a letter or digit, at most 128 characters")
        if self.actors is not None and (isinstance(self.actors, bool) or not isinstance(self.actors, int)
                                        or self.actors < 1):
            raise ConfigError(f"--actors must be an integer >= 1, got {self.actors!r}")
        if self.gpus_per_actor < 0:
            raise ConfigError("--gpus-per-actor must be >= 0")
        if self.cpus_per_actor is not None and not self.cpus_per_actor > 0:
            raise ConfigError(f"cpus_per_actor must be > 0 (or None: shared out by the job), got {self.cpus_per_actor!r}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ConfigError("--max-failed-fraction must be within [0, 1]")
        self.input_policy()  # a malformed --allow-scheme is a usage error now, not after the checkpoint is read

    def input_policy(self) -> InputPolicy:
        try:
            return InputPolicy.for_manifest(self.manifest_uri, self.allowed_roots, self.allowed_schemes)
        except InputError as e:
            raise ConfigError(str(e)) from None


@dataclass
class RenderOutcome:
    run_id: str
    results_uri: str
    counts: dict[str, int]
    frames: int
    wall_s: float
    exit_code: int
    mlflow_run_id: str | None
    results: pd.DataFrame = field(repr=False)
    stage_s: dict[str, float] = field(default_factory=dict)  # summed seconds per stage
    interrupted: str | None = None  # the stop signal's name (SIGINT, SIGTERM) when one ended the job early
    store_error: str | None = None  # why the results table is a local copy (the output store was unreachable)

    def summary_table(self) -> str:
        df = self.results
        lines = [f"{'id':<24} {'status':<8} {'frames':>6} {'render_s':>8}  error"]
        for r in df.itertuples():
            frames = "" if pd.isna(r.frames) else int(r.frames)
            render = "" if pd.isna(r.render_s) else f"{r.render_s:.2f}"
            lines.append(f"{str(r.id)[:24]:<24} {r.status:<8} {frames:>6} {render:>8}  {(r.error or '')[:100]}")
        c = self.counts
        lines.append(f"run {self.run_id}: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped, "
                     f"{self.frames} frames in {self.wall_s:.1f}s -> {self.results_uri}")
        return "\n".join(lines)


def with_retries(action, what: str):
    """`action()`, tried STORE_ATTEMPTS times with doubling waits: an object store's brief outage passes."""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return action()
        except Exception as e:
            if attempt == STORE_ATTEMPTS:
                raise
            wait = STORE_BACKOFF_S * 2 ** (attempt - 1)
            log.warning("%s failed (%s: %s); retrying in %.0f s", what, type(e).__name__, e, wait)
            time.sleep(wait)


def model_package() -> Path:
    """The `model` package's folder, found without running its `__init__.py` (it imports torch)."""
    return Path(next(iter(importlib.util.find_spec("model").submodule_search_locations)))


def default_checkpoint() -> Path:
    """model.DEFAULT_CHECKPOINT, without importing `model`."""
    return model_package() / "checkpoints" / "tiny"


def resolve_checkpoint(checkpoint: str | None) -> str:
    if checkpoint:
        return checkpoint
    default = default_checkpoint()
    if not (default / WEIGHTS_FILE).is_file():
        raise ConfigError(f"no --checkpoint given and the shipped default checkpoint is missing at {default}")
    return str(default)


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def listed_names(fs, path: str, suffix: str) -> set[str]:
    """Names ending in `suffix` in one folder of `fs`, from one listing (paged on S3).

    The listing cache is dropped first: s3fs keeps listings per filesystem instance, and fsspec hands every
    caller with the same options the same instance, so a cached listing would miss what this run published.
    Temporaries of a publish in progress (`.tmp-*`) are not results yet.
    """
    fs.invalidate_cache(path)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return set()
    found = {posixpath.basename(n.rstrip("/")) for n in names}
    return {n for n in found if n.endswith(suffix) and not n.startswith(".tmp-")}


def published_results(output_uri: str, run_id: str, ids, options, use_results: bool = True) -> dict[str, dict]:
    """Rows of run `run_id` among row ids `ids` that are done (video and state record published), by row id.

    The results file an earlier attempt of this run wrote (`results/<run_id>.parquet`, one GET) answers for
    the rows it holds as finished and measured (`tabled_results`): it was written after their videos and
    records, and nothing a job does removes them. The rows it does not answer for (not in it, not ok there,
    never measured, or no such file: a SIGKILLed first attempt) are looked up in state/<run_id>/
    (`recorded_results`). `use_results=False` skips the file, for rows this attempt rendered itself.
    """
    wanted = list(dict.fromkeys(ids))
    done = tabled_results(output_uri, run_id, wanted, options) if use_results else {}
    rest = [i for i in wanted if i not in done]
    if rest:
        done.update(recorded_results(output_uri, run_id, rest, options))
    return done


def tabled_results(output_uri: str, run_id: str, ids, options) -> dict[str, dict]:
    """Rows among `ids` that the results file of an earlier attempt of this run holds as done: status ok (or
    skipped, a still earlier attempt's ok row), measured (metrics_error empty: a row never measured keeps its
    state record, which says so, for the resume to measure it) and with this run's video key. By row id.

    No file is no answer; an unreadable one is logged and ignored: the state records still answer.
    """
    uri = storage.join(output_uri, "results", f"{run_id}.parquet")
    fs, path = storage.filesystem(uri, options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return {}
    try:
        table = pq.read_table(io.BytesIO(data))
        validate_schema(table.schema, uri)
    except (pa.ArrowException, SchemaError, OSError) as e:
        log.warning("resume: %s is unreadable (%s); reading the state records instead", uri, e)
        return {}
    wanted = set(ids)
    done = {}
    for saved in table.to_pylist():
        row_id = saved.get("id")
        if (row_id in wanted and saved.get("status") in ("ok", "skipped") and saved.get("metrics_error") == ""
                and saved.get("output_uri") == video_uri(output_uri, run_id, row_id)):
            done[row_id] = {**saved, "status": "ok", "error": ""}
    return done


def recorded_results(output_uri: str, run_id: str, ids, options) -> dict[str, dict]:
    """State records (ok) of run `run_id` among row ids `ids` whose video exists too, by row id.

    Up to RESUME_PROBE_ROWS rows are looked up key by key: their records read in one `cat` and their videos'
    first byte in one `cat_ranges` (s3fs sends each batch's requests concurrently). More rows, and the two
    prefixes are listed once each instead (a listing pages 1,000 keys a request), then the matching records
    read in one `cat`.
    """
    state_fs, state_dir = storage.filesystem(storage.join(output_uri, STATE_DIR, run_id), options)
    video_fs, video_dir = storage.filesystem(storage.join(output_uri, VIDEO_DIR, run_id), options)
    if len(ids) <= RESUME_PROBE_ROWS:
        ready = list(ids)
    else:
        states = listed_names(state_fs, state_dir, ".json")
        videos = listed_names(video_fs, video_dir, ".mp4")
        wanted = set(ids)
        ready = [i for i in (n.removesuffix(".json") for n in states) if i in wanted and f"{i}.mp4" in videos]
    if not ready:
        return {}
    paths = [posixpath.join(state_dir, f"{i}.json") for i in ready]
    data = {state_fs._strip_protocol(k): v for k, v in state_fs.cat(paths, on_error="omit").items()}
    done = {}
    for row_id, path in zip(ready, paths):
        raw = data.get(state_fs._strip_protocol(path))  # a record missing (or removed meanwhile) is not done
        if raw is not None and (saved := json.loads(raw)).get("status") == "ok":
            done[row_id] = saved
    if len(ids) <= RESUME_PROBE_ROWS and done:  # not listed: the videos are looked up too
        found = video_fs.cat_ranges([posixpath.join(video_dir, f"{i}.mp4") for i in done], 0, 1, on_error="return")
        for row_id, head in zip(list(done), found):
            if isinstance(head, BaseException):  # FileNotFoundError: the video is gone, so the row is not done
                del done[row_id]
    return done


def previous_results(rows, config: RenderConfig, run_id: str, options) -> dict[str, dict]:
    """Rows of this run id already published (video + state record): resume skips them."""
    return published_results(config.output_uri, run_id, [r.id for r in rows], options)


@dataclass(frozen=True)
class ActorLayout:
    """How a job's rendering is laid out over the cluster: its actors, what each reserves and runs, and how many
    rows each actor call takes."""

    actors: int
    cpus: float  # each actor's CPU reservation
    threads: int  # each actor's torch threads
    rows_per_call: int  # rows Ray Data hands an actor at once (its slots take them in turn)


def actor_layout(config: RenderConfig, cluster_cpus: float, node_cpus: float | None = None,
                 rows: int | None = None) -> ActorLayout:
    """The render actors of a job of `rows` rows (None: unknown, as many as the cores allow) on a cluster.

    Actors: `config.actors` when given. Otherwise GPU actors start one (more: --actors). CPU actors start one
    per core that rendering gets (the cores less one for the metrics when they run), and no more than the
    rows fill calls of `rows_per_batch`: for a small model, processes that each step their own slots on one
    thread render more frames per core than one process whose step is split over threads, because each step's
    Python and small operators run on one core (benchmarks/pipeline.py: two 1-thread processes on 2 cores
    31 frames/s against 25 for one 2-thread process).

    Reservations: an explicit `cpus_per_actor` is taken as it is, with Ray's own thread count (its floor, at
    least 1). GPU actors reserve GPU_ACTOR_CPUS and one thread. CPU actors reserve an equal share of the CPUs
    the first actor of each CPU stage leaves (LOAD_CPUS, RECORD_CPUS, and METRICS_CPUS with metrics): Ray
    schedules fractions, so the asset and record actors always find room beside them, and the small CPU stages
    take the moments between frame steps. Their threads are the rendering cores over the actors.

    Rows per call: a call holds up to `rows_per_batch x RENDER_ROWS_PER_SLOT` rows (its slots refill from
    them), fewer in a small job on several actors, so that each gets MIN_CALLS_PER_ACTOR calls (never under
    one row per slot).
    """
    slots = config.rows_per_batch
    render_cores = max(1.0, cluster_cpus - (METRICS_CPUS if config.metrics else 0))
    stages = LOAD_CPUS + RECORD_CPUS + (METRICS_CPUS if config.metrics else 0)
    if config.actors is not None:
        actors = config.actors
    elif config.gpus_per_actor:
        actors = 1
    else:
        actors = max(1, math.floor(render_cores))
        if config.cpus_per_actor is not None:  # as many as the reservations fit, at their threads each
            fit = math.floor((cluster_cpus - stages) / config.cpus_per_actor)
            actors = max(1, min(fit, math.floor(render_cores / max(1, math.floor(config.cpus_per_actor)))))
        if rows is not None:
            actors = max(1, min(actors, math.ceil(rows / slots)))
    if config.cpus_per_actor is not None:
        cpus, threads = config.cpus_per_actor, max(1, math.floor(config.cpus_per_actor))
    elif config.gpus_per_actor:
        cpus, threads = GPU_ACTOR_CPUS, 1
    else:
        cpus = max(MIN_ACTOR_CPUS, (cluster_cpus - stages) / actors)
        threads = max(1, math.floor(render_cores / actors))
        if node_cpus is not None:  # an actor lives on one node: a share beyond the largest node's would never start
            cpus = max(MIN_ACTOR_CPUS, min(cpus, node_cpus - LOAD_CPUS))
            threads = min(threads, max(1, math.floor(node_cpus)))  # nor can it use more cores than that node has
    rows_per_call = slots * RENDER_ROWS_PER_SLOT
    if rows is not None:
        calls = actors * (MIN_CALLS_PER_ACTOR if actors > 1 else 1)
        rows_per_call = max(slots, min(rows_per_call, math.ceil(rows / calls)))
    return ActorLayout(actors, cpus, threads, rows_per_call)


def render_dataset(items: list[dict], config: RenderConfig, layout: ActorLayout, *, checkpoint: str, run_id: str,
                   options: storage.StorageOptions, image_size: int, lease_holder: str | None = None):
    """The render job's Ray Data plan over `items` (manifest rows as dicts) with the actors of `layout`, not
    yet executed. With `lease_holder` (the driver's DriverLease), the actors publish only while that lease is
    renewed."""
    import ray

    ds = ray.data.from_items(items)
    ds.context.target_max_block_size = ROW_BLOCK_BYTES  # this dataset's own context (from_items copied it)
    # each small stage: one actor reserved by the layout, more where CPUs are free (STAGE_ACTORS_PER_RENDER_ACTOR)
    stage_pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, STAGE_ACTORS_PER_RENDER_ACTOR * layout.actors))
    # INPUT: manifest rows. OUTPUT: + aligned portrait / audio / controls bytes, status, error. 1:1.
    # CPU actors of their own: decode and face alignment are per-row CPU work that must not stall the generators.
    ds = ds.map(AssetLoader, fn_constructor_kwargs={"image_size": image_size, "options": options,
                                                    "max_side": config.max_side, "max_seconds": config.max_seconds},
                compute=stage_pool, num_cpus=LOAD_CPUS)
    # INPUT: loaded rows. OUTPUT: result columns (+ controls_json; portrait and audio dropped); MP4s
    # published by the actor.
    # One generator per actor (loaded once), continuous batching: rows_per_batch slots stream at once, each
    # refilled from the call's rows the moment its video ends; each row is yielded as soon as it is published.
    # The actor's runtime_env sets its torch threads (Ray would set the floor of its fractional CPUs). Ray Data
    # never fuses two actor operators, so decode and alignment run beside the render workers, not inside them
    # between batches (tests/pipelines/test_render_plan.py).
    ds = ds.map_batches(
        RenderActor,
        fn_constructor_kwargs={"checkpoint_uri": checkpoint, "output_uri": config.output_uri, "run_id": run_id,
                               "options": options, "lease_holder": lease_holder,
                               "slots": config.rows_per_batch},
        batch_size=layout.rows_per_call, batch_format="pandas",
        # one call in flight per actor: a call is many seconds of frames, so a second one queued on the first
        # actor to start would wait there while another actor idles
        compute=ray.data.ActorPoolStrategy(size=layout.actors, max_tasks_in_flight_per_actor=1),
        num_gpus=config.gpus_per_actor or None,
        num_cpus=layout.cpus,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(layout.threads)}},
    )
    if config.metrics:
        # INPUT: result rows. OUTPUT: + metric columns. CPU actors; each reads the published MP4 back.
        ds = ds.map(Measurer, fn_constructor_kwargs={"options": options}, compute=stage_pool, num_cpus=METRICS_CPUS)
    # INPUT: result rows. OUTPUT: the same rows without stage inputs; each ok row's state record published.
    # Last, so that a row's record is written once and holds its final result (what resume trusts).
    ds = ds.map(Recorder, fn_constructor_kwargs={"options": options}, compute=stage_pool, num_cpus=RECORD_CPUS)
    return ds


def run_render(config: RenderConfig) -> RenderOutcome:
    """Render the manifest; a SIGINT / SIGTERM meanwhile ends the job early with its results recorded."""
    with StopSignals() as stop:
        return render_job(config, stop)


def render_job(config: RenderConfig, stop: StopSignals) -> RenderOutcome:
    import ray

    started = time.perf_counter()
    options = storage.StorageOptions.from_env(config.s3_endpoint)
    checkpoint = resolve_checkpoint(config.checkpoint)
    run_id = config.run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    model_config, model_version = checkpoint_facts(checkpoint, options)
    try:
        manifest = read_manifest(config.manifest_uri, options)
        rows, failures = validate_rows(manifest, config.manifest_uri, config.input_policy())
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    tag_columns = sorted({k for r in rows for k in r.tags})
    try:
        done = previous_results(rows, config, run_id, options)
    except Exception as e:  # s3fs / botocore raise many types for an endpoint that is down or refuses us
        raise ConfigError(f"output {config.output_uri} unreachable: {type(e).__name__}: {e}") from None
    todo = [r for r in rows if r.id not in done]

    log.info("run %s: %d rows (%d invalid, %d already done), checkpoint %s (%s)", run_id, len(manifest),
             len(failures), len(done), checkpoint, model_version)

    stage_s: dict[str, float] = {}
    rendered: list[dict] = []
    layout: ActorLayout | None = None  # none when nothing is left to render
    if todo and stop.signum is None:
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
            stop.install()  # ray.init replaced the SIGTERM handler with its own sys.exit
        items = [{**dataclasses.asdict(r), "tags": json.dumps(r.tags), "output_root": config.output_uri,
                  "controls": r.controls or "", "reference_video": r.reference_video or "",
                  "framing": r.framing or config.framing} for r in todo]
        # held while the actors may publish: an actor whose driver stops renewing it (killed) uploads nothing more
        lease = DriverLease(config.output_uri, run_id, options)
        layout = actor_layout(config, ray.cluster_resources().get("CPU", 1.0), rows=len(items),
                              node_cpus=max(n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]))
        log.info("%d render actors, each %.2f CPUs and %d torch threads, %d rows a call", layout.actors,
                 layout.cpus, layout.threads, layout.rows_per_call)
        ds = render_dataset(items, config, layout, checkpoint=checkpoint, run_id=run_id, options=options,
                            image_size=model_config.image_size, lease_holder=lease.holder)
        t0 = time.perf_counter()
        with lease:
            rows_out = iter(ds.iter_rows())  # a generator: close() below stops the pipeline
            try:
                stop.armed = stop.signum is None
                if stop.armed:
                    for r in rows_out:
                        rendered.append(r)
            except JobInterrupted:
                pass
            finally:
                stop.armed = False
                rows_out.close()  # shuts the streaming executor down: its actors take no more rows
        stage_s["pipeline"] = time.perf_counter() - t0
        for key in ("load_s", "render_s", "encode_s", "composite_s", "upload_s", "metrics_s"):
            # a batch of ok and failed rows holds NaN where a failed row has no figure: skip those
            stage_s[key.removesuffix("_s")] = float(sum(v for r in rendered if (v := r.get(key)) and not math.isnan(v)))

    # measuring sets metrics_error ("" when fine); a record keeps no stage inputs, so the manifest row gives them
    by_id = {r.id: r for r in rows}
    unmeasured = [{**saved, **measure_inputs(by_id[saved["id"]], config.output_uri, run_id)}
                  for saved in done.values() if "metrics_error" not in saved]
    if unmeasured and config.metrics and stop.signum is None:
        t0 = time.perf_counter()
        done.update(measure_published(unmeasured, options, stop))
        stage_s["remeasure"] = time.perf_counter() - t0
    for saved in done.values():
        if "metrics_error" not in saved:  # still unmeasured: say why its figures are null
            why = "interrupted" if stop.signum else "metrics are off (--no-metrics) for this run and the one that rendered it"
            saved["metrics_error"] = f"row {saved.get('row')} (id {saved.get('id')!r}): not measured: {why}"

    records = []
    by_row = {}
    for r in rendered:  # a retried task can only repeat a row: keep one record per manifest row
        by_row[r["row"]] = r
    if stop.signum is not None:
        # rows that finished (state record published) before the pipeline stopped, never returned to the driver
        missing = [r for r in todo if r.row not in by_row]
        try:
            finished = published_results(config.output_uri, run_id, [r.id for r in missing], options,
                                         use_results=False)  # this attempt's rows: the old results file predates them
        except Exception as e:  # the store is gone too: those rows count as interrupted, a rerun finds them
            log.warning("cannot list the rows that finished (%s: %s)", type(e).__name__, e)
            finished = {}
        for saved in finished.values():
            by_row[saved["row"]] = saved
    for r in by_row.values():
        tags = json.loads(r.pop("tags") or "{}")
        if r["status"] == "pending":
            r.update(status="failed", error=f"row {r['row']} (id {r['id']!r}): never rendered")
        records.append({**{k: v for k, v in r.items() if k not in HEAVY_COLUMNS}, **tags, "run_id": run_id})
    for r in todo:
        if r.row not in by_row:  # a stop signal came first (or, without one, the pipeline lost the row)
            cause = f"interrupted ({stop.name}) before it finished" if stop.signum else "never rendered"
            records.append({"row": r.row, "id": r.id, "status": "failed", "error": f"row {r.row} (id {r.id!r}): {cause}",
                            **r.tags, "run_id": run_id, "model_version": model_version})
    for r in rows:
        if r.id in done:
            records.append({**done[r.id], **r.tags, "status": "skipped", "error": "", "run_id": run_id, "row": r.row})
    for f in failures:
        records.append({"row": f.row, "id": f.id, "status": "failed", "error": f.error, "run_id": run_id,
                        "model_version": model_version})
    records.sort(key=lambda rec: rec["row"])
    results = results_frame(records, tag_columns)
    results_uri = storage.join(config.output_uri, "results", f"{run_id}.parquet")
    store_error = None
    try:
        with_retries(lambda: write_results(results, results_uri, options), f"writing {results_uri}")
    except Exception as e:  # the output store is unreachable: keep the results here and say where
        local = Path(tempfile.gettempdir()) / f"eartalk-results-{run_id}.parquet"
        write_results(results, str(local))
        store_error = (f"the results could not be written to {results_uri} ({type(e).__name__}: {e}); "
                       f"a local copy is at {local}")
        log.error(store_error)
        results_uri = str(local)

    counts = {s: int((results["status"] == s).sum()) for s in ("ok", "failed", "skipped")}
    frames = int(results.loc[results["status"] == "ok", "frames"].fillna(0).sum())
    wall_s = time.perf_counter() - started
    failed_fraction = counts["failed"] / max(1, len(results))
    exit_code = 1 if failed_fraction > config.max_failed_fraction else 0
    if store_error:
        exit_code = 1
    if stop.signum is not None:
        exit_code = 128 + stop.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    mlflow_run_id = log_to_mlflow(config, run_id, checkpoint, model_config, model_version, results, results_uri, counts,
                                  frames, wall_s, stage_s, layout, stop.name, store_error)
    return RenderOutcome(run_id, results_uri, counts, frames, wall_s, exit_code, mlflow_run_id, results, stage_s,
                         stop.name, store_error)


def measure_inputs(row: ManifestRow, output_uri: str, run_id: str) -> dict:
    """What measuring and recording a published video read besides its state record: the row's inputs."""
    return {"row": row.row, "portrait": row.portrait, "controls": row.controls or "",
            "reference_video": row.reference_video or "", "output_root": output_uri, "run_id": run_id}


def measure_published(saved: list[dict], options: storage.StorageOptions, stop: StopSignals) -> dict[str, dict]:
    """State records of published videos never measured (an earlier run had metrics off), measured now on Ray;
    their records are republished with the figures. By row id; rows a stop signal cut off are left out."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
        stop.install()
    ds = ray.data.from_items([{"record": json.dumps(s, default=str)} for s in saved])
    # INPUT: a saved record (JSON). OUTPUT: the record with metric columns, republished. CPU tasks, as `measure`.
    ds = ds.map(measure_saved, fn_kwargs={"options": options}, num_cpus=METRICS_CPUS)
    measured = {}
    rows_out = iter(ds.iter_rows())
    try:
        stop.armed = stop.signum is None
        if stop.armed:
            for item in rows_out:
                r = json.loads(item["record"])
                measured[r["id"]] = r
    except JobInterrupted:
        pass
    finally:
        stop.armed = False
        rows_out.close()
    return measured


@dataclass
class RenderPlan:
    """What `run_render` would do with each row (`plan_render`): nothing is fetched or rendered."""

    run_id: str
    model_version: str
    rows: list[dict]  # {"row", "id", "action": "render" | "skip" | "fail", "error"}, in manifest order
    counts: dict[str, int]  # action -> rows
    exit_code: int  # 1 when the rows that would fail exceed max_failed_fraction, as run_render's would


def plan_render(config: RenderConfig) -> RenderPlan:
    """A dry run: the checkpoint's header, the manifest, the input policy and the resume state checked as
    `run_render` checks them, and each local input stat-ed (missing, not a regular file, over its limit);
    remote inputs are not probed (a stat per object would make a dry run of 20,000 rows slow). No Ray."""
    options = storage.StorageOptions.from_env(config.s3_endpoint)
    checkpoint = resolve_checkpoint(config.checkpoint)
    _, model_version = checkpoint_facts(checkpoint, options)
    try:
        rows, failures = validate_rows(read_manifest(config.manifest_uri, options), config.manifest_uri,
                                       config.input_policy())
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    done = previous_results(rows, config, config.run_id, options) if config.run_id else {}
    entries = [{"row": f.row, "id": f.id, "action": "fail", "error": f.error} for f in failures]
    for r in rows:
        problems = []
        for column, limit in LIMITS.items():
            uri = getattr(r, column)
            if r.id not in done and uri and not storage.is_remote(uri):
                try:
                    probe_local(uri, limit)
                except FileNotFoundError:
                    problems.append(f"{column}: file not found")
                except (InputError, OSError) as e:
                    problems.append(f"{column}: {e}")
        action = "skip" if r.id in done else "fail" if problems else "render"
        error = f"row {r.row} (id {r.id!r}): {'; '.join(problems)}" if problems else ""
        entries.append({"row": r.row, "id": r.id, "action": action, "error": error})
    entries.sort(key=lambda e: e["row"])
    counts = {a: sum(e["action"] == a for e in entries) for a in ("render", "skip", "fail")}
    exit_code = 1 if counts["fail"] / max(1, len(entries)) > config.max_failed_fraction else 0
    return RenderPlan(config.run_id or "(new)", model_version, entries, counts, exit_code)


@dataclass(frozen=True)
class CheckedConfig:
    """A checkpoint's GeneratorConfig, as the fields its config.json holds once checked against the weights.

    What the driver needs of it (the image size, the fields for the config hash) without building a
    GeneratorConfig: the `model` package imports torch, about 230 MB of the driver's memory for good.
    """

    fields: dict

    @property
    def image_size(self) -> int:
        return int(self.fields["image_size"])

    def to_dict(self) -> dict:
        return dict(self.fields)


# run by checkpoint_facts in a child process: prints {"config", "version"} or {"error"} as one JSON line
CHECK_CHECKPOINT = """
import json, sys
from model.checkpoint import CheckpointError, check_weights, checkpoint_version
try:
    config = check_weights(sys.argv[1])
    print(json.dumps({"config": config.to_dict(), "version": checkpoint_version(sys.argv[1])}))
except CheckpointError as e:
    print(json.dumps({"error": str(e)}))
"""
WEIGHTS_FILE = "model.safetensors"  # model.checkpoint.WEIGHTS_FILE, named here so the driver need not import it
CHECK_CHECKPOINT_TIMEOUT_S = 300  # torch's import and a hash of the weights; a hung check fails the job (exit 2)


def checkpoint_facts(uri: str, options: storage.StorageOptions) -> tuple[CheckedConfig, str]:
    """(config, version) of a checkpoint, read from its config.json and weights' bytes.

    The driver needs only the image size, the config and the version; the actors load the model, once
    each. A missing checkpoint, a foreign or mistyped config.json, pickled or corrupt weights and tensors
    that disagree with the config fail here (ConfigError, exit 2), before any actor starts. The check builds
    the network on torch's meta device, so it runs in a child process: the driver never imports torch
    (benchmarks/scale.py measures the driver's peak memory).
    """
    with storage_local_checkpoint(uri, options) as local:
        if not (local / WEIGHTS_FILE).is_file():
            raise ConfigError(f"checkpoint {uri} has no {WEIGHTS_FILE}")
        # config.json against the safetensors header (names, shapes, dtypes), the network built on the meta
        # device: a config that disagrees with its weights is refused here, with nothing allocated
        package_root = str(model_package().parent)  # the child imports `model` from where this process would
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        try:
            child = subprocess.run([sys.executable, "-c", CHECK_CHECKPOINT, str(local)], capture_output=True,
                                   text=True, env=env, timeout=CHECK_CHECKPOINT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"checkpoint {uri}: checking it took over {CHECK_CHECKPOINT_TIMEOUT_S} s") from None
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            last = (child.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"checkpoint {uri}: its check failed (exit {child.returncode}): {last}")
        facts = json.loads(lines[-1])
        if "error" in facts:
            raise ConfigError(facts["error"])
        return CheckedConfig(facts["config"]), facts["version"]


class storage_local_checkpoint:
    """Context manager: a local folder for a checkpoint URI (downloaded to a temp dir when remote)."""

    def __init__(self, uri: str, options):
        self.uri, self.options = uri, options

    def __enter__(self) -> Path:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        try:
            return storage.fetch_dir(self.uri, Path(self.tmp.name), self.options)
        except FileNotFoundError:  # a missing remote checkpoint is a usage error (exit 2), like a missing local one
            self.tmp.cleanup()
            raise ConfigError(f"checkpoint not found: {self.uri}") from None

    def __exit__(self, *exc) -> None:
        self.tmp.cleanup()


def log_to_mlflow(config: RenderConfig, run_id: str, checkpoint: str, model_config: CheckedConfig, model_version: str,
                  results: pd.DataFrame, results_uri: str, counts: dict, frames: int, wall_s: float, stage_s: dict,
                  layout: ActorLayout | None, interrupted: str | None = None, store_error: str | None = None) -> str | None:
    """One MLflow run per job, from the driver only; a job a stop signal ended early ends KILLED."""
    import mlflow

    from metrics.aggregate import aggregate_metrics
    from metrics.tracking import DEFAULT_TRACKING_URI, experiment_id, open_client

    tracking_uri = config.tracking_uri or DEFAULT_TRACKING_URI
    client = open_client(tracking_uri)
    experiment = experiment_id(client, config.experiment)
    mlflow.set_tracking_uri(tracking_uri)
    config_hash = hashlib.sha256(json.dumps(model_config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    # the experiment goes to start_run, not set_experiment, so no experiment stays active in the process
    with mlflow.start_run(experiment_id=experiment, run_name=run_id) as run:
        mlflow.log_params({"manifest_uri": config.manifest_uri, "checkpoint": checkpoint, "config_hash": config_hash,
                           "code_version": code_version(), "actors": layout.actors if layout else "none",
                           "torch_threads_per_actor": layout.threads if layout else "none",
                           "gpus_per_actor": config.gpus_per_actor, "max_failed_fraction": config.max_failed_fraction,
                           "framing": config.framing, "max_side": config.max_side,
                           "max_seconds": config.max_seconds or "off"})
        mlflow.set_tags({"eartalk.job": "render", "eartalk.results_uri": results_uri,
                         "eartalk.output_uri": config.output_uri, "eartalk.manifest_uri": config.manifest_uri,
                         "eartalk.model_version": model_version, "eartalk.run_id": run_id, **config.mlflow_tags,
                         **({"eartalk.interrupted": interrupted} if interrupted else {}),
                         **({"eartalk.store_error": store_error[:5000]} if store_error else {})})
        # the rows rendered by this run only, as `frames` counts (skipped rows keep an earlier run's render_s)
        render_s = float(results.loc[results["status"] == "ok", "render_s"].fillna(0).sum())
        metrics = {"rows_ok": counts["ok"], "rows_failed": counts["failed"], "rows_skipped": counts["skipped"],
                   "frames": frames, "wall_s": wall_s, "frames_per_s": frames / wall_s if wall_s else 0.0,
                   "render_frames_per_s": frames / render_s if render_s else 0.0,
                   **{f"stage_s/{k}": v for k, v in stage_s.items()}}
        metrics.update(aggregate_metrics(results))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        summary = {"run_id": run_id, "results_uri": results_uri, "counts": counts, "frames": frames,
                   "wall_s": round(wall_s, 3), "model_version": model_version, "interrupted": interrupted,
                   "store_error": store_error,
                   "failed": results.loc[results["status"] == "failed", ["id", "error"]].to_dict("records")}
        mlflow.log_dict(summary, "summary.json")
    if interrupted:  # FINISHED would read as a complete job; KILLED is MLflow's status for a stopped one
        client.set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id
