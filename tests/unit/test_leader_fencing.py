"""A replica that may have lost its Lease sends no write (the two-leaders risk, decided without a server)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

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
