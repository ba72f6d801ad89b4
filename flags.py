"""The command-line flags every numbered script accepts; the defaults reproduce the reference."""

import argparse
import math
import os
from pathlib import Path

import torch

TINY_VIT = "vit_tiny_32"  # the small model of --quick: 32x32 input, random initial weights
IMAGENET_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")


def build_parser() -> argparse.ArgumentParser:
    """The flags, with their help; no abbreviations (--epoch is not taken for --epochs)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Finetune a ViT; report its training time, peak memory and accuracy.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help=f"offline and small: {TINY_VIT} on generated images")
    add("--synthetic", action="store_true", help="speed and memory only: generated 224x224 images")
    add("--data-dir", type=Path, metavar="PATH", help="your images: PATH/train/<class>/ and test/")
    add("--model", choices=IMAGENET_VITS, help="with ImageNet weights (default vit_l_16)")
    add("--epochs", type=int, help="passes over the training set (default 3)")
    add("--max-steps", type=int, metavar="N", help="train one epoch of N batches (20: --synthetic)")
    add("--batch-size", type=int, default=32, help="images per device and step (default 32)")
    add("--learning-rate", type=float, help="Adam's learning rate (default 5e-5; --quick: 1e-3)")
    add("--seed", type=int, default=123, help="seeds the weights and the data order (default 123)")
    add("--matmul-precision", choices=("highest", "high", "medium"), default="medium")
    add("--num-workers", type=int, help="data loader processes (default: from the usable CPUs)")
    add("--warmup-steps", type=int, default=5, metavar="N", help="steps before the steady state")
    add("--track-updates", action="store_true", help="report the share of weights training changed")
    add("--results", type=Path, metavar="FILE", help="append one JSON record of this run to FILE")
    add("--accelerator", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    add("--devices", type=int, default=1, help="devices per machine (default 1)")
    add("--strategy", choices=("auto", "ddp", "fsdp"), default="auto")
    add("--num-nodes", type=int, default=1, help="machines (default 1)")
    return parser


def validate_args(args: argparse.Namespace) -> list[str]:
    """Every problem with the flags, one sentence each; an empty list when they can work."""
    problems = []
    lowest = dict(epochs=1, max_steps=1, batch_size=1, devices=1, num_nodes=1)
    lowest.update(num_workers=0, warmup_steps=0)
    for name, smallest in lowest.items():
        value = getattr(args, name)
        if value is not None and value < smallest:
            must = "a positive whole number"
            if smallest == 0:
                must = "zero or more"
            problems.append(f"--{name.replace('_', '-')}: must be {must}, got {value}")
    rate = args.learning_rate
    if rate is not None and (rate <= 0 or not math.isfinite(rate)):
        problems.append(f"--learning-rate: must be a positive finite number, got {rate}")
    if args.quick and args.synthetic:
        problems.append("--quick and --synthetic pick different data; use one of them")
    if args.quick and args.model:
        problems.append(
            f"--quick trains its own small model ({TINY_VIT}); drop --model, or drop --quick"
        )
    if args.synthetic and args.data_dir:
        problems.append("--synthetic generates its own images; drop --data-dir")
    if args.max_steps and args.epochs:
        problems.append("--max-steps trains one epoch of at most that many steps; drop --epochs")
    if args.data_dir and not args.data_dir.is_dir():
        problems.append(f"--data-dir {args.data_dir} is not a folder")
    problems += accelerator_problems(args)
    problems += results_path_problems(args.results)
    problems += cluster_problems(args.num_nodes)
    return problems


def accelerator_problems(args: argparse.Namespace) -> list[str]:
    """An accelerator or strategy asked for that this machine lacks."""
    missing = {"cuda": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}
    problems = []
    if missing.get(args.accelerator):
        problems.append(
            f"--accelerator {args.accelerator} was asked for, but this machine has none; "
            "use --accelerator cpu or auto"
        )
    if args.strategy == "fsdp" and (args.accelerator == "cpu" or missing["cuda"]):
        problems.append("--strategy fsdp needs CUDA GPUs; use ddp")
    return problems


def results_path_problems(path: Path | None) -> list[str]:
    """Why a --results file could never be written, found before training rather than after it."""
    if path is None:
        return []
    if path.is_dir():
        return [f"--results {path} is a folder; name a file in it"]
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if existing == path and not os.access(path, os.W_OK):
        return [f"--results {path} cannot be written: {path} is not a writable file"]
    if existing != path and not (existing.is_dir() and os.access(existing, os.W_OK)):
        return [f"--results {path} cannot be written: {existing} is not a writable folder"]
    return []


def cluster_problems(num_nodes: int) -> list[str]:
    """Several machines need an address to meet at and an index each: without them, or with an
    index no machine of the run has, each machine would wait forever."""
    if num_nodes == 1 or launched_by_a_cluster_tool():
        return []
    unset = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if name not in os.environ]
    if unset:
        return [
            f"--num-nodes {num_nodes} needs {', '.join(unset)} set on every machine (the first "
            "machine's address, a free port on it, and this machine's index from 0), or torchrun "
            "or SLURM, which set them; see docs/scaling_out.md"
        ]
    problems = []
    node, port = os.environ["NODE_RANK"], os.environ["MASTER_PORT"]
    if not node.isdigit() or int(node) >= num_nodes:
        problems.append(
            f"NODE_RANK={node} is no machine of --num-nodes {num_nodes}: give each machine its "
            f"index, 0 to {num_nodes - 1}, with 0 on the machine at MASTER_ADDR"
        )
    if not port.isdigit() or int(port) == 0 or int(port) > 65535:
        problems.append(f"MASTER_PORT={port} is no port number: give a free port, 1 to 65535")
    return problems


def launched_by_a_cluster_tool() -> bool:
    """True under SLURM or torchrun, which tell Lightning every address and rank themselves."""
    return "SLURM_NTASKS" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked, with the defaults that depend on other flags filled in.

    A problem stops the script with exit status 2 and one sentence per problem, before any
    training.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = validate_args(args)
    if problems:
        parser.error("; ".join(problems))
    if args.num_nodes > 1:
        say_what_the_launch_waits_for(args)
    args.model = args.model or "vit_l_16"
    args.weights = "IMAGENET1K_V1"
    if args.quick:
        args.model, args.weights = TINY_VIT, None
    if args.synthetic:
        args.weights = None
    if args.synthetic and args.max_steps is None:
        args.max_steps = 20
    args.epochs = args.epochs or 3
    if args.max_steps:  # --max-steps trains one epoch cut to that many batches
        args.epochs = 1
    if args.learning_rate is None:
        args.learning_rate = 5e-5
        if args.quick:  # the small model starts from random weights: a larger rate
            args.learning_rate = 1e-3
    return args


def say_what_the_launch_waits_for(args: argparse.Namespace) -> None:
    """Before a launch on several machines waits, say for whom, where, and what to start."""
    if os.environ.get("LOCAL_RANK", "0") != "0" or launched_by_a_cluster_tool():
        return  # one line per machine, from the process that launches the others
    address, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    node = int(os.environ["NODE_RANK"])
    others = [str(rank) for rank in range(args.num_nodes) if rank != node]
    print(
        f"Waiting at {address}:{port} for {args.num_nodes} machines x {args.devices} device(s) = "
        f"{args.num_nodes * args.devices} processes; this is node {node}. On the other "
        f"machine(s), start the same command with MASTER_ADDR={address} MASTER_PORT={port} "
        f"NODE_RANK={' / '.join(others)}",
        flush=True,
    )
