"""Pipeline overhead: the render job's frames/s against the bare generator's, same CPUs, one run.

    python benchmarks/pipeline.py [--clips 32] [--seconds 4] [--actors N] [--framing portrait] [--checkpoint DIR]

Prints one JSON object:
- pipeline_vs_bare: frames/s of the whole job (checkpoint check, manifest read, actor start, asset loading,
  rendering, MP4 encode, publish, results; metrics off) over frames/s of `Generator.stream` alone in one
  process on the same inputs and batch size, on as many threads as all render actors together (the job's
  default layout on this machine's cores, pipelines.render.actor_layout), measured before and after the
  pipeline and the faster one kept (the ratio errs low on a shared machine; goal >= 0.90);
- pipeline_vs_bare_processes: the same job over the bare generator laid out as the job's actors are (one
  process per actor, each on its actor's threads, all at once): what the job's own stages and fixed costs
  take, apart from the gain of its layout;
- cpu_utilisation: the share of the cores busy during the timed job, from the CPU time of the job's own
  processes (the driver and every Ray process under it, sampled with psutil; goal >= 0.85), and
  machine_cpu_utilisation, every process's (/proc/stat: on a shared machine it counts the others too);
- cpu_s_by_process: those CPU seconds by kind of process (the driver, each operator's Ray workers, Ray's
  own services), with the processes of each kind started during the job: where the cores went besides
  rendering, and whether a stage keeps starting workers;
- ray_data_plan: the physical operators Ray Data logged when it started the timed job (each stage its own
  ActorPoolMapOperator: the asset stage never fused into the render actor's);
- stage_share: share of the summed stage time spent reading/decoding inputs, rendering, encoding,
  uploading and measuring (metrics measured on a few clips of a second run, scaled per clip);
- composite_vs_render: time spent compositing faces back into the portraits (framing `portrait`, the
  default; the shared portraits come out at the 1024 px max side) over rendering time (goal <= 0.15).
  Compositing is part of `encoding` in stage_share, as the actor does it frame by frame while encoding.
Not a test: numbers depend on the machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEECH = "/usr/share/codec2/raw/speech_orig_16k.wav"
PORTRAITS = [REPO / "examples" / "astronaut.png"] + sorted((REPO.parent / "shared" / "media" / "portraits").glob("*.jpg"))


def make_manifest(d: Path, clips: int, seconds: float) -> Path:
    speech = d / "speech.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", SPEECH, "-t", str(seconds), "-ac", "1", "-ar", "16000", str(speech)], check=True)
    portraits = [shutil.copy(p, d) for p in PORTRAITS]  # inside the manifest's folder: the input policy's default root
    rows = [{"id": f"clip{i:03d}", "portrait": str(portraits[i % len(portraits)]), "audio": str(speech)} for i in range(clips)]
    manifest = d / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def bare_frames_per_s(checkpoint: str, manifest: Path, batch: int, threads: int) -> float:
    import numpy as np
    import torch

    from faces import align_face
    from media import load_audio, load_image
    from model import RenderRequest, load_checkpoint, prepare_for_inference
    from model.frames import images_to_tensor, tensor_to_images

    torch.set_num_threads(threads)
    generator, _ = prepare_for_inference(load_checkpoint(checkpoint), "cpu")
    size = generator.config.image_size
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    requests = []
    for r in rows:
        face = align_face(load_image(r["portrait"]), size).image
        requests.append(RenderRequest(images_to_tensor(face), torch.from_numpy(load_audio(r["audio"]))))
    frames, start = 0, time.perf_counter()
    for i in range(0, len(requests), batch):
        chunk = requests[i : i + batch]
        for step in generator.stream(chunk):
            tensor_to_images(step)  # the actor's conversion, so the bare loop does the same work
            frames += len(chunk)
    return frames / (time.perf_counter() - start)


def bare_processes_frames_per_s(checkpoint: str, manifest: Path, batch: int, processes: int, threads: int) -> float:
    """Frames/s of `processes` bare generators at once, each on its share of the manifest's rows: their rates
    summed (equal shares, so their timed loops overlap)."""
    rows = manifest.read_text().splitlines(keepends=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from pipeline import bare_frames_per_s;"
            " print(bare_frames_per_s(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))")
    parts = []
    for i in range(processes):
        part = manifest.with_name(f"bare-part{i}.jsonl")
        part.write_text("".join(rows[i::processes]))
        parts.append(subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), checkpoint, str(part),
                                       str(batch), str(threads)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True))
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in parts)


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat (idle and iowait are idle)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def process_kind(proc, me) -> str:
    """What a process of the job is: `driver`, a Ray worker's title without `ray::` (its actor's operator, or
    IDLE), or the program (raylet, gcs_server, a Python script's file name, `python -c` for the checkpoint check)."""
    if proc.pid == me.pid:
        return "driver"
    args = proc.cmdline()
    if args and args[0].startswith("ray::"):
        return args[0].removeprefix("ray::").strip()
    if len(args) > 1 and Path(args[0]).name.startswith("python"):
        script = next((a for a in args[1:] if not a.startswith("-") or a == "-c"), "")
        return "python -c" if script == "-c" else Path(script).name
    return proc.name()


class CpuSampler:
    """Samples the CPU seconds of this process and every process under it (the local Ray cluster and its
    workers) while the context runs: processes that start meanwhile count from zero, those already running
    from their time at the start; a process that exits between two samples loses at most one interval.
    `by_kind()` sums them by process_kind (a worker counts under the last operator it served)."""

    def __init__(self, interval_s: float = 0.25):
        import psutil

        self.psutil, self.interval_s = psutil, interval_s
        self.start_cpu: dict[tuple[int, float], float] = {}
        self.last_cpu: dict[tuple[int, float], float] = {}
        self.kind: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()

    def _tree(self):
        me = self.psutil.Process()
        return [me] + me.children(recursive=True)

    def _sample(self, first: bool = False) -> None:
        me = self.psutil.Process()
        for proc in self._tree():
            try:
                key = (proc.pid, proc.create_time())  # a pid reused by a new process is a new key
                t = proc.cpu_times()
                kind = process_kind(proc, me)
            except self.psutil.Error:  # exited meanwhile
                continue
            if kind != "IDLE" or key not in self.kind:  # an idle worker keeps the operator it served
                self.kind[key] = kind
            seconds = t.user + t.system
            if first:
                self.start_cpu[key] = seconds
            self.last_cpu[key] = seconds

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self):
        self._sample(first=True)
        self.machine0, self.t0 = machine_busy_ticks(), time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.perf_counter() - self.t0
        busy, total = machine_busy_ticks()
        self.machine = (busy - self.machine0[0]) / max(1, total - self.machine0[1])
        self.cpu_s = sum(v - self.start_cpu.get(k, 0.0) for k, v in self.last_cpu.items())

    def utilisation(self, cores: int) -> float:
        return self.cpu_s / (self.wall_s * cores)

    def by_kind(self) -> dict[str, dict]:
        """{kind: {"cpu_s", "started"}}: CPU seconds and processes started meanwhile, most CPU first."""
        kinds: dict[str, dict] = {}
        for key, seconds in self.last_cpu.items():
            k = kinds.setdefault(self.kind.get(key, "?"), {"cpu_s": 0.0, "started": 0})
            k["cpu_s"] += seconds - self.start_cpu.get(key, 0.0)
            k["started"] += key not in self.start_cpu
        ordered = sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_s"])
        return {name: {"cpu_s": round(v["cpu_s"], 1), "started": v["started"]} for name, v in ordered}


