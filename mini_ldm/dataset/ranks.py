"""Several processes on one job, as torchrun starts them (also under SLURM: `srun torchrun ...`).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `Group` joins the job's process
group from them (nccl on CUDA, gloo on the CPU) and offers the few collectives a dataset job needs. Without
torchrun (WORLD_SIZE unset or 1) it is one process and every collective is the identity.
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait for each other at the end of a job; one may have had far more images left to draw than another
# (a resumed job), so the wait may be hours.
WAIT = timedelta(days=7)


def world() -> tuple:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: str) -> str:
    """Under torchrun, "cuda" means this process's own GPU, cuda:LOCAL_RANK."""
    if world()[1] > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


class Group:
    """This process's place in the job: `rank` of `size`, with broadcast / gather / barrier."""

    def __init__(self, device):
        self.rank, self.size = world()
        self.owned = False
        if self.size > 1 and not dist.is_initialized():
            device = torch.device(device)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=WAIT)
            self.owned = True

    def broadcast(self, obj):
        """Rank 0's `obj`, on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False
