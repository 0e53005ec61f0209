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


def test_short_names_are_kept_readable():
    assert names.worker_name("voc", "s16-vocaug", 2, 7) == "voc-s16-vocaug-a2-w7"
    assert names.scheduler_name("voc", "s16", 1) == "voc-s16-a1-sched"
    assert names.configmap_name("voc") == "rings-config-voc"
    assert names.service_name("voc") == "voc"
    assert names.service_name("3d-voc") == "t-3d-voc", "Service names start with a letter"


@given(training_names, stage_names, st.integers(1, 999), st.integers(0, 4095))
def test_every_child_name_is_valid(training, stage, attempt, rank):
    pod = names.worker_name(training, stage, attempt, rank)
    assert len(pod) <= 63 and LABEL.match(pod) and pod.endswith(f"-a{attempt}-w{rank}")
    assert len(names.scheduler_name(training, stage, attempt)) <= 63
    label = names.training_label(training)
    assert len(label) <= 63 and LABEL.match(label)
    service = names.service_name(training)
    assert len(service) <= 63 and LABEL.match(service) and service[0].isalpha()
    cm = names.configmap_name(training)
    assert len(cm) <= 253 and SUBDOMAIN.match(cm)


def test_long_names_sharing_a_prefix_stay_distinct():
    a, b = "x" * 200 + "-a", "x" * 200 + "-b"
    assert names.training_label(a) != names.training_label(b)
    assert names.worker_name(a, "s", 1, 0) != names.worker_name(b, "s", 1, 0)
    assert names.service_name(a) != names.service_name(b)
    assert names.worker_name(a, "s", 1, 0) == names.worker_name(a, "s", 1, 0), "deterministic"
