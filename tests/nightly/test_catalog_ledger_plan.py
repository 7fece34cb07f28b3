"""Catalog reading, content hashing, the ledger and tonight's plan: local folders and a real S3 API (moto)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import storage
from nightly.catalog import CatalogError, hash_pairs, read_catalog
from nightly.ledger import LEDGER_SCHEMA, Ledger, LedgerError
from nightly.plan import manifest_rows, plan_night, row_id, write_manifest


def make_catalog(root: Path, media: Path) -> Path:
    """obama: en + de tracks (de with a control track); biden: fr track; an item without audio is ignored."""
    for item, portrait, tracks in [("obama", "obama.jpg", ["english", "german"]), ("biden", "biden.jpg", ["french"])]:
        (root / item / "audio").mkdir(parents=True)
        shutil.copy(media / "portraits" / portrait, root / item / "portrait.jpg")
        for track in tracks:
            shutil.copy(media / "speech" / f"{track}.wav", root / item / "audio" / f"{track[:2]}.wav")
    (root / "obama" / "controls").mkdir()
    (root / "obama" / "controls" / "ge.json").write_text(json.dumps({"yaw": [0.0, 5.0]}))
    (root / "newcomer").mkdir()
    shutil.copy(media / "portraits" / "obama2.jpg", root / "newcomer" / "portrait.jpg")
    return root


def ledger_rows(hashed, status: str, night: str = "2026-11-23") -> pd.DataFrame:
    return pd.DataFrame([{
        "pair_id": h.pair.pair_id, "item": h.pair.item, "language": h.pair.language, "input_hash": h.input_hash,
        "portrait_sha256": h.portrait_sha256, "audio_sha256": h.audio_sha256, "controls_sha256": h.controls_sha256,
        "night": night, "attempt": 1, "id": row_id(h), "output_uri": f"/out/{row_id(h)}.mp4", "status": status,
        "error": "" if status == "ok" else "boom", "model_version": "tiny-abc", "run_id": "r", "mlflow_run_id": "m",
        "recorded_at": "2026-11-24T02:00:00Z"} for h in hashed])


def test_folder_catalog_lists_one_pair_per_item_and_language(tmp_path, shared_media):
    pairs = read_catalog(str(make_catalog(tmp_path / "cat", shared_media)))
    assert [p.pair_id for p in pairs] == ["biden/fr", "obama/en", "obama/ge"]
    by_id = {p.pair_id: p for p in pairs}
    assert by_id["obama/ge"].controls.endswith("obama/controls/ge.json")
    assert by_id["obama/en"].controls is None
    assert by_id["obama/en"].portrait == by_id["obama/ge"].portrait


def test_jsonl_catalog_resolves_relative_paths_and_keeps_tags(tmp_path, shared_media):
    root = make_catalog(tmp_path / "cat", shared_media)
    (root / "catalog.jsonl").write_text(
        json.dumps({"item": "obama", "language": "en", "portrait": "obama/portrait.jpg",
                    "audio": str(root / "obama/audio/en.wav"), "speaker": "narrator", "fps": 30}) + "\n\n")
    [pair] = read_catalog(str(root))
    assert pair.portrait == str(root / "obama/portrait.jpg") and pair.fps == 30.0
    assert pair.tags == {"speaker": "narrator"}


@pytest.mark.parametrize("line, message", [
    ("{not json", r"catalog.jsonl line 1: not valid JSON"),
    ('{"item": "a", "language": "en", "portrait": "p.jpg"}', r"line 1: missing audio"),
    ('{"item": "a b", "language": "en", "portrait": "p.jpg", "audio": "a.wav"}', r"line 1: item 'a b' must match"),
    ('{"item": "a", "language": "en", "portrait": "p.jpg", "audio": "a.wav", "fps": 0}', r"fps must be positive"),
])
def test_malformed_catalog_line_is_named_in_the_error(tmp_path, line, message):
    (tmp_path / "catalog.jsonl").write_text(line + "\n")
    with pytest.raises(CatalogError, match=message):
        read_catalog(str(tmp_path))


def test_folder_catalog_problems_fail_only_the_pairs_of_their_item(tmp_path, shared_media):
    """Regression guard: two portraits, an orphan control track or an unsafe folder name in one item raised
    CatalogError, and the whole night exited 2 with nothing rendered."""
    root = make_catalog(tmp_path / "cat", shared_media)
    shutil.copy(shared_media / "portraits" / "obama.jpg", root / "biden" / "portrait.png")
    (root / "obama" / "controls" / "ja.json").write_text("{}")
    shutil.copytree(root / "obama", root / "o bama")
    problems = {p.pair_id: p.problem for p in read_catalog(str(root))}
    assert problems["obama/en"] is None and problems["obama/ge"] is None
    assert re.search(r"/biden: expected exactly one portrait.*found 2$", problems["biden/fr"])
    assert re.search(r"/obama: control track 'ja' has no audio track", problems["obama/ja"])
    assert re.search(r"/o bama: item 'o bama' must match", problems["o bama/en"])
    hashed = {h.pair.pair_id: h for h in hash_pairs(read_catalog(str(root)))}
    assert hashed["biden/fr"].problem == problems["biden/fr"] and hashed["obama/en"].problem is None
    with pytest.raises(CatalogError, match=r"no such folder"):
        read_catalog(str(tmp_path / "absent"))


def test_missing_file_in_catalog_fails_its_pair_only(tmp_path, shared_media):
    """Regression guard: one stale catalog line pointing at a missing file made hash_pairs raise."""
    shutil.copy(shared_media / "portraits" / "obama.jpg", tmp_path / "obama.jpg")
    shutil.copy(shared_media / "speech" / "english.wav", tmp_path / "en.wav")
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"item": "a", "language": "en", "portrait": "gone.jpg", "audio": "en.wav"},
        {"item": "b", "language": "en", "portrait": "obama.jpg", "audio": "en.wav"}]))
    stale, fine = hash_pairs(read_catalog(str(tmp_path)))
    assert stale.problem == f"a/en: {tmp_path / 'gone.jpg'}: file listed in the catalog does not exist"
    assert fine.problem is None and fine.portrait_sha256
    again, _ = hash_pairs(read_catalog(str(tmp_path)))
    assert again.input_hash == stale.input_hash != fine.input_hash  # stable: its failures are counted

    plan = plan_night([stale, fine], Ledger.load(str(tmp_path / "ledger.parquet")), "2026-11-24")
    assert plan.to_render == [fine] and plan.broken == [stale] and plan.counts()["new"] == 2
    assert [r["pair_id"] for r in manifest_rows(plan)] == ["b/en"]
    ledger = Ledger.load(str(tmp_path / "ledger.parquet"))
    ledger.record(ledger_rows([stale], "failed"))
    ledger.record(ledger_rows([stale], "failed"))
    assert plan_night([stale, fine], ledger, "2026-11-25", max_attempts=2).given_up == [stale]


def test_plan_renders_new_pairs_skips_rendered_and_rerenders_changed_inputs(tmp_path, shared_media):
    root = make_catalog(tmp_path / "cat", shared_media)
    ledger = Ledger.load(str(tmp_path / "ledger.parquet"))
    first = hash_pairs(read_catalog(str(root)))
    plan = plan_night(first, ledger, "2026-11-23")
    assert plan.counts() == {"new": 3, "changed": 0, "retry": 0, "unchanged": 0, "given_up": 0}
    ledger.record(ledger_rows(first, "ok"))

    # same inputs again: nothing to do
    again = plan_night(hash_pairs(read_catalog(str(root))), Ledger.load(ledger.uri), "2026-11-24")
    assert again.to_render == [] and len(again.unchanged) == 3

    # a re-dubbed track (new bytes) and changed controls are rendered again; the rest is not
    shutil.copy(shared_media / "speech" / "japanese.wav", root / "biden" / "audio" / "fr.wav")
    (root / "obama" / "controls" / "ge.json").write_text(json.dumps({"yaw": [0.0, -5.0]}))
    changed = plan_night(hash_pairs(read_catalog(str(root))), Ledger.load(ledger.uri), "2026-11-24")
    assert sorted(h.pair.pair_id for h in changed.changed) == ["biden/fr", "obama/ge"]
    assert [h.pair.pair_id for h in changed.unchanged] == ["obama/en"]
    assert {row_id(h) for h in changed.changed}.isdisjoint({row_id(h) for h in first})


def test_failed_inputs_are_retried_until_max_attempts(tmp_path, shared_media):
    hashed = hash_pairs(read_catalog(str(make_catalog(tmp_path / "cat", shared_media))))[:1]
    ledger = Ledger.load(str(tmp_path / "ledger.parquet"))
    ledger.record(ledger_rows(hashed, "failed"))
    assert len(plan_night(hashed, ledger, "2026-11-24", max_attempts=2).retry) == 1
    ledger.record(ledger_rows(hashed, "failed"))
    assert len(plan_night(hashed, ledger, "2026-11-24", max_attempts=2).given_up) == 1


def test_manifest_rows_carry_render_columns_and_nightly_tags(tmp_path, shared_media):
    hashed = hash_pairs(read_catalog(str(make_catalog(tmp_path / "cat", shared_media))))
    plan = plan_night(hashed, Ledger.load(str(tmp_path / "l.parquet")), "2026-11-24")
    rows = manifest_rows(plan)
    write_manifest(rows, str(tmp_path / "m" / "manifest.jsonl"))
    read = [json.loads(l) for l in (tmp_path / "m" / "manifest.jsonl").read_text().splitlines()]
    assert read == rows and len({r["id"] for r in rows}) == 3
    ge = next(r for r in rows if r["pair_id"] == "obama/ge")
    assert {"id", "portrait", "audio", "controls", "fps", "seed", "language", "input_hash", "nightly_date"} <= set(ge)
    assert "controls" not in next(r for r in rows if r["pair_id"] == "obama/en")


def test_skipped_rows_in_an_older_ledger_count_as_rendered(tmp_path, shared_media):
    """Regression guard: ledgers written before a resumed render's 'skipped' rows were recorded as 'ok'
    hold them as 'skipped'; planned as new, those pairs would render a second time."""
    hashed = hash_pairs(read_catalog(str(make_catalog(tmp_path / "cat", shared_media))))
    Ledger.load(str(tmp_path / "ledger.parquet")).record(ledger_rows(hashed, "skipped"))
    plan = plan_night(hashed, Ledger.load(str(tmp_path / "ledger.parquet")), "2026-11-24")
    assert plan.to_render == [] and len(plan.unchanged) == 3


def test_unreadable_ledger_is_reported_not_overwritten(tmp_path):
    path = tmp_path / "ledger.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(LedgerError, match=r"ledger .*ledger.parquet: not a readable Parquet file"):
        Ledger.load(str(path))
    assert path.read_bytes() == b"not parquet"


def test_catalog_and_ledger_on_s3(s3_server, s3_bucket, tmp_path, shared_media, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    fs = s3_server.filesystem()
    local = make_catalog(tmp_path / "cat", shared_media)
    fs.put(str(local) + "/", f"{s3_bucket}/catalog/", recursive=True)
    remote = read_catalog(f"s3://{s3_bucket}/catalog")
    assert [p.pair_id for p in remote] == ["biden/fr", "obama/en", "obama/ge"]
    assert remote[0].portrait == f"s3://{s3_bucket}/catalog/biden/portrait.jpg"
    hashed = hash_pairs(remote)
    assert [h.input_hash for h in hashed] == [h.input_hash for h in hash_pairs(read_catalog(str(local)))]

    ledger = Ledger.load(f"s3://{s3_bucket}/out/nightly/ledger.parquet")
    ledger.record(ledger_rows(hashed, "ok"))
    reloaded = Ledger.load(ledger.uri)
    assert list(reloaded.table.columns) == LEDGER_SCHEMA.names and len(reloaded.table) == 3
    assert fs.ls(f"{s3_bucket}/out/nightly") == [f"{s3_bucket}/out/nightly/ledger.parquet"]  # no temporary left
    assert storage.exists(ledger.uri)


def test_attempt_that_crashed_before_the_ledger_is_recovered_not_rerendered(tmp_path, shared_media):
    """Regression guard: results written by a render whose nightly died before recording them in the
    ledger must count as rendered on the re-run, or the re-run renders those pairs a second time."""
    from metrics.schema import write_results
    from nightly.attempts import recover_unrecorded_attempts
    from nightly.config import NightlyConfig

    root = make_catalog(tmp_path / "cat", shared_media)
    config = NightlyConfig(catalog_uri=str(root), output_uri=str(tmp_path / "out"), night="2026-11-24")
    hashed = hash_pairs(read_catalog(str(root)))
    ledger = Ledger.load(config.ledger_uri)
    rows = manifest_rows(plan_night(hashed, ledger, config.night))
    attempt = Path(config.attempt_uri(1))
    write_manifest(rows, str(attempt / "manifest.jsonl"))
    write_results(pd.DataFrame([
        {"id": r["id"], "status": "ok", "error": "", "output_uri": str(attempt / "videos" / f"{r['id']}.mp4"),
         "model_version": "tiny-1", "run_id": "nightly-2026-11-24-a01"} for r in rows[:2]]),
        str(attempt / "results" / "part-0.parquet"))

    assert recover_unrecorded_attempts(config, ledger) == [1]
    assert recover_unrecorded_attempts(config, Ledger.load(config.ledger_uri)) == []  # recorded once only
    reloaded = Ledger.load(config.ledger_uri)
    assert sorted(reloaded.table["status"]) == ["failed", "ok", "ok"]  # the row without a result failed
    plan = plan_night(hashed, reloaded, config.night)
    assert len(plan.unchanged) == 2 and len(plan.retry) == 1
    assert reloaded.next_attempt(config.night) == 2
