"""Names and labels of the objects a training owns, valid and unique even for 253-character names.

A training's name is a DNS subdomain (up to 253 characters) but label values and pod hostnames are
limited to 63, Service names must also start with a letter. Truncating alone would map two long
names to the same child; truncating *and* appending a hash of the full name keeps them apart.
"""

from __future__ import annotations

import hashlib
import re

LABEL_MAX = 63
SUBDOMAIN_MAX = 253
HASH_LEN = 8
TAG_LEN = 5

# Labels on every child object. Values are label-safe forms; the full training name is always
# recoverable from the controller owner reference.
LABEL_TRAINING = "deeplab.io/training"
LABEL_STAGE = "deeplab.io/stage"
LABEL_ATTEMPT = "deeplab.io/attempt"
LABEL_RANK = "deeplab.io/rank"
LABEL_ROLE = "deeplab.io/role"
LABEL_SERVER = "deeplab.io/server"  # the Atlas server (group of npusPerServer ranks) a worker pod belongs to
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "deeplab-operator"

ROLE_WORKER = "worker"
ROLE_SCHEDULER = "scheduler"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def _trim(text: str) -> str:
    """Labels and DNS labels must end with an alphanumeric character."""
    return re.sub(r"[^a-z0-9]+$", "", text)


def fit(prefix: str, suffix: str = "", limit: int = LABEL_MAX, keep_dots: bool = False) -> str:
    """``prefix-suffix`` if it fits in ``limit``, else ``<prefix cut>-<hash(prefix)>-suffix``.

    The suffix survives intact (it tells pods of one attempt apart), the hash keeps two long
    prefixes that share their first characters apart. A training name is a DNS subdomain and may
    hold dots, which DNS labels (pod hostnames, Service names) may not: unless ``keep_dots``, dots
    become dashes and, since ``a.b`` and ``a-b`` would then collide, the hash is always added.
    """
    tail = f"-{suffix}" if suffix else ""
    clean = prefix if keep_dots else prefix.replace(".", "-")
    whole = clean + tail
    if len(whole) <= limit and clean == prefix:
        return whole
    room = limit - len(tail) - HASH_LEN - 1
    if room < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room within {limit} characters")
    return f"{_trim(clean[:room]) or 'x'}-{_digest(prefix)}{tail}"


def label_value(value: str) -> str:
    return fit(value, limit=LABEL_MAX)


def training_label(training: str) -> str:
    return label_value(training)


def service_name(training: str) -> str:
    """Headless Service: a DNS-1035 label, so it must start with a letter."""
    base = training if training[:1].isalpha() else f"t-{training}"
    return fit(base, limit=LABEL_MAX)


def configmap_name(training: str) -> str:
    """MindX DL convention: ``rings-config-<job>``."""
    return fit(f"rings-config-{training}", limit=SUBDOMAIN_MAX, keep_dots=True)


def podgroup_name(training: str) -> str:
    return fit(training, limit=SUBDOMAIN_MAX, keep_dots=True)


def child_tag(uid: str, stage: str) -> str:
    """A short hash of the training's uid and the stage: it makes pod names unique per training and
    stage by construction. Without it, training ``voc`` with stage ``s16-vocaug`` and training
    ``voc-s16`` with stage ``vocaug`` would both name their pods ``voc-s16-vocaug-...``."""
    return _digest(f"{uid}/{stage}")[:TAG_LEN]


def worker_name(training: str, uid: str, stage: str, attempt: int, rank: int) -> str:
    """A DNS label, since it doubles as the pod's hostname: ``<training>-<stage>-<tag>-a<n>-w<rank>``."""
    return fit(f"{training}-{stage}", f"{child_tag(uid, stage)}-a{attempt}-w{rank}")


def scheduler_name(training: str, uid: str, stage: str, attempt: int) -> str:
    return fit(f"{training}-{stage}", f"{child_tag(uid, stage)}-a{attempt}-sched")


def attempt_id(uid: str, stage: str, attempt: int) -> str:
    """Unique across stages, attempts *and* a deleted-and-recreated training of the same name, so
    a launcher can refuse a rank table written for any other group of pods (DEEPLAB_ATTEMPT)."""
    return f"{uid[:8]}.{stage}.{attempt}"
