"""The driver's lease on a run: render actors publish only while the driver that started them is alive.

Ray kills a dead driver's actors, but not at once: an actor busy in a batch when its driver is SIGKILLed (or its
node lost) can still encode and upload for a while, racing a rerun of the same run id. So the driver renews
a lease in the output store, `<output>/leases/<run_id>.json` = {"holder", "beat"}, every LEASE_BEAT_S, and
each render actor checks it before each publish (`LeaseWatch.check`, one small GET):

- another holder there: a newer driver of the run took over (the older one, alive or not, stops renewing
  once it sees that), so this actor's driver is gone;
- the same holder but its beat unchanged for LEASE_TIMEOUT_S of the actor's own monotonic clock: the
  driver stopped renewing (killed). Only the actor's clock measures the wait, so clock skew between nodes
  does not matter, and any node that reaches the output store can check.

Either way the publish is refused (the row fails with the reason) and nothing more is uploaded. The object
store is the one thing every node of the job shares, which is why the lease lives there and not in Ray.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import storage

log = logging.getLogger("eartalk.render")

LEASE_DIR = "leases"  # <output>/leases/<run_id>.json
LEASE_BEAT_S = 2.0  # s between the driver's renewals
LEASE_TIMEOUT_S = 15.0  # s without a renewal, by the actor's clock, after which its driver counts as gone


class DriverGone(RuntimeError):
    """The driver that started this actor no longer holds its run's lease: publishing is refused."""


def lease_uri(output_uri: str, run_id: str) -> str:
    return storage.join(output_uri, LEASE_DIR, f"{run_id}.json")


class DriverLease:
    """The driver's side: a daemon thread that renews the lease every `beat_s` while the run goes on.

    A renewal that fails (the store unreachable) is logged and retried at the next beat; the actors then
    see no renewal and stop publishing once `LEASE_TIMEOUT_S` passes, as they would for a dead driver.
    """

    def __init__(self, output_uri: str, run_id: str, options: storage.StorageOptions, beat_s: float = LEASE_BEAT_S):
        self.uri, self.options, self.beat_s = lease_uri(output_uri, run_id), options, beat_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.beat = 0
        self.superseded: str | None = None  # the newer driver that took the lease over, if one did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eartalk-lease", daemon=True)

    def renew(self) -> None:
        self.beat += 1
        storage.publish_bytes(json.dumps({"holder": self.holder, "beat": self.beat, "at": time.time()}).encode(),
                              self.uri, self.options)

    def holder_now(self) -> str | None:
        """Who holds the lease in the store now (None: no lease there, or unreadable)."""
        try:
            return json.loads(storage.read_bytes(self.uri, self.options)).get("holder")
        except Exception:  # the store is away or the lease is gone: renewing says which
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.beat_s):
            holder = self.holder_now()
            if holder not in (None, self.holder):  # a newer driver of this run took over: it keeps the lease
                self.superseded = holder
                log.error("another driver (%s) took this run's lease %s: this driver's actors publish nothing more",
                          holder, self.uri)
                return
            try:
                self.renew()
            except Exception as e:  # the store is away for now: the next beat tries again
                log.warning("renewing the run's lease %s failed (%s: %s)", self.uri, type(e).__name__, e)

    def __enter__(self) -> DriverLease:
        try:
            self.renew()  # held before any actor starts: an actor's first check finds it
        except Exception as e:  # the store is away: the beats retry, and an actor waits LEASE_TIMEOUT_S for one
            log.warning("taking the run's lease %s failed (%s: %s)", self.uri, type(e).__name__, e)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.beat_s + 30)


class LeaseWatch:
    """The actor's side: `check()` before each publish raises DriverGone once its driver's lease lapsed."""

    def __init__(self, uri: str, holder: str, options: storage.StorageOptions, timeout_s: float = LEASE_TIMEOUT_S):
        self.uri, self.holder, self.options, self.timeout_s = uri, holder, options, timeout_s
        self.beat: int | None = None
        self.renewed = time.monotonic()  # the actor's start counts as a renewal: its driver just made it

    def check(self) -> None:
        try:
            lease = json.loads(storage.read_bytes(self.uri, self.options))
        except Exception as e:  # unreadable (the store away, or removed): no renewal seen, the clock runs on
            lease, why = None, f"{type(e).__name__}: {e}"
        if lease is not None:
            if lease.get("holder") != self.holder:
                raise DriverGone(f"another driver ({lease.get('holder')}) holds this run's lease {self.uri}: "
                                 f"this actor's driver ({self.holder}) is gone, so it publishes nothing more")
            if lease.get("beat") != self.beat:
                self.beat, self.renewed = lease.get("beat"), time.monotonic()
                return
            why = f"its beat stayed at {self.beat}"
        waited = time.monotonic() - self.renewed
        if waited > self.timeout_s:
            raise DriverGone(f"the driver's lease {self.uri} was not renewed for {waited:.0f} s ({why}): "
                             f"its driver is gone, so this actor publishes nothing more")
