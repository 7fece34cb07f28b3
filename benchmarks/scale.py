"""Driver scale: validating and resume-scanning a 20,000-row manifest on S3, and the driver's peak memory.

    python benchmarks/scale.py [--rows 20000]

Starts a moto S3 server on loopback, puts a manifest of ROWS rows there (inputs under the manifest's
prefix) and, for every row, the state record and video a finished run leaves, and the results file of its
last attempt, which holds every row but the last --unlisted ones as ok (those finished in a later attempt that
was SIGKILLed before writing its results), then prints one JSON object:
- validate_s: `read_manifest` + `validate_rows` (input policy included) of the S3 manifest;
- resume_scan_s: `previous_results` for all rows, every one of them done: the results file read, and the
  unlisted rows' state records and videos looked up key by key (records_read says how many);
- validate_and_resume_scan_s: the two together (goal <= 10 s for 20,000 rows);
- driver_peak_rss_mb: peak RSS of a fresh driver process (`run_render`, results Parquet and MLflow run
  included) for ROWS rows, twice: `resume` (the S3 run above again: every row skipped, no Ray) and
  `pipeline` (ROWS rows through local Ray Data, each failing at its asset stage on a missing file, so the
  driver collects ROWS results without rendering); goal <= 600 MB. driver_imported_torch: whether either
  driver imported torch (the checkpoint check runs in a child process, so it should not).
Not a test: numbers depend on the machine and on moto's speed (a real S3 lists and reads faster).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUCKET = "scale"
PUT_BATCH = 2000  # objects per concurrent s3fs pipe() while setting up

# a fresh driver: what it holds for ROWS rows, not what this benchmark process accumulated
DRIVER = textwrap.dedent('''
    import json, resource, sys
    from pipelines.render import RenderConfig, run_render

    manifest, output, tracking, run_id = sys.argv[1:5]
    outcome = run_render(RenderConfig(manifest_uri=manifest, output_uri=output, run_id=run_id, metrics=False,
                                      tracking_uri=tracking, max_failed_fraction=1.0))
    print(json.dumps({"counts": outcome.counts, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch_imported": "torch" in sys.modules}))
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def manifest_rows(rows: int, inputs: str) -> list[dict]:
    return [{"id": f"row{i:06d}", "portrait": f"{inputs}/portrait{i % 7}.jpg", "audio": f"{inputs}/speech{i % 5}.wav",
             "language": "en"} for i in range(rows)]


def run_driver(manifest: str, output: str, tracking: str, run_id: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, manifest, output, tracking, run_id], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"driver failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--unlisted", type=int, default=100,
                        help="rows done but missing from the last results file (their state records are read)")
    args = parser.parse_args()

    import storage
    from metrics.schema import results_frame, write_results
    from pipelines.manifest import read_manifest, validate_rows
    from pipelines.render import RenderConfig, previous_results
    from pipelines.stages import state_uri, video_uri

    moto, endpoint = start_moto()
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    try:
        fs, _ = storage.filesystem(f"s3://{BUCKET}", storage.StorageOptions.from_env())
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        manifest, output, run_id = f"s3://{BUCKET}/job/manifest.jsonl", f"s3://{BUCKET}/out", "scale"
        rows = manifest_rows(args.rows, f"s3://{BUCKET}/job/inputs")
        fs.pipe(manifest, "".join(json.dumps(r) + "\n" for r in rows).encode())
        t0 = time.perf_counter()
        objects, results = {}, []
        for i, r in enumerate(rows):  # what a finished run leaves: a video and a state record per row
            video = video_uri(output, run_id, r["id"])
            objects[video] = b"mp4"
            saved = {"row": i, "id": r["id"], "status": "ok", "error": "", "output_uri": video, "frames": 50,
                     "fps": 25.0, "duration_s": 2.0, "width": 128, "height": 128, "render_s": 1.0, "encode_s": 0.1,
                     "model_version": "tiny", "run_id": run_id, "metrics_error": "", "sync_confidence": 3.0}
            objects[state_uri(output, run_id, r["id"])] = json.dumps({**saved, "tags": json.dumps({"language": "en"})}).encode()
            if i < args.rows - args.unlisted:
                results.append({**saved, "language": "en"})
            if len(objects) >= PUT_BATCH:
                fs.pipe(objects)
                objects = {}
        if objects:
            fs.pipe(objects)
        # the results file as the driver writes it (results/<run_id>.parquet), one row per manifest row
        write_results(results_frame(results, ["language"]), f"{output}/results/{run_id}.parquet", storage.StorageOptions.from_env())
        setup_s = time.perf_counter() - t0

        options = storage.StorageOptions.from_env()
        config = RenderConfig(manifest_uri=manifest, output_uri=output, run_id=run_id)
        t0 = time.perf_counter()
        valid, failures = validate_rows(read_manifest(manifest, options), manifest, config.input_policy())
        validate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = previous_results(valid, config, run_id, options)
        scan_s = time.perf_counter() - t0
        assert len(valid) == args.rows and not failures and len(done) == args.rows, (len(valid), len(failures), len(done))
        # the scan's figures now, on stderr: the two driver runs below take as long again on a slow server
        print(json.dumps({"setup_s": round(setup_s, 1), "validate_s": round(validate_s, 2),
                          "resume_scan_s": round(scan_s, 2)}), file=sys.stderr, flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            tracking = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            resume = run_driver(manifest, output, tracking, run_id, env)
            local = Path(tmp) / "job"
            local.mkdir()
            (local / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest_rows(args.rows, str(local))))
            pipeline = run_driver(str(local / "manifest.jsonl"), str(Path(tmp) / "out"), tracking, "scale-pipeline", env)
        assert resume["counts"]["skipped"] == args.rows and pipeline["counts"]["failed"] == args.rows, (resume, pipeline)
        print(json.dumps({
            "rows": args.rows, "setup_s": round(setup_s, 1),
            "validate_s": round(validate_s, 2), "resume_scan_s": round(scan_s, 2), "records_read": args.unlisted,
            "validate_and_resume_scan_s": round(validate_s + scan_s, 2), "goal_validate_and_resume_scan_s": 10,
            "driver_peak_rss_mb": {"resume": round(resume["peak_rss_mb"]), "pipeline": round(pipeline["peak_rss_mb"])},
            "driver_imported_torch": resume["torch_imported"] or pipeline["torch_imported"],
            "goal_driver_peak_rss_mb": 600,
        }))
    finally:
        moto.terminate()
        moto.wait(timeout=10)


if __name__ == "__main__":
    main()
