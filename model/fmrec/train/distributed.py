"""torchrun: join and leave the process group, and tell a rank where it stands."""

from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """(rank, number of ranks): (0, 1) outside torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join(device: torch.device) -> tuple[int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; each rank gets its own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), device


def leave() -> None:
    """After the last epoch every rank leaves the group; without this, gloo's threads abort the
    process at exit (SIGABRT), and torchrun reports a finished rank as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
