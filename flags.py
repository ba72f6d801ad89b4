"""The command-line flags every numbered script accepts; the defaults reproduce the reference."""

import argparse
import math
import os
from pathlib import Path

import torch
import torchvision
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value

TINY_VIT = "vit_tiny_32"  # the small model of --quick: 32x32 input, random initial weights
IMAGENET_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")
DEFAULT_MODEL = "vit_l_16"  # the reference's
IMAGENET_WEIGHTS = "IMAGENET1K_V1"  # torchvision's name of the ViTs' ImageNet weights
DEFAULT_EPOCHS = 3
SYNTHETIC_STEPS = 20  # --synthetic's default --max-steps
LEARNING_RATE = 5e-5  # the reference's, for ImageNet weights
QUICK_LEARNING_RATE = 1e-3  # the small model starts from random weights: a larger rate
IN_MEMORY_DATA = ("generated", "synthetic")  # no files to load: no loader processes by default
CGROUP = Path("/sys/fs/cgroup")  # a container's own cgroup: its CPU quota and period, in µs
CPU_QUOTA_FILES = [("cpu.max",), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")]  # v2, v1
SHARED_MEMORY = Path("/dev/shm")  # where loader workers put the batches they hand over (Linux)
PREFETCH_FACTOR = 2  # batches each loader worker prepares ahead: DataLoader's default


def build_parser() -> argparse.ArgumentParser:
    """The flags, with their help; no abbreviations (--epoch is not taken for --epochs)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Finetune a ViT; report its training time, peak memory and accuracy.",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"offline and small: {TINY_VIT} on generated images"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="speed and memory only: generated 224x224 images"
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="PATH", help="your images: PATH/train/<class>/ and test/"
    )
    parser.add_argument(
        "--model", choices=IMAGENET_VITS, help=f"with ImageNet weights (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--epochs", type=int, help=f"passes over the training set (default {DEFAULT_EPOCHS})"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help=f"train one epoch of N batches ({SYNTHETIC_STEPS}: --synthetic)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images per device and step (default %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        help=f"Adam's learning rate (default {LEARNING_RATE}; --quick: {QUICK_LEARNING_RATE})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=123,
        help=f"seeds the weights and the data order, {min_seed_value} to {max_seed_value} "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--matmul-precision", choices=("highest", "high", "medium"), default="medium"
    )
    parser.add_argument(
        "--num-workers", type=int, help="data loader processes (default: from the usable CPUs)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=5, metavar="N", help="steps before the steady state"
    )
    parser.add_argument(
        "--track-updates", action="store_true", help="report the share of weights training changed"
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="append one JSON record of this run to FILE"
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="FILE",
        help="save the finetuned model to FILE at the end, for predict.py",
    )
    parser.add_argument(
        "--save-every-epoch",
        action="store_true",
        help="with --save: also after each epoch, so that a stopped run keeps what it trained",
    )
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument(
        "--devices", type=int, default=1, help="devices per machine (default %(default)s)"
    )
    parser.add_argument("--strategy", choices=("auto", "ddp", "fsdp"), default="auto")
    parser.add_argument("--num-nodes", type=int, default=1, help="machines (default %(default)s)")
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
    if args.seed < min_seed_value or args.seed > max_seed_value:  # seed_everything's range
        problems.append(
            f"--seed: must be a whole number from {min_seed_value} to {max_seed_value}, "
            f"got {args.seed}"
        )
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
    problems += accelerator_problems(args.accelerator, args.strategy)
    problems += results_path_problems(args.results)
    problems += save_path_problems(args.save, args.save_every_epoch, args.strategy)
    problems += cluster_problems(args.num_nodes)
    return problems


def accelerator_problems(accelerator: str, strategy: str) -> list[str]:
    """An accelerator or strategy asked for that this machine lacks."""
    missing = {"cuda": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}
    problems = []
    if missing.get(accelerator):
        problems.append(
            f"--accelerator {accelerator} was asked for, but this machine has none; "
            "use --accelerator cpu or auto"
        )
    if strategy == "fsdp" and (accelerator == "cpu" or missing["cuda"]):
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


def save_path_problems(path: Path | None, every_epoch: bool, strategy: str) -> list[str]:
    """Why --save (and --save-every-epoch) could never write the model file, found before training.

    The file is written beside its final name and then renamed (Fabric's save does so too), so
    its folder must be writable, or creatable; an earlier file of that name is replaced.
    """
    if path is None and every_epoch:
        return ["--save-every-epoch saves to the file --save names; add --save FILE"]
    if path is None:
        return []
    if strategy == "fsdp":  # Lightning's FSDPStrategy saves a folder of shards by default
        return ["--save writes one file for predict.py, but FSDP saves shards; use --strategy ddp"]
    if path.exists() and not path.is_file():
        return [f"--save {path} is not a file (a folder or a device); name a file"]
    existing = next(folder for folder in path.parents if folder.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK)):
        return [f"--save {path} cannot be written: {existing} is not a writable folder"]
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
    """The flags, checked, with the defaults that depend on other flags filled in, and `data`:
    "generated" (--quick), "synthetic", "cifar10", or the --data-dir path.

    A problem stops the script with exit status 2 and one sentence per problem (argparse's own
    exit), before any training.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = validate_args(args)
    if problems:
        parser.error("; ".join(problems))
    if args.num_nodes > 1:
        say_what_the_launch_waits_for(args.num_nodes, args.devices)
    args.model = args.model or DEFAULT_MODEL
    args.weights = IMAGENET_WEIGHTS
    args.data = args.data_dir or "cifar10"
    if args.quick:
        args.model, args.weights = TINY_VIT, None
    if args.quick and not args.data_dir:
        args.data = "generated"
    if args.synthetic:
        args.weights, args.data = None, "synthetic"
    if args.synthetic and args.max_steps is None:
        args.max_steps = SYNTHETIC_STEPS
    args.epochs = args.epochs or DEFAULT_EPOCHS
    if args.max_steps:  # --max-steps trains one epoch cut to that many batches
        args.epochs = 1
    if args.learning_rate is None:
        args.learning_rate = LEARNING_RATE
        if args.quick:
            args.learning_rate = QUICK_LEARNING_RATE
    if args.num_workers is None:
        args.num_workers = default_loader_workers(args.data, args.devices)
    problems = shared_memory_problems(
        args.num_workers, args.devices, args.batch_size, input_size(args.model)
    )
    if problems:
        parser.error("; ".join(problems))
    return args


def recorded_flags(args: argparse.Namespace) -> dict:
    """The flag values a run's record keeps beside what it measured."""
    return dict(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        save=str(args.save.resolve()) if args.save else None,
    )


def default_loader_workers(data: str | Path, devices: int) -> int:
    """--num-workers' default: none for generated data (in memory), else one less than the
    usable CPUs' share of each of the `devices` processes on this machine (at least 1, at most
    8), as Lightning's suggested_max_num_workers does, but counting a container's CPU quota too."""
    if data in IN_MEMORY_DATA:
        return 0
    return min(8, max(1, usable_cpus() // devices - 1))


def input_size(model: str) -> int:
    """The side in pixels of the square images `model` trains on: 32 for TINY_VIT, else the crop
    of its ImageNet weights' own preprocessing (224 for every ViT of IMAGENET_VITS)."""
    if model == TINY_VIT:
        return 32
    return torchvision.models.get_model_weights(model)[IMAGENET_WEIGHTS].transforms().crop_size[0]


def shared_memory_problems(workers: int, devices: int, batch_size: int, size: int) -> list[str]:
    """Why the loader workers would fail ("unable to allocate shared memory", or a bus error): too
    little free space in /dev/shm (Docker gives a container 64 MiB unless told more) for the
    batches they hand over at once.

    Each worker puts every batch it prepares in shared memory (torch.multiprocessing), and
    prepares PREFETCH_FACTOR ahead, so each of the `devices` training processes holds about
    `workers` x PREFETCH_FACTOR batches there, and 2 more: the batch it takes and the one before,
    still held until the new one replaces it. A batch is `batch_size` float32 images of
    3 x `size` x `size` and their int64 labels. Measured on our CPU (01 --synthetic, 2 workers,
    batches of 16: 55 MiB by this count): a 47 MiB /dev/shm failed at step 5, 57 MiB trained.
    The estimate is a lower bound, so the advice asks for twice it; a machine without /dev/shm
    (macOS, Windows) is not checked.
    """
    if workers == 0 or not SHARED_MEMORY.is_dir():
        return []
    batch_bytes = batch_size * (3 * size * size * 4 + 8)
    need = devices * (workers * PREFETCH_FACTOR + 2) * batch_bytes
    disk = os.statvfs(SHARED_MEMORY)
    free = disk.f_bavail * disk.f_frsize
    if need <= free:
        return []
    mib = 2**20
    return [
        f"--num-workers {workers}: the loader workers need about {need / mib:.0f} MiB of shared "
        f"memory ({devices} x ({workers} x {PREFETCH_FACTOR} + 2) batches of "
        f"{batch_bytes / mib:.1f} MiB), but {SHARED_MEMORY} has {free / mib:.0f} MiB free; give "
        f"the container more (docker run --shm-size={math.ceil(2 * need / 2**30)}g), or load "
        "the data in the training process with --num-workers 0"
    ]


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a batch system's cpuset),
    within its cgroup's CPU quota (containers: docker --cpus, Kubernetes limits), rounded up."""
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):  # Linux
        cpus = len(os.sched_getaffinity(0))
    for files in CPU_QUOTA_FILES:
        try:
            words = " ".join((CGROUP / name).read_text() for name in files).split()
        except OSError:
            continue
        if words[0] not in ("max", "-1"):  # no quota
            cpus = min(cpus, math.ceil(int(words[0]) / int(words[1])))
        break
    return cpus


def say_what_the_launch_waits_for(num_nodes: int, devices: int) -> None:
    """Before a launch on several machines waits, say for whom, where, and what to start."""
    if os.environ.get("LOCAL_RANK", "0") != "0" or launched_by_a_cluster_tool():
        return  # one line per machine, from the process that launches the others
    address, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    node = int(os.environ["NODE_RANK"])
    others = [str(rank) for rank in range(num_nodes) if rank != node]
    print(
        f"Waiting at {address}:{port} for {num_nodes} machines x {devices} device(s) = "
        f"{num_nodes * devices} processes; this is node {node}. On the other "
        f"machine(s), start the same command with MASTER_ADDR={address} MASTER_PORT={port} "
        f"NODE_RANK={' / '.join(others)}",
        flush=True,
    )
