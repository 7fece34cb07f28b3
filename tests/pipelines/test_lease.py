"""The driver's lease (pipelines/lease.py): an actor publishes only while the driver that started it renews it.

The lease lives in the output store, local or S3; these tests renew and check it for real, with short beats.
"""

from __future__ import annotations

import json
import time

import pytest

import storage
from pipelines.lease import DriverGone, DriverLease, LeaseWatch, lease_uri


def wait_until_gone(watch: LeaseWatch, limit_s: float) -> float:
    """Seconds until `watch.check()` raises DriverGone (checked every 50 ms); fails past `limit_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            watch.check()
        except DriverGone:
            return time.monotonic() - t0
        time.sleep(0.05)
    pytest.fail(f"the lease still counted as held after {limit_s} s")


def test_a_renewed_lease_lets_the_actor_publish_and_a_stopped_one_stops_it_after_the_timeout(tmp_path):
    options = storage.StorageOptions.from_env()
    lease = DriverLease(str(tmp_path / "out"), "run1", options, beat_s=0.1)
    with lease:
        watch = LeaseWatch(lease_uri(str(tmp_path / "out"), "run1"), lease.holder, options, timeout_s=1.0)
        for _ in range(30):  # 1.5 s: longer than the timeout, but renewed all along
            watch.check()
            time.sleep(0.05)
    # the driver stops renewing (as a killed one does): refused once the timeout passes, not before
    gone_after = wait_until_gone(watch, limit_s=10)
    assert 0.8 < gone_after < 2.0, gone_after
    with pytest.raises(DriverGone, match=r"was not renewed for \d+ s \(its beat stayed at \d+\): its driver is gone"):
        watch.check()


def test_a_newer_driver_of_the_run_stops_the_old_drivers_actors_at_once(tmp_path):
    options = storage.StorageOptions.from_env()
    out = str(tmp_path / "out")
    old = DriverLease(out, "run1", options)
    old.renew()
    watch = LeaseWatch(lease_uri(out, "run1"), old.holder, options, timeout_s=60)
    watch.check()
    new = DriverLease(out, "run1", options)  # a rerun of the same run id, while an old actor still works
    new.renew()
    with pytest.raises(DriverGone, match=r"another driver \(.*\) holds this run's lease"):
        watch.check()
    assert json.loads(storage.read_bytes(lease_uri(out, "run1"), options))["holder"] == new.holder


def test_an_older_driver_stops_renewing_once_a_newer_one_took_the_lease(tmp_path):
    """Else the two would overwrite each other's lease at every beat, and each one's actors would refuse and
    accept publishing in turn."""
    options = storage.StorageOptions.from_env()
    out = str(tmp_path / "out")
    with DriverLease(out, "run1", options, beat_s=0.1) as old:
        time.sleep(0.3)
        new = DriverLease(out, "run1", options)
        new.renew()
        deadline = time.monotonic() + 10
        while old.superseded is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old.superseded == new.holder
        time.sleep(0.3)  # several of the old driver's beats: it renews no more
        assert json.loads(storage.read_bytes(lease_uri(out, "run1"), options)) == {
            "holder": new.holder, "beat": 1, "at": pytest.approx(time.time(), abs=30)}


def test_a_lease_never_written_stops_the_actor_after_the_timeout(tmp_path):
    watch = LeaseWatch(lease_uri(str(tmp_path / "out"), "run1"), "nobody", storage.StorageOptions.from_env(),
                       timeout_s=0.3)
    watch.check()  # just started: its driver may still be writing the lease
    assert wait_until_gone(watch, limit_s=5) < 1.5
    with pytest.raises(DriverGone, match="FileNotFoundError"):
        watch.check()


def test_the_lease_on_s3(monkeypatch, s3_server, s3_bucket):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    options = storage.StorageOptions.from_env()
    out = f"s3://{s3_bucket}/out"
    with DriverLease(out, "run1", options, beat_s=0.2) as lease:
        watch = LeaseWatch(lease_uri(out, "run1"), lease.holder, options, timeout_s=2.0)
        watch.check()
        first = watch.beat
        t0 = time.monotonic()
        while watch.beat == first and time.monotonic() - t0 < 10:  # a loaded machine's S3 writes take time
            time.sleep(0.1)
            watch.check()
        assert watch.beat > first  # renewed meanwhile, through the store
    assert wait_until_gone(watch, limit_s=20) > 1.0
