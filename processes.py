"""Which process of a run this is, and printing once for all of them."""

import torch.distributed as dist


def world_size() -> int:
    """The number of processes training together (1 without torch.distributed)."""
    if dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's index among them (0 without torch.distributed)."""
    if dist.is_initialized():
        return dist.get_rank()
    return 0


def print_once(*values, **kwargs) -> None:
    """Print on the first process only, so that a run on several devices prints each line once."""
    if rank() == 0:
        print(*values, **kwargs, flush=True)
