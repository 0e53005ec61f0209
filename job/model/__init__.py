"""DeepLabV3 models; ``deeplabv3(model_name, num_classes, aspp_rates=None)`` builds one by name."""

from job.model.deeplab import DeepLabV3, deeplabv3

__all__ = ["DeepLabV3", "deeplabv3"]
