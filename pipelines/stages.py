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
from pathlib import Path

import numpy as np
import pandas as pd

import storage
from .inputs import MAX_AUDIO_BYTES, MAX_CONTROLS_BYTES, MAX_IMAGE_BYTES, MAX_VIDEO_BYTES, InputError, fetch_bounded, read_bounded
from .controls import ControlTrackError, parse_control_track, tracks_from_json, tracks_to_json

STATE_DIR = "state"  # <output>/state/<run_id>/<id>.json: a row's final result, written by the last stage
VIDEO_DIR = "videos"  # <output>/videos/<run_id>/<id>.mp4: per run, so two jobs on one output never share a video
# stage inputs, never part of a row's record (frame_rgb / composite_json: faces.composite.plan_composite's)
HEAVY_COLUMNS = ("portrait_rgb", "audio_pcm", "controls_json", "frame_rgb", "composite_json")
# what the render actor drops once consumed; controls_json (a few floats per frame) goes on to the metrics
RENDER_INPUT_COLUMNS = ("portrait_rgb", "audio_pcm", "frame_rgb", "composite_json")
SCRATCH_PREFIX = "eartalk-render-"  # $TMPDIR/eartalk-render-*: a render actor's MP4s being encoded
SCRATCH_LOCK = ".lock"  # flock-ed by the live actor owning the folder; the kernel drops it when that actor dies


def video_uri(output_uri: str, run_id: str, row_id: str) -> str:
    return storage.join(output_uri, VIDEO_DIR, run_id, f"{row_id}.mp4")


def state_uri(output_uri: str, run_id: str, row_id: str) -> str:
    return storage.join(output_uri, STATE_DIR, run_id, f"{row_id}.json")


def short_error(stage: str, row: dict, e: BaseException) -> str:
    return f"row {row['row']} (id {row['id']!r}), {stage}: {e}"


# ---------------------------------------------------------------- stage 1: load assets (CPU tasks)


