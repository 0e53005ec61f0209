"""Distributed initialisation: HCCL on Ascend, MindSpore's dynamic cluster (MS_* variables) elsewhere.

On Ascend the launcher exports RANK_TABLE_FILE, RANK_ID, RANK_SIZE and DEVICE_ID; on CPU/GPU the
dynamic cluster needs MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT, MS_WORKER_NUM (and MS_NODE_ID). In
both cases ``mindspore.communication.init()`` reads them. Data-parallel training then averages
gradients over the group and every rank reads its own shard of the data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, results and progress lines."""
        return self.rank == 0


def init(enabled: bool) -> Group:
    """Join the process group (if ``enabled``) and switch MindSpore to data-parallel mode."""
    if not enabled:
        return Group()
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank
    from mindspore.communication import init as init_collective

    init_collective()
    group = Group(get_rank(), get_group_size())
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(
        parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=group.size
    )
    return group


def serve_scheduler() -> None:
    """The dynamic cluster's MS_SCHED role: run the workers' rendezvous until they finish.

    The scheduler trains nothing; ``init()`` in that role returns once every worker has left.
    """
    from mindspore.communication import init as init_collective

    init_collective()


if __name__ == "__main__":  # `python -m job.distributed`: what the launcher runs for MS_ROLE=MS_SCHED
    serve_scheduler()
