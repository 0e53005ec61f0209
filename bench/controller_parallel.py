"""Experiment: the controller with a reconcile's pod creations issued concurrently (proposed fix).

    python -m bench.operator_speed --controller-module bench.controller_parallel --sizes 512

``controller.runtime.Controller.reconcile`` applies its actions one by one, so a 512-worker attempt
is 512 sequential POSTs (one round trip each). Here the ``Create`` actions of one reconcile run on a
bounded thread pool (the official client's urllib3 pool is sized to match); everything else is the
shipped controller. Not used by the operator: it measures the effect of the change proposed for
controller/runtime.py.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client.rest import ApiException

from controller import __main__ as controller_main
from controller import kube, runtime
from controller.plan import Create

CONCURRENCY = 16


def _apply_all(self: runtime.Controller, key: Any, training: Any, actions: list) -> None:
    """Creates concurrently (independent objects, idempotent), the rest in order as before."""
    creates = [a for a in actions if isinstance(a, Create)]
    others = [a for a in actions if not isinstance(a, Create)]
    for action in others:
        self.kube.apply(training, action)

    def one(action: Create) -> ApiException | None:
        try:
            self.kube.apply(training, action)
        except ApiException as error:
            return error
        return None

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        errors = [e for e in pool.map(one, creates) if e is not None]
    if errors:
        raise errors[0]


def reconcile(self: runtime.Controller, key: Any) -> float | None:
    """runtime.Controller.reconcile with the action loop replaced by ``_apply_all``."""
    from datetime import datetime, timezone

    from controller import api
    from controller.plan import plan, rank0_pod

    namespace, name = key
    obj = self.kube.get_training(namespace, name)
    if obj is None:
        return None
    training = api.Training.from_obj(obj)
    running = training.status.phase == api.Phase.RUNNING
    want_logs = running and self._log_due(key)
    observed = self.kube.observe(training, (lambda cm: rank0_pod(training, cm)) if want_logs else None)
    result = plan(training, observed, datetime.now(timezone.utc))
    if result.status_changed:
        self.kube.replace_status(obj, result.status)
    for event in result.events:
        self.kube.event(training, event, self.identity)
    _apply_all(self, key, training, result.actions)
    delays = [d for d in (result.requeue_after,) if d is not None]
    if result.status.get("phase") not in runtime.FINISHED_OR_SUSPENDED:
        delays.append(self.options.log_interval)
    return min(delays) if delays else None


def main() -> int:
    runtime.Controller.reconcile = reconcile
    original = kube.api_client

    def api_client(*args: Any, **kwargs: Any):
        client = original(*args, **kwargs)
        client.rest_client.pool_manager.connection_pool_kw["maxsize"] = CONCURRENCY
        return client

    kube.api_client = api_client
    return controller_main.main()


if __name__ == "__main__":
    sys.exit(main())
