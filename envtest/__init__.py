"""A real Kubernetes control plane (etcd + kube-apiserver) for tests and local trials.

Modelled on controller-runtime's envtest: binaries are built once from the pinned
upstream Go modules (or taken from ``KUBEBUILDER_ASSETS``) and started on loopback.
"""

from envtest.binaries import KUBERNETES_VERSION, ensure_binaries
from envtest.plane import ControlPlane

__all__ = ["KUBERNETES_VERSION", "ControlPlane", "ensure_binaries"]
