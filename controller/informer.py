"""List + watch with resourceVersion, surviving what the python client's Watch does not.

- ``410 Gone`` (the resourceVersion was compacted away): list again, then watch from the new list.
- Silent stalls behind proxies: every watch is bounded by ``timeout_seconds`` and restarted from
  the last resourceVersion seen (bookmarks keep it fresh on quiet resources).
- Errors: back off (at most ``MAX_BACKOFF``) and list again; a list re-delivers every object, so no
  event is lost for good. The cap is short: after an API server restart the controller should see
  changes again within seconds, and one list per informer every few seconds costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

MAX_BACKOFF = 8.0
# Objects per list page. 50: a page of 4,096-worker pods with a 100 KiB template is ~5 MiB of JSON; at 250
# the controller peaked at 275 MiB, over its 256 Mi limit (bench/README.md, "Controller memory").
PAGE_SIZE = 50
Handler = Callable[[str, dict[str, Any]], None]  # (event type, object); "SYNC" for listed objects


class Gone(Exception):
    """The watch's resourceVersion is too old: re-list."""


class Informer:
    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        handler: Handler,
        stop: threading.Event,
        watch_timeout: int = 60,
        **selectors: Any,
    ):
        self.name, self.list_call, self.handler, self.stop = name, list_call, handler, stop
        self.watch_timeout, self.selectors = watch_timeout, selectors
        self.synced = threading.Event()
        self.lists = 0  # visible to tests: how often a (re-)list happened
        self._response = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # a dead socket has nothing to report
                # shutdown() unblocks a read in another thread (close() alone waits for the next line)
                getattr(response, "shutdown", response.close)()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                version = self._list()
                delay = 0.5
                self._watch_loop(version)
            except Gone:
                log.info("%s: resourceVersion expired (410); re-listing", self.name)
            except Exception as error:  # any failure: back off, then list again
                if self.stop.is_set():
                    break
                log.warning("%s: list/watch failed (%r); re-listing in %.1fs", self.name, error, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    def _list(self) -> str:
        """List page by page (``PAGE_SIZE`` objects each, one consistent snapshot): an unpaged list of
        4,096 pods with large templates would be one response of hundreds of MiB."""
        token, version = None, ""
        while True:
            paging = {"limit": PAGE_SIZE} | ({"_continue": token} if token else {})
            response = self.list_call(_preload_content=False, _request_timeout=30, **paging, **self.selectors)
            body = json.loads(response.data)
            for item in body.get("items", []):
                self.handler("SYNC", item)
            meta = body.get("metadata") or {}
            version, token = meta.get("resourceVersion", version), meta.get("continue")
            if not token:
                break
        self.lists += 1
        self.synced.set()
        return version

    def _watch_loop(self, version: str) -> None:
        while not self.stop.is_set():
            version = self._watch_once(version)

    def _watch_once(self, version: str) -> str:
        try:
            response = self.list_call(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,  # server-side bound
                _preload_content=False,
                _request_timeout=(10, self.watch_timeout + 15),  # client-side bound, in case of a stall
                **self.selectors,
            )
        except ApiException as error:
            if error.status == 410:
                raise Gone from error
            raise
        self._response = response
        try:
            for line in iter_resp_lines(response):
                if self.stop.is_set():
                    break
                if line:
                    version = self._event(json.loads(line), version)
        finally:
            self._response = None
            response.release_conn()
        return version

    def _event(self, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone
            raise RuntimeError(f"watch error: {obj.get('message')}")
        new_version = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind != "BOOKMARK":
            self.handler(kind, obj)
        return new_version
