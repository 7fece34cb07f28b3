"""`eartalk nightly` argument and input errors (exit 2, the cause named), and a night with nothing new."""

from __future__ import annotations

import json
import re

import mlflow
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
])
def test_bad_arguments_are_refused_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


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
