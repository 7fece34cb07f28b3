"""The render job's Ray Data operators. Wiring (resources, order) lives in pipelines/render.py.

Rows flow through every stage; a row that failed keeps `status == "failed"` and its `error`, and later
stages pass it through untouched. Heavy inputs travel as small bytes columns (an aligned 128 px
portrait, mono audio at model.AUDIO_SAMPLE_RATE); videos never do: the render actor encodes and uploads
each MP4 itself.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

import storage
from .inputs import (MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, MAX_CONTROLS_BYTES, MAX_IMAGE_BYTES, MAX_VIDEO_BYTES, InputError,
                     check_duration, fetch_bounded, read_bounded)
from .controls import ControlTrackError, parse_control_track, tracks_from_json, tracks_to_json
from .lease import LeaseWatch, lease_uri

if TYPE_CHECKING:
    import media

STATE_DIR = "state"  # <output>/state/<run_id>/<id>.json: a row's final result, written by the last stage
VIDEO_DIR = "videos"  # <output>/videos/<run_id>/<id>.mp4: per run, so two jobs on one output never share a video
# stage inputs, never part of a row's record (frame_rgb / composite_json: faces.composite.plan_composite's)
HEAVY_COLUMNS = ("portrait_rgb", "audio_pcm", "controls_json", "frame_rgb", "composite_json")
# what the render actor drops once consumed; controls_json (a few floats per frame) goes on to the metrics
RENDER_INPUT_COLUMNS = ("portrait_rgb", "audio_pcm", "frame_rgb", "composite_json")
SCRATCH_PREFIX = "eartalk-render-"  # $TMPDIR/eartalk-render-*: a render actor's MP4s being encoded
SCRATCH_LOCK = ".lock"  # flock-ed by the live actor owning the folder; the kernel drops it when that actor dies
RENDER_SLOTS = 4  # videos one render actor streams at once (continuous batching): keeps a device busy, bounds memory
ENCODE_QUEUE_FRAMES = 64  # frames queued per encoder thread before generation waits for it (bounds memory)


def video_uri(output_uri: str, run_id: str, row_id: str) -> str:
    return storage.join(output_uri, VIDEO_DIR, run_id, f"{row_id}.mp4")


def state_uri(output_uri: str, run_id: str, row_id: str) -> str:
    return storage.join(output_uri, STATE_DIR, run_id, f"{row_id}.json")


def short_error(stage: str, row: dict, e: BaseException) -> str:
    return f"row {row['row']} (id {row['id']!r}), {stage}: {e}"


# ---------------------------------------------------------------- stage 1: load assets (CPU actors: StageActor)


def load_assets(row: dict, *, image_size: int, options: storage.StorageOptions, max_side: int = 1024,
                max_seconds: float | None = None) -> dict:
    """Portrait -> aligned canonical crop (and, framing `portrait`, the portrait fitted to `max_side` with the
    geometry to composite into it); audio -> mono at model.AUDIO_SAMPLE_RATE; control track -> per-frame values.

    Every input is read bounded (pipelines/inputs.py): a regular file within its size limit, fetched within
    FETCH_TIMEOUT_S; one that is not fails this row and the batch's other rows go on. Speech longer than
    `max_seconds` (the job's --max-seconds; None: no cap) fails its row before it is rendered.
    """
    from faces import NoFaceError, align_face
    from faces.composite import face_upscaled, plan_composite
    from media import MediaError, load_audio, load_image
    from model import AUDIO_SAMPLE_RATE, num_frames_for

    out = {**row, "status": "pending", "error": "", "portrait_rgb": b"", "audio_pcm": b"", "controls_json": "",
           "num_frames": 0, "load_s": 0.0, "framing": row.get("framing") or "portrait", "frame_rgb": b"",
           "frame_width": 0, "frame_height": 0, "composite_json": "", "face_upscaled": None}
    start = time.perf_counter()
    stage = "portrait"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            image = load_image(fetch_bounded(row["portrait"], Path(tmp), options, MAX_IMAGE_BYTES))
            aligned = align_face(image, image_size)
            plan = plan_composite(image, aligned, max_side) if out["framing"] == "portrait" else {}
            stage = "audio"
            audio = load_audio(fetch_bounded(row["audio"], Path(tmp), options, MAX_AUDIO_BYTES),
                               max_seconds=MAX_AUDIO_SECONDS)
            check_duration(audio.size / AUDIO_SAMPLE_RATE, max_seconds)
            num_frames = num_frames_for(audio.size, row["fps"])
            tracks = {}
            if row.get("controls"):
                stage = "controls"
                data = read_bounded(row["controls"], options, MAX_CONTROLS_BYTES)
                tracks = parse_control_track(data, row["controls"], row["fps"], num_frames)
    except FileNotFoundError as e:
        out.update(status="failed", error=short_error(stage, row, f"file not found: {e}"))
    except NoFaceError as e:
        out.update(status="failed", error=short_error(stage, row, e))
    except (MediaError, ControlTrackError, InputError, OSError) as e:
        out.update(status="failed", error=short_error(stage, row, e))
    except Exception as e:  # anything unforeseen in one row's inputs fails that row, not the job
        out.update(status="failed", error=short_error(stage, row, f"{type(e).__name__}: {e}"))
        traceback.print_exc()
    else:
        out.update(portrait_rgb=aligned.image.tobytes(), audio_pcm=audio.astype(np.float32).tobytes(),
                   controls_json=tracks_to_json(tracks), num_frames=num_frames, face_upscaled=face_upscaled(aligned),
                   **plan)
    out["load_s"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------- stage 2: render + encode + publish (actors)


def remove_stale_scratch(tmp: Path, keep: Path) -> list[Path]:
    """Remove the render scratch folders under `tmp` that no live actor holds: their lock file is there but
    unlocked (its actor died). A folder without a lock file is left alone: its actor may be between creating
    the folder and locking it. Returns what was removed."""
    removed = []
    for folder in tmp.glob(f"{SCRATCH_PREFIX}*"):
        lock = folder / SCRATCH_LOCK
        if folder == keep or not folder.is_dir() or folder.is_symlink() or not lock.is_file():
            continue
        try:
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its actor lives
                shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except OSError:  # held (a live actor's) or vanished meanwhile (another actor cleaned it)
            continue
    return removed


class RenderActor:
    """Holds one generator (loaded once) and renders its rows by continuous batching (model/slots.py).

    `slots` videos stream at once, each at its own frame; when one ends its slot takes the next row of the
    call at once (`start_order`), so a long row never holds up the others and no frame is computed to be
    thrown away.
    Each video is encoded by its own thread while the frames are generated (media.EncoderThread) and is
    closed and uploaded on that thread the moment it ends: nothing on the generation loop waits on an
    encoder or on storage. The call is a generator: each row is yielded as soon as it is published (or
    has failed), so Ray Data passes results on while the call's other rows still render; a call holds
    only its own rows, so Ray Data's retries and backpressure (one call per batch) are as before.
    """

    def __init__(self, checkpoint_uri: str, output_uri: str, run_id: str, options: storage.StorageOptions,
                 device: str | None = None, slots: int = RENDER_SLOTS, lease_holder: str | None = None):
        import torch

        from model import checkpoint_version, load_checkpoint, prepare_for_inference

        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an integer >= 1, got {slots!r}")
        self.output_uri, self.run_id, self.options, self.slots = output_uri, run_id, options, slots
        # the driver's lease (pipelines/lease.py), checked before each upload: a dead driver's actor stops publishing
        self.lease = LeaseWatch(lease_uri(output_uri, run_id), lease_holder, options) if lease_holder else None
        # scratch for MP4s being encoded (each unlinked once uploaded); removed with the actor, or at exit.
        # An actor SIGKILLed mid-encode removes nothing, so each start removes scratch no live actor holds.
        self._scratch = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX)
        self.workdir = Path(self._scratch.name)
        # locked under another name, then renamed: the lock file never exists unlocked while its actor lives
        self._scratch_lock = open(self.workdir / f"{SCRATCH_LOCK}-new", "w")  # held for the actor's life
        fcntl.flock(self._scratch_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (self.workdir / f"{SCRATCH_LOCK}-new").rename(self.workdir / SCRATCH_LOCK)
        remove_stale_scratch(Path(tempfile.gettempdir()), keep=self.workdir)
        # torch's thread count comes from OMP_NUM_THREADS, which render_dataset sets in the actor's runtime_env
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # a remote checkpoint's local copy is only read here: once loaded the weights live in memory, so it goes
        with tempfile.TemporaryDirectory(prefix="eartalk-checkpoint-") as tmp:
            local = storage.fetch_dir(checkpoint_uri, Path(tmp), options)
            self.generator, self.report = prepare_for_inference(load_checkpoint(local), device)
            self.model_version = checkpoint_version(local)
        self.size = self.generator.config.image_size
        self.frames_computed = 0  # frames the generator decoded, over the actor's life (none is thrown away)

    def __call__(self, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        """Yield each row of the batch as a one-row frame the moment it is done: rows that failed earlier
        at once, rendered rows as each video is published."""
        rows = batch.to_dict("records")
        for r in rows:
            if r["status"] != "pending":
                yield self._result(r)
        for r in self.render([r for r in rows if r["status"] == "pending"]):
            yield self._result(r)

    @staticmethod
    def _result(r: dict) -> pd.DataFrame:
        for c in RENDER_INPUT_COLUMNS:
            r.pop(c, None)
        return pd.DataFrame([r])

    def render(self, rows: list[dict], slots: int | None = None) -> Iterator[dict]:
        """Render rows in `slots` slots (the actor's by default), yielding each row once it is published or
        failed. A row the model refuses fails at its start; when a frame step itself raises, the rows then
        in slots are rendered again one at a time, so only the guilty row fails."""
        from model.frames import tensor_to_images

        slots = min(slots or self.slots, len(rows))
        if not rows:
            return
        stream = self.generator.slots(slots)
        todo = start_order(rows)
        videos: dict[int, _Video] = {}  # slot -> the video it renders
        finishing: list[_Video] = []  # encoded and uploaded on their threads
        try:
            while todo or videos:
                while todo and stream.free:
                    r = todo.pop(0)
                    try:
                        slot = stream.add(self.request(r), key=r["id"])
                    except Exception as e:  # this row's inputs: it fails alone, the slot stays free
                        traceback.print_exc()
                        yield _failed(r, "render", e)
                        continue
                    videos[slot] = self.open_video(r)
                if not videos:
                    continue
                t0 = time.perf_counter()
                try:
                    out = stream.step()
                    images = tensor_to_images(out.frames)  # (n, S, S, 3) uint8
                except Exception as e:  # a step of several rows: which one broke it is unknown
                    traceback.print_exc()
                    stuck = [videos.pop(s) for s in list(videos)]
                    for v in stuck:
                        v.encoder.abort()
                    if slots == 1:
                        yield _failed(stuck[0].row, "render", e)
                    else:
                        for v in stuck:
                            yield from self.render([v.row], slots=1)
                    stream = self.generator.slots(slots)  # a fresh cache: nothing of the failed step stays
                    continue
                share = (time.perf_counter() - t0) / len(out.slots)
                self.frames_computed += len(out.slots)
                for slot, image, ended in zip(out.slots, images, out.ended):
                    v = videos[slot]
                    v.render_s += share
                    v.encoder.add(image)
                    if ended:
                        finishing.append(videos.pop(slot))
                        self.finish_video(finishing[-1])
                yield from _collect(finishing, wait=False)
            yield from _collect(finishing, wait=True)
        finally:
            # a consumer that stopped early, or an error: no open encoder or scratch file is left
            for v in [*videos.values(), *finishing]:
                v.encoder.abort()

    def request(self, r: dict):
        import torch

        from model import RenderRequest
        from model.frames import images_to_tensor

        portrait = np.frombuffer(r["portrait_rgb"], np.uint8).reshape(self.size, self.size, 3)
        audio = np.frombuffer(r["audio_pcm"], np.float32)
        controls = {k: torch.from_numpy(t) for k, t in tracks_from_json(r["controls_json"]).items()}
        return RenderRequest(images_to_tensor(portrait), torch.from_numpy(audio.copy()), float(r["fps"]),
                             controls or None, int(r["seed"]))

    def open_video(self, r: dict) -> "_Video":
        from faces.composite import Compositor
        from media import EncoderThread

        # framing `portrait`: each crop goes back into the whole portrait before encoding (None: the crop alone)
        compositor = Compositor.from_plan(r, self.size) if r.get("composite_json") else None
        path = self.workdir / f"{r['id']}.mp4"
        return _Video(r, path, EncoderThread(path, float(r["fps"]), compositor, max_pending=ENCODE_QUEUE_FRAMES))

    def finish_video(self, v: "_Video") -> None:
        """Close the MP4 and publish it, both on the video's encoder thread."""
        def publish(frames: int) -> dict:
            try:
                # the composite's time counts as encoding: both are the frame's CPU work; reported apart too
                encode_s = v.encoder.encode_s + v.encoder.transform_s
                self.publish(v.row, v.path, v.render_s, encode_s)
                v.row["composite_s"] = v.encoder.transform_s
            finally:
                v.path.unlink(missing_ok=True)
            return v.row

        v.encoder.finish(np.frombuffer(v.row["audio_pcm"], np.float32), publish)

    def publish(self, r: dict, local: Path, render_s: float, encode_s: float) -> None:
        """Upload the finished MP4 (to a deterministic key: retries overwrite) and fill in the row's result."""
        t0 = time.perf_counter()
        uri = video_uri(self.output_uri, self.run_id, r["id"])
        if self.lease:
            self.lease.check()  # raises DriverGone (the row fails, nothing uploaded) once the driver is gone
        storage.publish_file(local, uri, self.options)
        r.update(status="ok", output_uri=uri, frames=int(r["num_frames"]), fps=float(r["fps"]),
                 duration_s=r["num_frames"] / float(r["fps"]), width=int(r.get("frame_width") or self.size),
                 height=int(r.get("frame_height") or self.size),
                 render_s=render_s, encode_s=encode_s, upload_s=time.perf_counter() - t0,
                 model_version=self.model_version, run_id=self.run_id, engine=self.report.engine)


def start_order(rows: list[dict]) -> list[dict]:
    """The order a call's rows take free slots: the shortest first, then longest first.

    Longest first (LPT list scheduling) keeps the slots busy until the call's end: what is left to drain
    when no row waits is short rows, not one long row stepping alone. The shortest goes first so that a
    video is published within its own length of the call's start instead of after the longest rows.
    """
    if len(rows) < 2:
        return list(rows)
    first = min(range(len(rows)), key=lambda i: int(rows[i]["num_frames"]))  # ties: the earliest row
    rest = rows[:first] + rows[first + 1 :]
    return [rows[first], *sorted(rest, key=lambda r: -int(r["num_frames"]))]  # stable: ties keep the batch's order


@dataclass
class _Video:
    """A row being rendered in a slot: its encoder thread, its scratch MP4 and its share of the steps' time."""

    row: dict
    path: Path
    encoder: "media.EncoderThread"
    render_s: float = 0.0


def _failed(r: dict, stage: str, e: BaseException) -> dict:
    r.update(status="failed", error=short_error(stage, r, f"{type(e).__name__}: {e}"))
    return r


def _collect(finishing: list[_Video], wait: bool) -> Iterator[dict]:
    """Rows whose encode and upload are done (all of them, waiting, with `wait`), removed from `finishing`.
    A row whose encode or upload failed fails alone."""
    for v in list(finishing):
        if not wait and not v.encoder.result.done():
            continue
        finishing.remove(v)
        try:
            yield v.encoder.result.result()
        except Exception as e:  # this row's encode/upload failed; the rows beside it are fine
            v.encoder.abort()  # removes the partial file
            traceback.print_exception(e)
            yield _failed(v.row, "encode/publish", e)


# ---------------------------------------------------------------- stage 3: metrics (CPU actors: StageActor)


def measure(row: dict, *, options: storage.StorageOptions) -> dict:
    """Per-video quality metrics of a published video, read back from storage."""
    if row["status"] != "ok":
        return row
    from metrics import compute_video_metrics

    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            video = storage.fetch(row["output_uri"], Path(tmp), options)
            portrait = fetch_bounded(row["portrait"], Path(tmp), options, MAX_IMAGE_BYTES)
            reference = (fetch_bounded(row["reference_video"], Path(tmp), options, MAX_VIDEO_BYTES)
                         if row.get("reference_video") else None)
            # the track as the asset stage parsed it: read and parsed once per row
            controls = tracks_from_json(row.get("controls_json", "")) or None
            values = compute_video_metrics(video, None, portrait, reference, controls)
        row = {**row, **values, "metrics_error": ""}
    except Exception as e:  # a metric failure never fails the render: the row stays ok, the metrics null
        row = {**row, "metrics_error": short_error("metrics", row, f"{type(e).__name__}: {e}")}
    row["metrics_s"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------- stage 4: record (CPU actors: StageActor)


def record(row: dict, *, options: storage.StorageOptions) -> dict:
    """Publish an ok row's state record and drop the stage inputs it still carries.

    The last stage, so the record is written once, with the row's final result (metrics included): a
    state record means the video is published and the row is done, which is what a resumed run skips.
    """
    result = {k: v for k, v in row.items() if k not in HEAVY_COLUMNS}
    if result["status"] == "ok":
        uri = state_uri(result["output_root"], result["run_id"], result["id"])
        try:
            storage.publish_bytes(json.dumps(result, default=str).encode(), uri, options)
        except Exception as e:  # the store is gone (s3fs has retried): not durably done, so a rerun renders it
            traceback.print_exc()
            result.update(status="failed", error=short_error("record", result, f"{type(e).__name__}: {e}"))
    return result


# ---------------------------------------------------------------- the CPU stages' actors


class StageActor:
    """A row stage (`stage`, with the constructor's keyword arguments) on a long-lived actor.

    As tasks, the small stages would start worker processes over and over: Ray kills a task worker beyond
    its node's CPU count after a second idle, and these stages sit idle between rows while frames render,
    so a row could pay for a new worker importing Ray Data, pandas and the face models again (about 2.5
    CPU-s each: benchmarks/pipeline.py reports the CPU seconds of each kind of process). A subclass per stage
    names its operator in Ray Data's plan and dashboard.
    """

    stage = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, row: dict) -> dict:
        return type(self).stage(row, **self.kwargs)


class AssetLoader(StageActor):
    stage = staticmethod(load_assets)


class Measurer(StageActor):
    stage = staticmethod(measure)


class Recorder(StageActor):
    stage = staticmethod(record)


# ---------------------------------------------------------------- resume: measure what was never measured (CPU tasks)


def measure_saved(item: dict, *, options: storage.StorageOptions) -> dict:
    """A state record (JSON in `record`) of a video an earlier run published without measuring it (it ran
    with metrics off): measured now, from the published MP4 and the row's inputs, and its record republished
    with the figures, so a later resume keeps them. Its control track, not kept in the record, is read again."""
    row = json.loads(item["record"])
    row["controls_json"] = ""
    if row.get("controls"):
        try:
            data = read_bounded(row["controls"], options, MAX_CONTROLS_BYTES)
            row["controls_json"] = tracks_to_json(parse_control_track(data, row["controls"], row["fps"], int(row["frames"])))
        except Exception as e:  # the track is gone or changed since: the row is still measured, without it
            row["metrics_error"] = short_error("metrics (controls)", row, f"{type(e).__name__}: {e}")
    measured = measure(row, options=options)
    if row.get("metrics_error"):  # keep why the controls' figures are missing, unless measuring failed outright
        measured["metrics_error"] = measured["metrics_error"] or row["metrics_error"]
    return {"record": json.dumps(record(measured, options=options), default=str)}
