"""One rank of the distributed test: train via job.train.fit, then dump trainable parameters.

Run by test_distributed.py with the MindSpore dynamic-cluster variables set (MS_ROLE=MS_WORKER ...).
Usage: _dist_worker.py OUT.npz -- <train flags>
"""

from __future__ import annotations

import sys

from job import device

device.prepare_environment()

import numpy as np  # noqa: E402

from job.__main__ import make_parser  # noqa: E402
from job.config import TrainConfig, build  # noqa: E402


def main() -> None:
    out, argv = sys.argv[1], sys.argv[3:]
    args = make_parser().parse_args(["train", *argv])
    config = build(TrainConfig, {k: v for k, v in vars(args).items() if k not in ("command", "config")})
    from job import train

    net, _ = train.fit(config)
    np.savez(out, **{p.name: p.asnumpy() for p in net.trainable_params()})


if __name__ == "__main__":
    main()
