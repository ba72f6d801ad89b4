"""Which process of a run this is, and printing or stopping once for all of them."""

import sys

import torch.distributed as dist

INPUT_ERROR = 2  # exit status for a problem every script shares: flags, data, weights, network


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


def fail(message: str, status: int = INPUT_ERROR) -> None:
    """Stop with one sentence on stderr ("error: ...") and a non-zero exit status.

    Every process of a run checks the same inputs and finds the same problem, so only the first one
    prints it; all of them exit.
    """
    print_once(f"error: {message}", file=sys.stderr)
    sys.exit(status)