def load_assets(row: dict, *, image_size: int, options: storage.StorageOptions, max_side: int = 1024) -> dict:
    """Portrait -> aligned canonical crop (and, framing `portrait`, the portrait fitted to `max_side` with the
    geometry to composite into it); audio -> mono at model.AUDIO_SAMPLE_RATE; control track -> per-frame values.

    Every input is read bounded (pipelines/inputs.py): a regular file within its size limit, fetched within
    FETCH_TIMEOUT_S; one that is not fails this row and the batch's other rows go on.
    """
    from faces import NoFaceError, align_face
    from faces.composite import face_upscaled, plan_composite
    from media import MediaError, load_audio, load_image
    from model import num_frames_for

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
            audio = load_audio(fetch_bounded(row["audio"], Path(tmp), options, MAX_AUDIO_BYTES))
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
    """Holds one generator (loaded once); renders a batch of rows together and publishes their MP4s."""

    def __init__(self, checkpoint_uri: str, output_uri: str, run_id: str, options: storage.StorageOptions,
                 device: str | None = None):
        import torch

        from model import checkpoint_version, load_checkpoint, prepare_for_inference

        self.output_uri, self.run_id, self.options = output_uri, run_id, options
        # scratch for MP4s being encoded (each unlinked after its batch); removed with the actor, or at exit.
        # An actor SIGKILLed mid-encode removes nothing, so each start removes scratch no live actor holds.
        self._scratch = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX)
        self.workdir = Path(self._scratch.name)
        # locked under another name, then renamed: the lock file never exists unlocked while its actor lives
        self._scratch_lock = open(self.workdir / f"{SCRATCH_LOCK}-new", "w")  # held for the actor's life
        fcntl.flock(self._scratch_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (self.workdir / f"{SCRATCH_LOCK}-new").rename(self.workdir / SCRATCH_LOCK)
        remove_stale_scratch(Path(tempfile.gettempdir()), keep=self.workdir)
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus, so torch uses the CPUs it was given
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # a remote checkpoint's local copy is only read here: once loaded the weights live in memory, so it goes
        with tempfile.TemporaryDirectory(prefix="eartalk-checkpoint-") as tmp:
            local = storage.fetch_dir(checkpoint_uri, Path(tmp), options)
            self.generator, self.report = prepare_for_inference(load_checkpoint(local), device)
            self.model_version = checkpoint_version(local)
        self.size = self.generator.config.image_size

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        pending = [r for r in rows if r["status"] == "pending"]
        if pending:
            self.render(pending)
        for r in rows:
            for c in RENDER_INPUT_COLUMNS:
                r.pop(c, None)
        return pd.DataFrame(rows)

    def render(self, rows: list[dict]) -> None:
        """Render rows together; when that fails, render each alone, so only the guilty row fails."""
        try:
            self.render_together(rows)
        except Exception as e:  # a render crash fails its row, not the job
            traceback.print_exc()
            if len(rows) == 1:
                rows[0].update(status="failed", error=short_error("render", rows[0], f"{type(e).__name__}: {e}"))
            else:  # one row's bad input breaks its whole batch: find it by rendering the rows apart
                for r in rows:
                    self.render([r])

    def render_together(self, rows: list[dict]) -> None:
        """One batched stream for all rows; raises if it fails. A row whose encode or upload fails fails alone."""
        import torch

        from faces.composite import Compositor
        from media import Mp4Writer
        from model import RenderRequest
        from model.frames import images_to_tensor, tensor_to_images

        requests, writers, paths, compositors = [], [], [], []
        try:
            for r in rows:
                portrait = np.frombuffer(r["portrait_rgb"], np.uint8).reshape(self.size, self.size, 3)
                audio = np.frombuffer(r["audio_pcm"], np.float32)
                controls = {k: torch.from_numpy(t) for k, t in tracks_from_json(r["controls_json"]).items()}
                requests.append(RenderRequest(images_to_tensor(portrait),
                                              torch.from_numpy(audio.copy()), float(r["fps"]), controls or None, int(r["seed"])))
                paths.append(self.workdir / f"{r['id']}.mp4")
                writers.append(Mp4Writer(paths[-1], float(r["fps"])))
                # framing `portrait`: each crop goes back into the whole portrait before encoding (None: the crop alone)
                compositors.append(Compositor.from_plan(r, self.size) if r.get("composite_json") else None)
            render_s, encode_s, composite_s = 0.0, [0.0] * len(rows), [0.0] * len(rows)
            t0 = time.perf_counter()
            for t, frames in enumerate(self.generator.stream(requests)):
                images = tensor_to_images(frames)  # (B, S, S, 3) uint8
                t1 = time.perf_counter()
                render_s += t1 - t0
                for i, r in enumerate(rows):  # the composite's time counts as encoding: both are the frame's CPU work
                    if t < r["num_frames"]:
                        frame = images[i]
                        if compositors[i]:
                            tc = time.perf_counter()
                            frame = compositors[i](frame)
                            composite_s[i] += time.perf_counter() - tc  # reported apart too (its share of render)
                        writers[i].add(frame)
                t0 = time.perf_counter()
                for i in range(len(rows)):
                    encode_s[i] += (t0 - t1) / len(rows)
            total_frames = sum(r["num_frames"] for r in rows)
            for i, r in enumerate(rows):
                try:
                    t1 = time.perf_counter()
                    writers[i].close(np.frombuffer(r["audio_pcm"], np.float32))
                    encode_s[i] += time.perf_counter() - t1
                    self.publish(r, paths[i], render_s * r["num_frames"] / total_frames, encode_s[i])
                    r["composite_s"] = composite_s[i]
                except Exception as e:  # this row's encode/upload failed; the rows beside it are fine
                    r.update(status="failed", error=short_error("encode/publish", r, f"{type(e).__name__}: {e}"))
                    traceback.print_exc()
        finally:
            # closed (a no-op where close() ran) and unlinked before any retry: no open encoder or file is left
            for writer in writers:
                writer.abort()
            for p in paths:
                p.unlink(missing_ok=True)

    def publish(self, r: dict, local: Path, render_s: float, encode_s: float) -> None:
        """Upload the finished MP4 (to a deterministic key: retries overwrite) and fill in the row's result."""
        t0 = time.perf_counter()
        uri = video_uri(self.output_uri, self.run_id, r["id"])
        storage.publish_file(local, uri, self.options)
        r.update(status="ok", output_uri=uri, frames=int(r["num_frames"]), fps=float(r["fps"]),
                 duration_s=r["num_frames"] / float(r["fps"]), width=int(r.get("frame_width") or self.size),
                 height=int(r.get("frame_height") or self.size),
                 render_s=render_s, encode_s=encode_s, upload_s=time.perf_counter() - t0,
                 model_version=self.model_version, run_id=self.run_id, engine=self.report.engine)


# ---------------------------------------------------------------- stage 3: metrics (CPU tasks)


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


# ---------------------------------------------------------------- stage 4: record (CPU tasks)


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
