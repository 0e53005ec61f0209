"""Constants of the DeepLabV3 recipe (Chen et al. 2017, arXiv 1706.05587) and the MindSpore zoo.

The single home of every number the paper or the original scripts fix; everything else imports
from here.
"""

from __future__ import annotations

# -- network --------------------------------------------------------------------------------
RESNET101_BLOCKS = (3, 4, 23, 3)  # bottleneck blocks per stage
MULTI_GRID = (1, 2, 4)  # unit rates of the last stage's three blocks
ASPP_CHANNELS = 256
# Where it affects mIoU the defaults follow the model zoo network that produced the seed's table
# (FACTS section 1), not the paper:
# - ASPP rates (6, 12, 18) at BOTH output strides (the zoo hard-codes them); the paper doubles them
#   at OS8, which stays available as ``--aspp_rates 12 24 36`` (PAPER_ASPP_RATES_OS8).
ASPP_RATES = (6, 12, 18)
PAPER_ASPP_RATES_OS8 = (12, 24, 36)
# - dropout after the ASPP projection, training only: the DROP probability (the zoo's
#   ``nn.Dropout(p=0.7)``, MindSpore 2.x meaning; its older code wrote keep_prob 0.3, the same thing).
ASPP_DROPOUT = 0.7
# - final bilinear upsampling of the logits with align_corners=True (the zoo's
#   ``ResizeBilinear(size, True)``; exact pixel alignment for the 8k+1 crop sizes such as 513).
ALIGN_CORNERS = True
# model name -> output stride
MODELS = {"deeplab_v3_s16": 16, "deeplab_v3_s8": 8}

# -- data -------------------------------------------------------------------------------------
# BGR order: images are decoded by OpenCV.
IMAGE_MEAN_BGR = (103.53, 116.28, 123.675)
IMAGE_STD_BGR = (57.375, 57.12, 58.395)
IGNORE_LABEL = 255
NUM_CLASSES = 21  # PASCAL VOC: background + 20
CROP_SIZE = 513
MIN_SCALE = 0.5
MAX_SCALE = 2.0
EVAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.75)  # the seed's multi-scale example

# -- optimisation -------------------------------------------------------------------------------
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
LOSS_SCALE = 3072.0  # the zoo's default fixed loss scale

# -- the three-stage VOC recipe (8 devices); used by manifests/samples and docs -----------------
VOC_STAGES = (
    {"name": "s16-vocaug", "model": "deeplab_v3_s16", "epochs": 300, "batch_size": 32, "base_lr": 0.08,
     "loss_scale": 3072.0},
    {"name": "s8-vocaug", "model": "deeplab_v3_s8", "epochs": 800, "batch_size": 16, "base_lr": 0.02,
     "loss_scale": 2048.0},
    {"name": "s8-voctrain", "model": "deeplab_v3_s8", "epochs": 300, "batch_size": 16, "base_lr": 0.008,
     "loss_scale": 2048.0},
)  # fmt: skip
# The seed's single-device variant of stage 1 (one device, so fewer epochs and a smaller LR).
VOC_SINGLE_DEVICE = {"name": "s16-single-device", "model": "deeplab_v3_s16", "epochs": 200, "batch_size": 32,
                     "base_lr": 0.015, "loss_scale": 3072.0}  # fmt: skip

# -- exit codes (documented in README; the operator treats 2 as permanent) ------------------------
EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure: worth a retry
EXIT_BAD_INPUT = 2  # configuration or data error: retrying cannot help
EXIT_INTERRUPTED = 143  # SIGTERM: stopped on request after the newest checkpoint was made safe
