"""DeepLabV3 models; ``deeplabv3(model_name, num_classes, ...)`` builds one by name, ``NetSettings``
holds what a checkpoint records about its network and ``settings_from_checkpoint`` reads it back.

The cells are imported on first use (PEP 562), so ``from job.model import NetSettings`` stays cheap:
configuration and run-identity code can use the settings without loading MindSpore.
"""

from typing import Any

from job.model.settings import NetSettings, settings_from_checkpoint

__all__ = ["DeepLabV3", "NetSettings", "deeplabv3", "settings_from_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("DeepLabV3", "deeplabv3"):
        from job.model import deeplab

        return getattr(deeplab, name)
    raise AttributeError(f"module 'job.model' has no attribute {name!r}")
