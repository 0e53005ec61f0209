"""List+watch semantics with a scripted API: 410 re-lists, watches are bounded and resume."""

from __future__ import annotations

import json
import threading

from kubernetes.client.rest import ApiException

from controller.informer import PAGE_SIZE, Informer


class Response:
    def __init__(self, body=None, events=()):
        self.data = json.dumps(body).encode() if body is not None else b""
        self.events = events

    def stream(self, amt=None, decode_content=False):
        for event in self.events:
            yield (json.dumps(event) + "\n").encode()

    def release_conn(self):
        pass


def obj(name, version):
    return {"metadata": {"name": name, "resourceVersion": version}}


def test_relists_on_410_and_resumes_watches_from_the_last_version():
    stop = threading.Event()
    calls, seen = [], []
    lists = iter([("10", [obj("a", "9")]), ("20", [obj("a", "19"), obj("b", "20")]), ("30", [])])
    watches = iter(
        [
            # first watch ends (server-side timeout) after one event: resume from its version
            [{"type": "ADDED", "object": obj("b", "11")}],
            # then a bookmark moves the version on, and the server says the version is gone
            [{"type": "BOOKMARK", "object": obj("", "15")}, {"type": "ERROR", "object": {"code": 410}}],
            ApiException(status=410),  # a 410 can also come as the watch's HTTP status
        ]
    )

    def list_call(**kwargs):
        calls.append(kwargs)
        if not kwargs.get("watch"):
            version, items = next(lists)
            return Response({"metadata": {"resourceVersion": version}, "items": items})
        script = next(watches, None)
        if script is None:
            stop.set()
            return Response(events=[])
        if isinstance(script, Exception):
            raise script
        return Response(events=script)

    def handler(kind, item):
        seen.append((kind, item["metadata"]["name"]))

    informer = Informer("test", list_call, handler, stop, watch_timeout=7, label_selector="x")
    informer.start()
    informer.join(5)
    assert not informer.alive()
    assert informer.lists == 3 and informer.synced.is_set()
    watch_calls = [c for c in calls if c.get("watch")]
    assert [c["resource_version"] for c in watch_calls] == ["10", "11", "20", "30"]
    assert all(c["timeout_seconds"] == 7 and c["label_selector"] == "x" for c in watch_calls)
    assert all(c["allow_watch_bookmarks"] for c in watch_calls)
    assert seen[:2] == [("SYNC", "a"), ("ADDED", "b")] and ("SYNC", "b") in seen
    assert ("BOOKMARK", "") not in seen


def test_lists_page_by_page_and_watches_from_the_snapshot_version():
    stop = threading.Event()
    pages = {None: ("p2", ["a", "b"]), "p2": ("p3", ["c", "d"]), "p3": ("", ["e"])}
    calls, seen = [], []

    def list_call(**kwargs):
        calls.append(kwargs)
        if kwargs.get("watch"):
            stop.set()
            return Response(events=[])
        token, items = pages[kwargs.get("_continue")]
        meta = {"resourceVersion": "42"} | ({"continue": token} if token else {})
        return Response({"metadata": meta, "items": [obj(name, "42") for name in items]})

    informer = Informer("paged", list_call, lambda kind, item: seen.append(item["metadata"]["name"]), stop)
    informer.start()
    informer.join(5)
    lists = [c for c in calls if not c.get("watch")]
    assert [c.get("_continue") for c in lists] == [None, "p2", "p3"]
    assert all(c["limit"] == PAGE_SIZE for c in lists)
    assert seen == ["a", "b", "c", "d", "e"] and informer.lists == 1
    assert next(c for c in calls if c.get("watch"))["resource_version"] == "42"
