"""Property tests of the rank-table builder: for any set of pods and any device-plugin annotation
(valid, garbage, or of the wrong shape), the table HCCL reads is well formed."""

from __future__ import annotations

import ipaddress
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from controller import ranktable
from controller.ranktable import Worker

HOSTS = [f"172.16.0.{i}" for i in range(1, 7)] + ["fd00::1", "fd00::2"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
device_ids = st.one_of(
    st.integers(0, 15),
    st.integers(-3, 10**7),
    st.from_regex(r"\A[0-9]{1,3}\Z"),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.just("٣"),  # a non-ASCII digit
)
device_ips = st.one_of(st.ip_addresses().map(str), st.text(max_size=12), st.none(), st.integers())
plugin_annotations = st.builds(
    lambda ids, ips, extra: json.dumps(
        {
            "pod_name": "0",
            "server_id": "x",
            "devices": [{"device_id": i, "device_ip": ip} for i, ip in zip(ids, ips, strict=False)],
            **extra,
        }
    ),
    st.lists(device_ids, max_size=2),
    st.lists(device_ips, min_size=2, max_size=2),
    st.dictionaries(st.sampled_from(["devices", "other"]), json_values, max_size=1),
)
annotations = st.one_of(st.none(), st.text(max_size=30), json_values.map(json.dumps), plugin_annotations)


@st.composite
def worker_sets(draw) -> list[Worker]:
    count = draw(st.integers(1, 24))
    # any indexes (normally 0..N-1, but a stray labelled pod may carry anything), unique pod names
    indexes = draw(st.lists(st.integers(0, 4095), min_size=count, max_size=count))
    hosts = draw(st.lists(st.sampled_from(HOSTS), min_size=count, max_size=count))
    notes = draw(st.lists(annotations, min_size=count, max_size=count))
    return [
        Worker(f"pod-{n}", index, f"10.244.{n // 250}.{n % 250}", host, note)
        for n, (index, host, note) in enumerate(zip(indexes, hosts, notes, strict=True))
    ]


@settings(max_examples=300, deadline=None)
@given(worker_sets())
def test_ranks_are_0_to_n_minus_1_unique_contiguous_per_server_and_every_pod_once(workers):
    assert ranktable.ready(workers, len(workers))
    table, ranks = ranktable.build(workers)

    # every pod appears exactly once, ranks are exactly 0..N-1
    assert set(ranks) == {w.name for w in workers}
    assert sorted(ranks.values()) == list(range(len(workers)))
    listed = [int(d["rank_id"]) for s in table["server_list"] for d in s["device"]]
    assert listed == list(range(len(workers))), "in table order: 0..N-1, so contiguous per server"

    # MindX's layout: one server entry per pod, in rank order, each holding that pod's one device
    assert table["server_count"] == str(len(table["server_list"])) == str(len(workers))
    by_name = {w.name: w for w in workers}
    for position, server in enumerate(table["server_list"]):
        (name,) = [n for n, rank in ranks.items() if rank == position]
        assert server["container_ip"] == by_name[name].pod_ip
        ipaddress.ip_address(server["server_id"])  # the annotation's server_id if an IP, else the node's
        assert [d["rank_id"] for d in server["device"]] == [str(position)]
        # device fields are what HCCL can use, whatever the annotation said
        for device in server["device"]:
            assert device["device_id"].isdigit() and device["device_id"].isascii()
            ipaddress.ip_address(device["device_ip"])

    # the version-1.0 shape: every value a string, status completed
    assert table["version"] == "1.0" and table["status"] == "completed"
    for server in table["server_list"]:
        assert all(isinstance(v, str) for k, v in server.items() if k != "device")
        assert all(isinstance(v, str) for d in server["device"] for v in d.values())

    # what the launcher reads back is the same table and map
    data = ranktable.configmap_data("uid.s.1", table, ranks, stamp=1767268800)
    assert ranktable.read_configmap(data) == ("uid.s.1", True, ranks)
    assert json.loads(data[ranktable.TABLE_KEY]) == table


@given(worker_sets(), st.data())
def test_a_table_is_never_ready_while_a_pod_lacks_an_address(workers, data):
    victim = data.draw(st.integers(0, len(workers) - 1))
    field = data.draw(st.sampled_from(["pod_ip", "host_ip"]))
    broken = [
        Worker(
            w.name,
            w.index,
            None if (i == victim and field == "pod_ip") else w.pod_ip,
            None if (i == victim and field == "host_ip") else w.host_ip,
            w.annotation,
        )
        for i, w in enumerate(workers)
    ]
    assert not ranktable.ready(broken, len(workers))
    assert not ranktable.ready(workers[:-1], len(workers)), "a missing pod: not ready either"


@given(
    st.dictionaries(st.sampled_from([ranktable.TABLE_KEY, ranktable.RANKS_KEY, "x"]), st.text(max_size=40))
)
def test_reading_a_hand_edited_configmap_never_raises(data):
    _, completed, ranks = ranktable.read_configmap(data)
    assert isinstance(completed, bool) and isinstance(ranks, dict)


def test_the_largest_table_fits_in_a_configmap():
    """MAX_WORKERS one-NPU pods with the longest names and IPv4 addresses: the ConfigMap's data stays
    under the API server's 1 MiB (an indented table of 4,096 ranks did not)."""
    from controller.api import MAX_WORKERS

    workers = []
    for index in range(MAX_WORKERS):
        host = f"172.{100 + index // 8 // 250}.{100 + index // 8 % 250}.200"
        name = f"{'n' * 40}-{index:04d}-abcde-a999-w{index}".ljust(63, "x")
        device = {"device_id": "7", "device_ip": f"192.{100 + index % 8}.{100 + index // 250 % 150}.200"}
        annotation = json.dumps({"pod_name": name, "server_id": host, "devices": [device]})
        pod_ip = f"10.{100 + index // 250}.{100 + index % 250}.200"
        workers.append(Worker(name, index, pod_ip, host, annotation))
    table, ranks = ranktable.build(workers)
    assert len(ranks) == MAX_WORKERS and table["status"] == "completed"
    data = ranktable.configmap_data("a" * 80, table, ranks, stamp=1767268800)
    size = sum(len(key) + len(value.encode()) for key, value in data.items())
    assert size < 1024 * 1024, size
