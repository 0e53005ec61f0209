"""DeepLabV3 in MindSpore: data conversion, training, evaluation, and the worker launcher."""

from job.device import prepare_environment

# Before any submodule can import MindSpore: oneDNN reads its ISA cap once, at load (see job.device).
prepare_environment()
