"""Child names and label values stay valid and distinct for names up to 253 characters."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from controller import names

LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# DNS-1123 subdomain: what a training may be called
training_names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?\Z", fullmatch=True)
stage_names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?\Z", fullmatch=True)


UID = "6f1d3c2a-0000-4000-8000-000000000001"


def test_short_names_are_kept_readable():
    tag = names.child_tag(UID, "s16-vocaug")
    assert re.fullmatch(r"[0-9a-f]{5}", tag)
    assert names.worker_name("voc", UID, "s16-vocaug", 2, 7) == f"voc-s16-vocaug-{tag}-a2-w7"
    assert names.scheduler_name("voc", UID, "s16", 1) == f"voc-s16-{names.child_tag(UID, 's16')}-a1-sched"
    assert names.configmap_name("voc") == "rings-config-voc"
    assert names.service_name("voc") == "voc"
    assert names.service_name("3d-voc") == "t-3d-voc", "Service names start with a letter"


@given(training_names, stage_names, st.integers(1, 999), st.integers(0, 4095))
def test_every_child_name_is_valid(training, stage, attempt, rank):
    pod = names.worker_name(training, UID, stage, attempt, rank)
    assert len(pod) <= 63 and LABEL.match(pod) and pod.endswith(f"-a{attempt}-w{rank}")
    assert len(names.scheduler_name(training, UID, stage, attempt)) <= 63
    label = names.training_label(training)
    assert len(label) <= 63 and LABEL.match(label)
    service = names.service_name(training)
    assert len(service) <= 63 and LABEL.match(service) and service[0].isalpha()
    cm = names.configmap_name(training)
    assert len(cm) <= 253 and SUBDOMAIN.match(cm)


def test_long_names_sharing_a_prefix_stay_distinct():
    a, b = "x" * 200 + "-a", "x" * 200 + "-b"
    assert names.training_label(a) != names.training_label(b)
    assert names.worker_name(a, UID, "s", 1, 0) != names.worker_name(b, UID, "s", 1, 0)
    assert names.service_name(a) != names.service_name(b)


def test_trainings_whose_name_and_stage_concatenate_alike_get_distinct_pods():
    """The reported collision: `voc` + stage `s16-vocaug` and `voc-s16` + stage `vocaug`."""
    first = names.worker_name("voc", UID, "s16-vocaug", 1, 0)
    second = names.worker_name("voc-s16", UID.replace("1", "2"), "vocaug", 1, 0)
    assert first != second and first.startswith("voc-s16-vocaug-") and second.startswith("voc-s16-vocaug-")
    # even the same uid (it cannot happen, uids are unique) would not collide: the stage is hashed too
    assert names.worker_name("voc", UID, "s16-vocaug", 1, 0) != names.worker_name(
        "voc-s16", UID, "vocaug", 1, 0
    )