class PlanLog(logging.Handler):
    """Keeps the execution plans Ray Data logs as it starts each dataset."""

    def __init__(self):
        super().__init__()
        self.plans: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Execution plan of Dataset" in message:
            self.plans.append(message.split(": ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    # 128 s of video: long enough that the job's fixed start (checkpoint check, actor start: 10-15 s on 2 cores)
    # is not most of it, as it is not in a real manifest of hours
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--actors", type=int, default=None, help="render actors (default: the job's, actor_layout)")
    parser.add_argument("--framing", default="portrait", choices=["portrait", "crop"],
                        help="the job's framing: portrait (the default: composited at the 1024 px max side) or crop")
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()

    import ray

    from model import DEFAULT_CHECKPOINT, Generator, get_preset, save_checkpoint
    from pipelines.render import ROWS_PER_RENDER_BATCH, RenderConfig, actor_layout, run_render

    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        checkpoint = args.checkpoint or (str(DEFAULT_CHECKPOINT) if (DEFAULT_CHECKPOINT / "model.safetensors").exists()
                                         else str(save_checkpoint(Generator(get_preset("tiny")), d / "random-tiny")))
        manifest = make_manifest(d, args.clips, args.seconds)

        def job(out: str, rows: Path = manifest, metrics: bool = False) -> RenderConfig:
            return RenderConfig(str(rows), str(d / out), checkpoint=checkpoint, metrics=metrics, actors=args.actors,
                                framing=args.framing, tracking_uri=f"sqlite:///{d}/ml.db")

        layout = actor_layout(job("out"), cores, rows=args.clips)
        threads = layout.actors * layout.threads  # the bare generator gets every render thread of the job
        # the machine is shared: measure the bare generator before and after the pipeline, keep the faster
        bare_before = bare_frames_per_s(checkpoint, manifest, ROWS_PER_RENDER_BATCH, threads=threads)
        bare_processes = bare_processes_frames_per_s(checkpoint, manifest, ROWS_PER_RENDER_BATCH, layout.actors,
                                                     layout.threads)
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        few = d / "few.jsonl"
        few.write_text("".join(manifest.read_text().splitlines(keepends=True)[:4]))
        run_render(job("warmup", few))  # starts Ray's worker processes: the timed job's actors start as a job's do
        plans = PlanLog()  # the executor's own logger: Ray Data replaces the handlers of "ray.data"
        logging.getLogger("ray.data._internal.execution.streaming_executor").addHandler(plans)
        with CpuSampler() as cpu:
            outcome = run_render(job("out"))
        pipeline_fps = outcome.frames / outcome.wall_s
        measured = run_render(job("measured", few, metrics=True))
        ray.shutdown()
        bare_after = bare_frames_per_s(checkpoint, manifest, ROWS_PER_RENDER_BATCH, threads=threads)
        bare_fps = max(bare_before, bare_after)
        s, per_clip_metrics = outcome.stage_s, measured.stage_s.get("metrics", 0.0) / max(1, measured.counts["ok"])
        stages = {"reading_decoding": s.get("load", 0.0), "rendering": s.get("render", 0.0),
                  "encoding": s.get("encode", 0.0), "uploading": s.get("upload", 0.0),
                  "measuring": per_clip_metrics * outcome.counts["ok"]}
        total = sum(stages.values()) or 1.0
        print(json.dumps({
            "clips": args.clips, "seconds_per_clip": args.seconds, "checkpoint": checkpoint, "cores": cores,
            "actors": layout.actors, "framing": args.framing, "actor_cpus": round(layout.cpus, 3),
            "actor_threads": layout.threads, "rows_per_call": layout.rows_per_call, "bare_threads": threads,
            "pipeline_frames_per_s": round(pipeline_fps, 2), "bare_frames_per_s": round(bare_fps, 2),
            "bare_frames_per_s_before_after": [round(bare_before, 2), round(bare_after, 2)],
            "pipeline_vs_bare": round(pipeline_fps / bare_fps, 3),
            "bare_processes_frames_per_s": round(bare_processes, 2),
            "pipeline_vs_bare_processes": round(pipeline_fps / bare_processes, 3),
            "cpu_utilisation": round(cpu.utilisation(cores), 3),
            "machine_cpu_utilisation": round(cpu.machine, 3),
            "cpu_s_by_process": cpu.by_kind(),
            "ray_data_plan": plans.plans[0] if plans.plans else None,
            "stage_share": {k: round(v / total, 3) for k, v in stages.items()},
            "stage_s": {k: round(v, 2) for k, v in stages.items()},
            "composite_vs_render": round(s.get("composite", 0.0) / max(s.get("render", 0.0), 1e-9), 3),
            "wall_s": round(outcome.wall_s, 2),
        }))


if __name__ == "__main__":
    main()
