"""A hostile manifest against the real render job (local Ray, MLflow on sqlite): every good row renders,
every bad row fails alone with a clear error, and no planted secret shows up in any output.

Regressions guarded (issue 20): `/etc/passwd`, `file://`, `../` paths and `http://` / `ftp://` URLs were
opened; a control track's cell came back in the error ("'PLANTED-SECRET-CELL' is not a number") and so in
the results, the logs and MLflow; `controls=/dev/zero` was read to 4.6 GB; a FIFO hung the job for good, and
the good row in its batch never rendered; `--run-id ../../../x` wrote outside --output.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import mlflow
import pytest

from jobs.render import main as render_main
from pipelines.inputs import MAX_CONTROLS_BYTES
from tests.pipelines.helpers import check_video, short_speech, write_jsonl

SECRET = f"PLANTED-SECRET-{uuid.uuid4().hex[:8]}"  # unique, so no other test's logs can hold it


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, shared_media):
    base = tmp_path_factory.mktemp("hostile")
    d, outside = base / "manifest", base / "outside"
    d.mkdir(), outside.mkdir()
    speech = short_speech(shared_media / "speech" / "english.wav", d / "speech.wav", 1.2)
    shutil.copy(shared_media / "portraits" / "obama.jpg", d / "obama.jpg")
    (d / "nod.csv").write_text("frame,yaw\n" + "".join(f"{i},{i - 10}\n" for i in range(20)))
    # secrets: one beside the manifest (a control track in name only), one outside it, one linked in
    (d / "cell.csv").write_text(f"frame,yaw\n0,1.0\n1,{SECRET}-CELL\n")
    (d / "header.csv").write_text(f"frame,{SECRET}-HEADER\n0,1.0\n")
    (outside / "secret.csv").write_text(f"frame,yaw\n0,{SECRET}-OUTSIDE\n")
    (d / "link.csv").symlink_to(outside / "secret.csv")
    os.mkfifo(d / "fifo.csv")
    with open(d / "huge.csv", "wb") as f:  # sparse: its size is over the limit, its disk use nothing
        f.truncate(MAX_CONTROLS_BYTES + 1)
    (d / "folder.jpg").mkdir()
    good = {"portrait": "obama.jpg", "audio": "speech.wav"}
    rows = [
        {"id": "good", **good},
        {"id": "etc-passwd-audio", "portrait": "obama.jpg", "audio": "/etc/passwd"},
        {"id": "file-uri", "portrait": "file:///etc/passwd", "audio": "speech.wav"},
        {"id": "traversal", **good, "controls": "../outside/secret.csv"},
        {"id": "symlink-out", **good, "controls": "link.csv"},
        {"id": "http", "portrait": "http://127.0.0.1:1/x", "audio": "speech.wav"},
        {"id": "ftp", "portrait": "obama.jpg", "audio": "ftp://127.0.0.1/x.wav"},
        {"id": "chained", **good, "controls": f"s3://bucket/x::file://{outside / 'secret.csv'}"},
        {"id": "fifo", **good, "controls": "fifo.csv"},
        {"id": "dev-zero", **good, "controls": "/dev/zero"},
        {"id": "oversized", **good, "controls": "huge.csv"},
        {"id": "directory", "portrait": "folder.jpg", "audio": "speech.wav"},
        {"id": "secret-cell", **good, "controls": "cell.csv"},
        {"id": "secret-header", **good, "controls": "header.csv"},
        {"id": "reference-out", **good, "reference_video": str(outside / "secret.csv")},
        {"id": "good-nod", **good, "controls": "nod.csv"},
    ]
    return {"manifest": write_jsonl(d / "manifest.jsonl", rows), "base": base, "speech": speech}


EXPECTED_ERRORS = {
    "etc-passwd-audio": "audio: outside the allowed roots",
    "file-uri": "portrait: outside the allowed roots",
    "traversal": "controls: outside the allowed roots",
    "symlink-out": "controls: outside the allowed roots",
    "http": "portrait: scheme 'http' is not allowed",
    "ftp": "audio: scheme 'ftp' is not allowed",
    "chained": "controls: chained URIs ('::') are not allowed",
    "fifo": "controls: a FIFO, not a regular file",
    "dev-zero": "controls: a character device, not a regular file",
    "oversized": f"controls: {MAX_CONTROLS_BYTES + 1:,} bytes, over the {MAX_CONTROLS_BYTES:,}-byte limit",
    "directory": "portrait: a directory, not a regular file",
    "secret-cell": "controls: column 'yaw', line 3: the cell is not a number",
    "secret-header": "controls: unknown control column(s) at position(s) [2]",
    "reference-out": "reference_video: outside the allowed roots",
}


@pytest.fixture(scope="module")
def rendered(hostile, random_tiny_checkpoint, ray_local):
    out = hostile["base"] / "out"
    tracking = f"sqlite:///{hostile['base'] / 'mlflow.db'}"
    stdout, stderr = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stderr)  # the job's log lines as well as its prints
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            # /dev is allowed so that /dev/zero reaches the asset stage's own refusal of what is not a regular file
            code = render_main([str(hostile["manifest"]), "--output", str(out), "--run-id", "hostile", "--checkpoint",
                                str(random_tiny_checkpoint), "--tracking-uri", tracking, "--no-metrics",
                                "--allow-root", "/dev"])
    finally:
        logging.getLogger().removeHandler(handler)
    return {"code": code, "out": out, "tracking": tracking, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_good_rows_render_and_every_hostile_row_fails_alone_with_its_cause(rendered):
    from metrics.schema import read_results

    assert rendered["code"] == 1  # failed rows beyond --max-failed-fraction 0
    df = read_results(str(rendered["out"] / "results" / "hostile.parquet")).set_index("id")
    assert sorted(df.index[df.status == "ok"]) == ["good", "good-nod"]
    for row_id in ("good", "good-nod"):
        check_video(rendered["out"] / "videos" / "hostile" / f"{row_id}.mp4", expected_audio_s=1.2)
    for row_id, cause in EXPECTED_ERRORS.items():
        assert df.loc[row_id, "status"] == "failed", row_id
        error = df.loc[row_id, "error"]
        assert f"(id {row_id!r})" in error and cause in error, (row_id, error)
    assert len(df) == 2 + len(EXPECTED_ERRORS)
    assert sorted(p.name for p in (rendered["out"] / "videos" / "hostile").iterdir()) == ["good-nod.mp4", "good.mp4"]


def test_no_planted_secret_reaches_any_output_log_or_mlflow_record(rendered, hostile, ray_local):
    from ray._private.worker import global_worker

    texts = {"stdout": rendered["stdout"], "stderr": rendered["stderr"]}
    for path in [*rendered["out"].rglob("*"), Path(rendered["tracking"].removeprefix("sqlite:///"))]:
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    mlflow.set_tracking_uri(rendered["tracking"])
    run = mlflow.search_runs(experiment_names=["eartalk-render"], filter_string="tags.`eartalk.run_id` = 'hostile'").iloc[0]
    texts["mlflow params and tags"] = json.dumps({k: str(v) for k, v in run.items()})
    summary = mlflow.artifacts.load_dict(f"{run['artifact_uri']}/summary.json")
    texts["summary.json"] = json.dumps(summary)
    assert len(summary["failed"]) == len(EXPECTED_ERRORS)
    logs = Path(global_worker.node.get_logs_dir_path())  # the Ray workers' own stdout/stderr
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50 << 20:
            texts[str(path)] = path.read_bytes().decode("latin-1")
    leaks = [where for where, text in texts.items() if SECRET in text or "root:x:0:0" in text]
    assert not leaks, leaks
    assert any("the cell is not a number" in text for text in texts.values())  # the errors themselves are there


def test_a_run_id_that_traverses_out_of_the_output_is_refused_and_writes_nothing(hostile, random_tiny_checkpoint,
                                                                                 capsys):
    out = hostile["base"] / "deep" / "er" / "out"
    code = render_main([str(hostile["manifest"]), "--output", str(out), "--run-id", "../../../x", "--checkpoint",
                        str(random_tiny_checkpoint)])
    assert code == 2
    assert "--run-id '../../../x': use letters, digits" in capsys.readouterr().err
    assert not (hostile["base"] / "deep").exists() and not list(hostile["base"].parent.glob("x*"))
