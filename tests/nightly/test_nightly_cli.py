"""`eartalk nightly` argument and input errors (exit 2, the cause named), and a night with nothing new."""

from __future__ import annotations

import json
import re
import shutil

import mlflow
import pandas as pd
import pytest

from jobs.cli import main as eartalk
from jobs.nightly_dubbing import build_parser, main
from nightly import tracking


def test_missing_catalog_exits_2_naming_it(tmp_path, capsys):
    assert main(["--catalog", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert f"catalog {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_malformed_catalog_exits_2_naming_the_line(tmp_path, capsys, mlflow_tracking_uri):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "catalog.jsonl").write_text(json.dumps({"item": "a", "language": "en"}) + "\n")
    code = main(["--catalog", str(tmp_path / "cat"), "--output", str(tmp_path / "out"),
                 "--tracking-uri", mlflow_tracking_uri])
    assert code == 2
    assert "catalog.jsonl line 1: missing portrait, audio" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--catalog", "c", "--output", "o", "--date", "24-11-2026"], r"--date must be YYYY-MM-DD"),
    (["--catalog", "c", "--output", "o", "--max-failed-fraction", "1.5"], r"must lie in \[0, 1\]"),
    ([], r"the following arguments are required: --catalog, --output"),
    # Regression guard: these passed the parser and failed later with a traceback, --actors 0 only after
    # attempt-01/manifest.jsonl was written.
    (["--catalog", "c", "--output", "o", "--actors", "0"], r"--actors: must be >= 1, got 0"),
    (["--catalog", "c", "--output", "o", "--max-attempts", "0"], r"--max-attempts: must be >= 1, got 0"),
    (["--catalog", "c", "--output", "o", "--gpus-per-actor", "-1"], r"--gpus-per-actor: must be >= 0, got -1"),
    (["--catalog", "c", "--output", "o", "--report-rows", "x"], r"--report-rows: must be an integer, got 'x'"),
])
def test_bad_arguments_are_refused_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_missing_checkpoint_exits_2_before_anything_is_written(tmp_path, capsys, shared_media):
    """Regression guard: a missing --checkpoint failed inside the render with a traceback (exit 1), after
    the night's manifest was written."""
    (tmp_path / "cat" / "obama" / "audio").mkdir(parents=True)
    shutil.copy(shared_media / "portraits" / "obama.jpg", tmp_path / "cat" / "obama" / "portrait.jpg")
    shutil.copy(shared_media / "speech" / "english.wav", tmp_path / "cat" / "obama" / "audio" / "en.wav")
    common = ["--catalog", str(tmp_path / "cat"), "--output", str(tmp_path / "out"),
              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(common + ["--checkpoint", str(tmp_path / "gone")]) == 2
    assert f"checkpoint {tmp_path / 'gone'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    # A checkpoint that exists but does not load is found by the render: still exit 2, the cause named.
    (tmp_path / "empty-checkpoint").mkdir()
    assert main(common + ["--checkpoint", str(tmp_path / "empty-checkpoint")]) == 2
    assert "empty-checkpoint" in capsys.readouterr().err


def test_a_pair_the_catalog_cannot_render_is_recorded_failed_not_exit_2(tmp_path, capsys, mlflow_tracking_uri):
    """Regression guard: one catalog line naming a missing file made the whole night exit 2."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "catalog.jsonl").write_text(json.dumps(
        {"item": "a", "language": "en", "portrait": "gone.jpg", "audio": "gone.wav"}) + "\n")
    code = main(["--catalog", str(tmp_path / "cat"), "--output", str(tmp_path / "out"), "--date", "2026-11-24",
                 "--tracking-uri", mlflow_tracking_uri])
    assert code == 1
    assert "rendered tonight: 0 ok, 1 failed" in capsys.readouterr().out
    [row] = pd.read_parquet(tmp_path / "out" / "nightly" / "ledger.parquet").to_dict("records")
    assert row["status"] == "failed" and row["error"].startswith(f"a/en: {tmp_path / 'cat' / 'gone.jpg'}: file")
    assert not (tmp_path / "out" / "nightly" / "2026-11-24" / "attempt-01").exists()  # nothing to render


def test_eartalk_dispatches_nightly_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        eartalk(["nightly", "--help"])
    assert exit_.value.code == 0 and "--catalog" in capsys.readouterr().out


def test_a_night_with_nothing_new_logs_its_counts_and_exits_0(tmp_path, capsys, mlflow_tracking_uri):
    (tmp_path / "cat" / "newcomer").mkdir(parents=True)  # a face without dubbed tracks yet
    code = main(["--catalog", str(tmp_path / "cat"), "--output", str(tmp_path / "out"), "--date", "2026-11-24",
                 "--tracking-uri", mlflow_tracking_uri])
    assert code == 0
    assert "nightly 2026-11-24: nothing-new" in capsys.readouterr().out
    mlflow.set_tracking_uri(mlflow_tracking_uri)
    [run] = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="list")
    assert run.data.tags[tracking.TAG_STATUS] == "nothing-new"
    assert run.data.tags[tracking.TAG_DATE] == "2026-11-24"
    assert run.data.metrics["nightly/pairs_catalog"] == 0 and run.data.metrics["nightly/rendered_ok"] == 0
    assert not (tmp_path / "out" / "nightly" / "2026-11-24").exists()  # nothing rendered, no report
