"""The resume scan (pipelines.render.published_results): which rows of a run are done, read from the results
file of its last attempt and, for the rows that file leaves open, from the state records, on local disk
and on a real moto S3 server; key by key and by listing."""

from __future__ import annotations

import json
import logging

import pytest

import storage
from metrics.schema import results_frame, write_results
from pipelines import render
from pipelines.render import published_results
from pipelines.stages import state_uri, video_uri

RUN = "run1"


def finished_row(output: str, row_id: str, row: int, **extra) -> dict:
    """A state record as the record stage writes it for an ok row."""
    return {"row": row, "id": row_id, "status": "ok", "error": "", "output_uri": video_uri(output, RUN, row_id),
            "frames": 25, "fps": 25.0, "run_id": RUN, "tags": "{}", **extra}


def leave_a_run(output: str, options) -> dict[str, dict]:
    """What earlier attempts of run RUN left under `output`, one case per row id:

    - tabled: ok and measured in the results file (its state record was removed: the file alone answers);
    - unmeasured: ok in the results file but never measured: its record answers (it has no metrics_error);
    - later: failed ('interrupted') in the results file, finished by a later attempt killed before writing one;
    - unlisted: not in the results file at all, finished like `later`;
    - no_video: a record, but its video is gone; no_record: a video alone; failed_record: a failed record;
    - old_key: ok in the results file under another video key (not this run's layout), no record.
    Returns the state records written, by id.
    """
    records = {
        "unmeasured": finished_row(output, "unmeasured", 1),
        "later": finished_row(output, "later", 2, metrics_error=""),
        "unlisted": finished_row(output, "unlisted", 3, metrics_error=""),
        "no_video": finished_row(output, "no_video", 4, metrics_error=""),
        "failed_record": {**finished_row(output, "failed_record", 6), "status": "failed", "error": "boom"},
    }
    for row_id, saved in records.items():
        storage.publish_bytes(json.dumps(saved).encode(), state_uri(output, RUN, row_id), options)
    for row_id in ("tabled", "unmeasured", "later", "unlisted", "no_record", "failed_record", "old_key"):
        storage.publish_bytes(b"mp4", video_uri(output, RUN, row_id), options)
    # a publish in progress: never a result, though its name ends in .json
    storage.publish_bytes(b"{", storage.join(output, "state", RUN, ".tmp-x-tabled.json"), options)
    table = [
        {**finished_row(output, "tabled", 0), "metrics_error": "", "sync_confidence": 2.5},
        {**finished_row(output, "unmeasured", 1), "metrics_error": None},
        {"id": "later", "status": "failed", "error": "row 2 (id 'later'): interrupted (SIGTERM) before it finished"},
        {**finished_row(output, "old_key", 7), "metrics_error": "", "output_uri": storage.join(output, "videos", "old_key.mp4")},
    ]
    write_results(results_frame(table, []), storage.join(output, "results", f"{RUN}.parquet"), options)
    return records


IDS = ["tabled", "unmeasured", "later", "unlisted", "no_video", "no_record", "failed_record", "old_key"]


def check_scan(output: str, options, records: dict[str, dict]) -> None:
    done = published_results(output, RUN, IDS, options)
    assert sorted(done) == ["later", "tabled", "unlisted", "unmeasured"]
    assert done["tabled"]["sync_confidence"] == 2.5 and done["tabled"]["status"] == "ok"  # from the results file
    assert done["unmeasured"] == records["unmeasured"]  # its record: no metrics_error, so the resume measures it
    assert "metrics_error" not in done["unmeasured"]
    assert done["later"] == records["later"] and done["unlisted"] == records["unlisted"]
    # rows this attempt rendered: the results file (an earlier attempt's) is not asked
    assert sorted(published_results(output, RUN, IDS, options, use_results=False)) == ["later", "unlisted", "unmeasured"]


@pytest.mark.parametrize("probe_rows", [render.RESUME_PROBE_ROWS, 0], ids=["key-by-key", "listing"])
def test_the_results_file_answers_for_its_done_rows_and_the_state_records_for_the_rest(tmp_path, monkeypatch, probe_rows):
    """Regression guard: the scan read every row's state record (672 s for 20,000 rows on a loopback S3);
    now the last results file answers for the rows it holds as done, and only the others are looked up."""
    monkeypatch.setattr(render, "RESUME_PROBE_ROWS", probe_rows)
    output = str(tmp_path / "out")
    options = storage.StorageOptions.from_env()
    check_scan(output, options, leave_a_run(output, options))


@pytest.mark.parametrize("probe_rows", [render.RESUME_PROBE_ROWS, 0], ids=["key-by-key", "listing"])
def test_the_resume_scan_on_s3(monkeypatch, s3_server, s3_bucket, probe_rows):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(render, "RESUME_PROBE_ROWS", probe_rows)
    output = f"s3://{s3_bucket}/out"
    options = storage.StorageOptions.from_env()
    check_scan(output, options, leave_a_run(output, options))


def test_an_unreadable_results_file_leaves_the_answer_to_the_state_records(tmp_path, caplog):
    output = str(tmp_path / "out")
    options = storage.StorageOptions.from_env()
    records = leave_a_run(output, options)
    storage.publish_file(tmp_path / "out" / "state" / RUN / "later.json", storage.join(output, "state", RUN, "tabled.json"),
                         options)  # a record for `tabled` too, so the records alone can answer for it
    storage.publish_bytes(b"PAR1 not really", storage.join(output, "results", f"{RUN}.parquet"), options)
    with caplog.at_level(logging.WARNING, logger="eartalk.render"):
        done = published_results(output, RUN, IDS, options)
    assert sorted(done) == ["later", "tabled", "unlisted", "unmeasured"]
    assert done["unlisted"] == records["unlisted"] and "sync_confidence" not in done["tabled"]
    assert "is unreadable" in caplog.text and "reading the state records instead" in caplog.text


def test_no_results_file_and_no_records_is_nothing_done(tmp_path):
    assert published_results(str(tmp_path / "out"), RUN, IDS, storage.StorageOptions.from_env()) == {}
