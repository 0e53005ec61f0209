"""A replica that may have lost its Lease sends no write (the two-leaders risk, decided without a server)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from kubernetes import client

from controller import leader
from controller.runtime import Controller, NotLeading, Options


def controller(**options) -> Controller:
    return Controller(client.ApiClient(), Options(health_addr=None, **options))


def test_writes_are_fenced_once_the_last_renew_is_older_than_the_renew_deadline():
    ctl = controller(renew_deadline=4)
    with pytest.raises(NotLeading):
        ctl._before_write("create", "pods")  # never elected
    ctl.elector.is_leader.set()
    ctl.elector._renewed_at = time.monotonic()
    ctl._before_write("create", "pods")
    assert ctl.metrics.writes.labels("create", "pods")._value.get() == 1
    ctl.elector._renewed_at -= 4.5  # paused (SIGSTOP, a frozen VM) past the deadline: others may lead
    with pytest.raises(NotLeading, match="no longer holds the Lease"):
        ctl._before_write("update", "deeplabtrainings/status")
    assert ctl.metrics.writes.labels("update", "deeplabtrainings/status")._value.get() == 0


def test_without_leader_election_nothing_is_fenced():
    ctl = controller(leader_elect=False)
    ctl._before_write("create", "pods")


def test_a_fenced_reconcile_is_tried_again_not_dropped():
    """A leader late to renew (a pause, nobody took over) renews and must still reconcile the key: its
    requeue chain (deadline, TTL, progress polling) is not lost until the next resync."""
    ctl = controller(renew_deadline=4, retry_period=0.05)

    def fenced(key):
        ctl._before_write("update", "deeplabtrainings/status")  # never elected: refused

    ctl.reconcile = fenced
    ctl._process(("ns", "late"))
    assert ctl.metrics.reconciles.labels("fenced")._value.get() == 1
    assert ctl.queue.get(timeout=2) == ("ns", "late")
    ctl.queue.shutdown()  # a replica that lost the Lease stops: the key is refused, nothing spins
    ctl.queue.add_after(("ns", "late"), 0.01)
    assert ctl.queue.get(timeout=0.2) is None


def test_a_renewal_counts_from_when_it_was_sent_not_from_its_late_reply(monkeypatch):
    """Paused between sending a renew and reading its 200 (1 run in 9 of tests/cluster/test_lost_lease.py),
    a replica wakes to a "successful" renewal as old as the pause: it must not pass the fence for it."""
    clock = {"now": 100.0}
    monkeypatch.setattr(leader, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    elector = leader.LeaderElector(client.ApiClient(), "ns", "lease", "me", 5, renew_deadline=4)

    def renew(took: float):
        def attempt() -> bool:
            clock["now"] += took  # sent at the start, the reply read `took` seconds later
            return True

        return attempt

    elector.is_leader.set()
    elector.try_acquire_or_renew = renew(0.05)
    assert elector._attempt() and elector.leading()
    elector.try_acquire_or_renew = renew(6.0)  # SIGSTOP after sending, SIGCONT 6 s later
    assert elector._attempt()
    assert not elector.leading(), "a renewal sent 6 s ago, longer than the renew deadline, still counted"
