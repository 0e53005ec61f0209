"""The DeepLabTraining manifest the benchmarks apply: one builder, each benchmark adds its own fields.

The benchmarks measure the operator, never a training: the image is never pulled (no real kubelet runs
it), and the volumes and the stage only have to pass the CRD's validation.
"""

from __future__ import annotations

from typing import Any

IMAGE = "deeplab-worker:bench"


def training(
    name: str, namespace: str, workers: int, volumes: dict[str, Any], stage: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    """A one-stage training of ``workers`` ranks; ``spec`` adds or overrides spec fields (camelCase)."""
    return {
        "apiVersion": "deeplab.io/v1alpha1",
        "kind": "DeepLabTraining",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": IMAGE, "workers": workers, "volumes": volumes, "stages": [stage], **spec},
    }
