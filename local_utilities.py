"""Plumbing for the numbered scripts (flags, data, accuracy, memory, NaN diagnosis, run record); it trains nothing."""

import argparse
import json
import math
import os
import platform
import re
import resource
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from lightning.fabric.utilities.throughput import Throughput, get_available_flops, measure_flops
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from torchvision import transforms
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.models._api import register_model

TINY_VIT = "vit_tiny_32"  # the small model of --quick: 32x32 input, random initial weights
DIVERGED_EXIT_CODE = 3  # a run that stopped because the loss or the weights turned NaN/inf
CPUINFO = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""  # the CPU's name and flags
CPU_NAME = next(iter(re.findall(r"^model name\s*: (.*)$", CPUINFO, re.MULTILINE)), platform.processor() or platform.machine())
VERSIONS = {"python": platform.python_version(), **{name: version(name) for name in ("torch", "torchvision", "lightning")}}
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux; absent in some containers)
# Dense (no 2:4 sparsity) peak FLOP/s of H100 SXM and H200 SXM, from NVIDIA's datasheets. Lightning 2.6's
# get_available_flops misses the H200 (it matches only names with "sxm1"/"nvl1") and lists its sparse figures.
DENSE_PEAK_FLOPS = {torch.bfloat16: 989e12, torch.float16: 989e12, "tfloat32": 494e12, torch.float32: 67e12}


def fail(message):  # stop the run with one sentence on stderr and exit status 1
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def parse_args(argv=None):
    """The flags every numbered script accepts; defaults reproduce the reference experiment."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Finetune a ViT; report time, memory and accuracy.")
    add = parser.add_argument
    add("--quick", action="store_true", help=f"offline, a minute on a laptop CPU: {TINY_VIT} on generated images")
    add("--synthetic", action="store_true", help="speed and memory only: full-size generated images, random weights")
    add("--data-dir", type=Path, metavar="PATH", help="your images: PATH/train/<class>/*, PATH/test/ and/or PATH/val/")
    add("--model", choices=("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"), help="with ImageNet weights (default vit_l_16)")
    add("--epochs", type=int, help="passes over the training set (default 3)")
    add("--max-steps", type=int, metavar="N", help="train one epoch of at most N steps (default 20 with --synthetic)")
    add("--batch-size", type=int, default=32, help="images per device and step (default 32)")
    add("--learning-rate", type=float, help="Adam's learning rate (default 5e-5, or 1e-3 with --quick)")
    add("--matmul-precision", choices=("highest", "high", "medium"), default="medium", help="of float32 matmuls (medium)")
    add("--num-workers", type=int, help="data loader processes (default 0 for generated data, else up to 8)")
    add("--warmup-steps", type=int, default=5, metavar="N", help="steps left out of the steady state (default 5)")
    add("--track-updates", action="store_true", help="report the share of weights that training changed")
    add("--results", type=Path, metavar="FILE", help="append one JSON record of this run to FILE")
    add("--accelerator", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="where to train (default auto)")
    add("--devices", type=int, default=1, help="devices per machine (default 1)")
    add("--strategy", choices=("auto", "ddp", "fsdp"), default="auto", help="how devices share the work (default auto)")
    add("--num-nodes", type=int, default=1, help="machines (default 1)")
    args = parser.parse_args(argv)

    for name, lowest in dict(epochs=1, max_steps=1, batch_size=1, devices=1, num_nodes=1, num_workers=0, warmup_steps=0).items():
        if getattr(args, name) is not None and getattr(args, name) < lowest:
            must = "zero or more" if lowest == 0 else "a positive whole number"
            parser.error(f"--{name.replace('_', '-')}: must be {must}, got {getattr(args, name)}")
    existing = args.results and next(path for path in (args.results, *args.results.parents) if path.exists())
    no_accelerator = {"cuda": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}
    for refused, message in [
        (args.learning_rate is not None and not 0 < args.learning_rate < math.inf,
         f"--learning-rate: must be a positive finite number, got {args.learning_rate}"),
        (args.quick and args.synthetic, "--quick and --synthetic pick different data; use one of them"),
        (args.quick and args.model, f"--quick trains its own small model ({TINY_VIT}); drop --model, or drop --quick"),
        (args.synthetic and args.data_dir, "--synthetic generates its own images; drop --data-dir"),
        (args.max_steps and args.epochs, "--max-steps trains one epoch of at most that many steps; drop --epochs"),
        (args.data_dir and not args.data_dir.is_dir(), f"--data-dir {args.data_dir} is not a folder"),
        (no_accelerator.get(args.accelerator), f"--accelerator {args.accelerator} was asked for, but this machine has none; use --accelerator cpu or auto"),
        (args.strategy == "fsdp" and (args.accelerator == "cpu" or no_accelerator["cuda"]), "--strategy fsdp needs CUDA GPUs; use ddp"),
        (args.results and args.results.is_dir(), f"--results {args.results} is a folder; name a file in it"),
        (existing and (existing != args.results and not existing.is_dir() or not os.access(existing, os.W_OK)),
         f"--results {args.results} cannot be written: {existing} is not a writable {'file' if existing == args.results else 'folder'}")]:
        if refused:
            parser.error(message)
    if args.results and not args.results.parent.is_dir():
        print(f"Creating the folder {args.results.parent} for --results")
        args.results.parent.mkdir(parents=True, exist_ok=True)  # exist_ok: another process of the run may be first
    args.model = TINY_VIT if args.quick else args.model or "vit_l_16"
    args.weights = None if args.quick or args.synthetic else "IMAGENET1K_V1"
    args.max_steps = args.max_steps or (20 if args.synthetic else None)
    args.epochs = 1 if args.max_steps else args.epochs or 3
    args.learning_rate = args.learning_rate or (1e-3 if args.quick else 5e-5)
    generated = (args.quick or args.synthetic) and not args.data_dir
    args.num_workers = args.num_workers if args.num_workers is not None else 0 if generated else min(8, os.cpu_count())
    return args


# ---------------------------------------------------------------- data


def generated_dataset(num_images, num_classes=10, image_size=32, seed=0):  # each class a colour pattern under noise
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    prototypes = torch.nn.functional.interpolate(prototypes, size=image_size, mode="bilinear")
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)
    images = prototypes[labels] + 2.5 * torch.randn(num_images, 3, image_size, image_size, generator=generator)
    return TensorDataset(images, labels)


def load_rgb(path):
    """An image file as 8-bit RGB; 16-bit images (microscopes, scanners) are scaled to 8 bits, not clipped to white."""
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I"):  # 16-bit PNG ("I;16" in Pillow 13, "I" before): 0..65535 down to 0..255
                return Image.fromarray(np.rint(np.asarray(image) / 257).clip(0, 255).astype(np.uint8)).convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise OSError(f"cannot read the image {path} ({error}); delete it or copy it again") from None


# A bad image that only decoding finds surfaces in the training loop, maybe from a loader worker: say its one sentence.
sys.excepthook = lambda kind, error, trace: print("error: " + re.findall(r"cannot read the image .*", str(error))[-1],
    file=sys.stderr) if "cannot read the image" in str(error) else sys.__excepthook__(kind, error, trace)


class VisibleImageFolder(ImageFolder):
    """ImageFolder that skips hidden entries ('.name', macOS '._name.png'); empty folders pass, to be named later."""

    def find_classes(self, directory):
        classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and entry.name[0] != ".")
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, **_):  # hidden: a '.name' part below the split, not above it
        visible = lambda path: path.lower().endswith(IMG_EXTENSIONS) and os.sep + "." not in path[len(str(directory)):]
        return super().make_dataset(directory, class_to_idx, None, visible, allow_empty=True) if class_to_idx else []


def check_images(dataset):
    """Open every image's header and find its end marker (PNG, JPEG): name an unreadable file before training."""
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # in this process and its loader workers
    for path, _ in dataset.samples:
        try:
            with open(path, "rb") as file:  # Image.open reads the header and stops where the pixel data starts
                ending = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}.get(Image.open(file).format, b"")  # by content
                if ending not in file.read():  # the rest: a JPEG's thumbnail, with its own end marker, came before
                    raise OSError("truncated: it lacks the end marker of its format")
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            fail(f"the image {path} is over Pillow's decompression-bomb limit ({error}); downscale it")
        except (OSError, ValueError, SyntaxError) as error:
            fail(f"cannot read the image {path} ({str(error).split(' <_io.')[0]}); delete it or copy it again")


def image_folder_splits(data_dir, transform):
    """(train, val, test, class count, where val and test come from) for train/ beside test/ and/or val/."""
    found = {name: VisibleImageFolder(data_dir / name, transform, loader=load_rgb)
             for name in ("train", "val", "test") if (data_dir / name).is_dir()}
    if "train" not in found or len(found) < 2:
        fail(f"--data-dir {data_dir} needs train/<class>/<images> beside test/ or val/; it has {list(found) or 'neither'}")
    classes = found["train"].classes
    if len(classes) < 2:  # before the other checks: images put straight into train/ get this sentence too
        fail(f"--data-dir {data_dir}/train/ has {len(classes)} class folder(s); a classifier needs at least two: train/<class>/<images>")
    for name, split in found.items():
        counts = np.bincount(split.targets, minlength=len(split.classes)).tolist()
        if split.classes != classes:
            fail(f"--data-dir splits disagree on the classes: train has {classes}, {name} has {split.classes}; "
                 "give every split the same class folders")
        if 0 in counts:
            fail(f"--data-dir class folder {data_dir / name / classes[counts.index(0)]} holds no images "
                 f"({', '.join(IMG_EXTENSIONS)}); add images to it, or delete that class from every split")
        print_once(f"{name}/: {len(split)} images in {len(classes)} classes {dict(zip(classes, counts))}")
        check_images(split)
    order = torch.randperm(len(found["train"]), generator=torch.Generator().manual_seed(0)).tolist()
    num_val = 0 if "val" in found and "test" in found else max(1, len(order) // 10)  # else a seeded 10% of train/
    train, val = Subset(found["train"], order[num_val:]), found["val"] if not num_val else Subset(found["train"], order[:num_val])
    test = "test" if "test" in found else "val"  # train/ and val/ only: val/ is the held-out test set
    splits = (f"a seeded 10% of train/ ({num_val} of {len(order)} images)" if num_val else "val/", f"{test}/")
    print_once(f"Validation: {splits[0]} | test: {splits[1]}")
    return train, val, found[test], len(classes), *splits


def cifar10_splits(data_dir, transform):
    """CIFAR-10 as 45,000 train, 5,000 validation (the last training images) and 10,000 test images."""
    try:
        train_full, test = (CIFAR10(data_dir, train, transform, download=True) for train in (True, False))
    except (URLError, OSError, RuntimeError) as error:  # RuntimeError: the files fail their checksum after a download
        fail(f"could not download CIFAR-10 to {data_dir} ({getattr(error, 'reason', error)}); connect to the internet, "
             "or train offline with --quick or on your own images with --data-dir PATH")
    return Subset(train_full, range(45_000)), Subset(train_full, range(45_000, 50_000)), test


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_dataloaders(args):
    """Train, val and test loaders, class count; the shuffle depends on the epoch only; evaluation pads in nothing."""
    args.val_split, args.test_split, num_classes = "validation split", "test split", 10
    if args.synthetic:  # a pool of 64 full-size images, repeated: no memory or loading time
        pool, batches = generated_dataset(64, image_size=224), (args.max_steps * world_size(), 2, 2)  # train, val, test
        train, val, test = (Subset(pool, [i % 64 for i in range(count * args.batch_size)]) for count in batches)
    elif args.quick and not args.data_dir:
        full, splits = generated_dataset(3000, seed=0), ((2250,), (2250, 2500), (2500, 3000))  # CIFAR-10's sizes / 20
        train, val, test = (Subset(full, range(*split)) for split in splits)
    else:  # --quick: resized to the small model's input; else the pretrained weights' own preprocessing
        transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize(
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]) if args.quick else \
            torchvision.models.get_model_weights(args.model)[args.weights].transforms()
        train, val, test, *splits = image_folder_splits(args.data_dir, transform) if args.data_dir else \
            cifar10_splits(Path("data"), transform)
        if splits:
            num_classes, args.val_split, args.test_split = splits
    if len(train) < args.batch_size * world_size():  # drop_last would leave not one training step
        fail(f"the training split{f' of {args.data_dir}/train/ (validation: {args.val_split})' if args.data_dir else ''} "
             f"has {len(train)} images, fewer than one batch of {args.batch_size} x {world_size()} device(s); add images"
             + (f", or use --batch-size {len(train) // world_size()} or less" if len(train) >= world_size() else ""))
    settings = dict(batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=torch.cuda.is_available(),
                    persistent_workers=args.num_workers > 0)
    train_sampler = DistributedSampler(train, num_replicas=world_size(), rank=rank(), shuffle=True, seed=123)
    train_loader = DataLoader(train, sampler=train_sampler, drop_last=True, **settings)
    return train_loader, *[DataLoader(dataset, sampler=UnrepeatedDistributedSampler(dataset, shuffle=False)
                                      if world_size() > 1 else None, **settings) for dataset in (val, test)], num_classes


# ---------------------------------------------------------------- model weights and accuracy


@register_model(TINY_VIT)  # so that torchvision.models.get_model(TINY_VIT) builds it, like the real ViTs
def vit_tiny_32(weights=None, **kwargs):
    """A 3-layer ViT for 32x32 images (about 0.1 M parameters); it has no pretrained weights."""
    return torchvision.models.VisionTransformer(32, 8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128, **kwargs)


def pretrained_weights(args):
    """The torchvision weights of args.model, downloaded to torch's hub cache once and checked; None without weights."""
    weights = args.weights and torchvision.models.get_model_weights(args.model)[args.weights]
    try:  # loading onto the meta device reads the file's index, not its 1.2 GB of tensors
        weights and torch.hub.load_state_dict_from_url(weights.url, map_location="meta", weights_only=True)
    except Exception as error:  # a failed download leaves no file, so a file that is there failed to load
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not path.exists():
            fail(f"could not download the {args.model} ImageNet weights ({getattr(error, 'reason', error)}); connect to "
                 f"the internet once (they are cached in {path.parent}), or train the small model from scratch with "
                 "--quick" + ("" if args.data_dir else ", or measure speed and memory with --synthetic"))  # not --data-dir
        fail(f"the cached weights file {path} is damaged ({str(error).splitlines()[0]}), perhaps by an interrupted "
             "download; delete it and run again with internet access")
    return weights


@torch.inference_mode()
def compute_accuracy(model, loader):
    """Fraction of correctly classified images; exact across processes (torchmetrics sums the counts)."""
    model.eval()
    device = next(model.parameters()).device
    accuracy = MulticlassAccuracy(getattr(model, "module", model).heads.head.out_features, average="micro").to(device)
    for features, targets in loader:
        accuracy.update(model(features.to(device)).argmax(dim=1), targets.to(device))
    return accuracy.compute().item()


# ---------------------------------------------------------------- what the run prints and measures


def print_once(*values, **kwargs):  # on the first process only, so a multi-GPU run prints each line once
    if rank() == 0:
        print(*values, **kwargs, flush=True)


def device_name(device):  # the GPU's name, or the CPU's model name and its thread count
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{CPU_NAME} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"{device.type}: {CPU_NAME}"


def print_setup(args, precision, device):
    """Print versions and the device; refuse bfloat16 on a GPU without it; say where a CPU emulates 16-bit matmuls."""
    if device.type == "cuda" and "bf16" in precision and not torch.cuda.is_bf16_supported(including_emulation=False):
        fail(f"{precision} needs native bfloat16, which {device_name(device)} lacks (Ampere and newer GPUs have it); "
             "run 02_fabric_16mixed.py (16-mixed) on this GPU instead")
    print_once("\n".join(f"{name:<11}: {value}" for name, value in VERSIONS.items()))
    print_once(f"Device: {device_name(device)} x {world_size()} process(es) | Model: {args.model} | "
               f"Precision asked for: {precision} | float32 matmul precision: {args.matmul_precision}")
    half, units = ("float16", "amx_fp16 avx512_fp16 fphp") if precision == "16-true" else ("bfloat16", "amx_bf16 avx512_bf16 bf16")
    flags = set(next(iter(re.findall(r"^(?:flags|Features)\s*: (.*)$", CPUINFO, re.MULTILINE)), "").split())  # x86, Arm
    if device.type == "cpu" and precision != "32-true" and flags and not flags & set(units.split()):  # 16-mixed: bf16
        print_once(f"Note: this CPU has no {half} matrix units ({units}), so {precision} is emulated and slower than "
                   "32-true here, up to tens of times; compare precisions on a GPU or a CPU with them")


def watch_dtypes(model, precision, device):
    """A dict that the first forward pass fills with the dtypes in effect (head weights, matmul output), printed once."""
    dtypes, short = {}, {torch.float32: "32", torch.float16: "16", torch.bfloat16: "bf16"}

    def record(head, inputs, output):  # named from what the run computes in: float32 weights with 16-bit matmuls: mixed
        hook.remove()
        mixed = head.weight.dtype == torch.float32 != output.dtype  # float32 weights, 16-bit matmuls
        in_effect = f"{short[output.dtype]}-mixed" if mixed else f"{short[head.weight.dtype]}-true"
        dtypes.update(weight=head.weight.dtype, matmul=output.dtype, in_effect=in_effect)
        why = " (Lightning has no float16 autocast on CPU and runs bfloat16 autocast instead)" if precision == "16-mixed" \
            and device.type == "cpu" else "" if in_effect == precision else " (differs from the request)"
        print_once(f"Precision in effect: {in_effect}{why} | weights {str(head.weight.dtype)[6:]}, matmul outputs {str(output.dtype)[6:]}")

    hook = getattr(model, "module", model).heads.head.register_forward_hook(record)
    return dtypes


def synchronize(device):
    """Wait until the accelerator has finished its queued work (CPU work is already done when Python returns)."""
    getattr(torch, device.type).synchronize()  # torch.cuda, torch.mps or torch.cpu


def speed(images_per_s, seconds_per_step):
    """Images/s with at least three significant digits; seconds per step beside it when a step takes a second or more."""
    return (f"{images_per_s:.1f}" if images_per_s >= 10 else f"{images_per_s:#.3g}") + " img/s" + (
        f" ({seconds_per_step:.2f} s/step)" if seconds_per_step >= 1 else "")


@dataclass
class StepTimer:
    """Step times of the training loop; the steps after the first `warmup_steps` make the steady state."""

    total_steps: int
    warmup_steps: int
    images_per_step: int  # over all processes
    steps: int = 0
    steady_steps: int = 0
    steady_time: float = 0.0  # seconds
    data_wait: float = 0.0  # seconds of steady_time spent waiting for the data loader
    last_step_time: float = 0.0

    def add(self, step_time, data_wait):
        self.steps, self.last_step_time = self.steps + 1, step_time
        if self.steps > self.warmup_steps or self.total_steps <= self.warmup_steps:
            self.steady_steps, self.steady_time, self.data_wait = (self.steady_steps + 1, self.steady_time + step_time,
                                                                   self.data_wait + data_wait)

    def progress(self):
        """'<speed> | MM:SS left' from the steady state so far, or from the last step while still warming up."""
        step_time = self.steady_time / self.steady_steps if self.steady_steps else self.last_step_time
        left = round((self.total_steps - self.steps) * step_time)
        clock = f"{left // 60:02d}:{left % 60:02d}" if left < 3600 else f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        return f"{speed(self.images_per_step / step_time, step_time)} | {clock} left"


def reset_peak_memory(device):
    """Start the peak-memory measurement here; returns the RSS in bytes that a CPU's peak is measured from."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.access(CLEAR_REFS, os.W_OK):  # absent or read-only in some containers, absent on macOS
        CLEAR_REFS.write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        return process_memory_bytes("VmRSS")


def process_memory_bytes(field):  # VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes
    return 1024 * int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)[1])


def peak_memory(device, baseline):
    """(peak GB that the record keeps, what was measured); the most of any process when there are several."""
    if device.type == "cuda":
        numbers = [torch.cuda.max_memory_allocated(device) / 1e9, torch.cuda.max_memory_reserved(device) / 1e9]
        description = "{:.2f} GB allocated (max_memory_allocated), {:.2f} GB reserved"
    elif baseline is not None:
        numbers = [(process_memory_bytes("VmHWM") - baseline) / 1e9, process_memory_bytes("VmHWM") / 1e9]
        description = "{:.2f} GB peak RSS growth over the RSS before the model was built (absolute peak RSS {:.2f} GB)"
    else:  # no resettable peak: ru_maxrss is the whole process's peak, in KiB on Linux and bytes on macOS
        numbers = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9]
        description = "{:.2f} GB absolute peak RSS of the process (this system cannot reset the peak)"
    if world_size() > 1:  # each process measured its own peak: report the largest
        tensor = torch.tensor(numbers, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        numbers, description = tensor.tolist(), f"{description}, per process: the most of any of the {world_size()} processes"
    return numbers[0], description.format(*numbers)


def peak_flops(device, dtype, matmul_precision):
    """The chip's dense peak FLOP/s for matmuls in `dtype`, or None where unknown (CPUs, unlisted GPUs)."""
    name = torch.cuda.get_device_name(device).lower() if device.type == "cuda" else ""
    if ("h200" in name and "nvl" not in name) or ("h100" in name and "hbm3" in name):  # the SXM parts
        return DENSE_PEAK_FLOPS["tfloat32" if dtype == torch.float32 and matmul_precision != "highest" else dtype]
    return get_available_flops(device, dtype) if name else None


def report(args, precision, device, *, timer, train_time, memory_baseline, dtypes, accuracies, diverged_at, model,
           initial_weights=None):
    """Print the run's time, speed, MFU, memory and accuracy; append its record to --results; return the record."""
    accuracies = {key: math.nan if diverged_at else accuracies[key] for key in ("train_acc", "val_acc", "test_acc")}
    with torch.device("meta"):  # FLOPs of one training image, forward and backward, counted on a meta-device copy
        meta = torchvision.models.get_model(args.model, num_classes=getattr(model, "module", model).heads.head.out_features)
        flops = measure_flops(meta, lambda: meta(torch.randn(1, 3, meta.image_size, meta.image_size)), lambda y: y.sum())
    steady = dict(images_per_s=None, seconds_per_step=None, data_wait_share=None, mfu=None, flops_per_image=flops)
    line = f"Training time: {train_time / 60:.2f} min ({train_time:.1f} s), including the per-epoch validation"
    if timer.steady_time > 0:  # not a run that diverged during warm-up: Lightning's Throughput from there to the end
        throughput = Throughput(available_flops=peak_flops(device, dtypes.get("matmul"), args.matmul_precision),
                                world_size=world_size(), window_size=2)
        for steps, seconds in ((0, 0.0), (timer.steady_steps, timer.steady_time)):
            samples = steps * args.batch_size
            throughput.update(time=seconds, batches=steps, samples=samples, flops=flops * samples)
        metrics = throughput.compute()
        steady.update(images_per_s=metrics.get("samples_per_sec", metrics["device/samples_per_sec"]),
                      mfu=metrics.get("device/mfu"), seconds_per_step=timer.steady_time / timer.steady_steps,
                      data_wait_share=timer.data_wait / timer.steady_time)
        mfu = f"{steady['mfu']:.1%}" if steady["mfu"] else f"none (no datasheet peak FLOP/s for this {device.type.upper()})"
        line += (f" | Steady state: {speed(steady['images_per_s'], steady['seconds_per_step'])} over {timer.steady_steps} "
                 f"step{'s' * (timer.steady_steps != 1)}, {steady['data_wait_share']:.1%} of their time waiting for data | MFU: {mfu}")
    peak_gb, memory_line = peak_memory(device, memory_baseline)
    print_once(f"{line}\nPeak memory: {memory_line}")
    if not diverged_at:
        print_once(" | ".join(f"{key.split('_')[0].title()} acc.: {value:.2%}" for key, value in accuracies.items()))
    changed = None
    if initial_weights is not None:  # the share of weight elements that training changed: overall, 3 largest tensors
        same = {name.removeprefix("_forward_module."): (p.detach().cpu() == initial_weights[name]).float()
                for name, p in model.named_parameters()}
        changed = {"all": 1 - sum(s.sum().item() for s in same.values()) / sum(s.numel() for s in same.values()),
                   **{name: 1 - s.mean().item() for name, s in sorted(same.items(), key=lambda item: -item[1].numel())[:3]}}
        print_once("Weights changed by training: " + ", ".join(f"{name} {share:.1%}" for name, share in changed.items()))
    record = dict(
        script=Path(sys.argv[0]).name, precision=dtypes.get("in_effect"), precision_requested=precision, device=device.type,
        device_name=device_name(device), world_size=world_size(), steps=timer.steps, train_time_s=train_time,
        data="synthetic" if args.synthetic else str(args.data_dir or ("generated" if args.quick else "cifar10")),
        **{key: vars(args)[key] for key in ("model", "val_split", "test_split", "epochs", "batch_size", "matmul_precision")},
        train_images=timer.steps * args.batch_size * world_size(), **steady,  # every process takes the same steps
        peak_memory_gb=peak_gb, memory_measure=memory_line, weight_dtype=str(dtypes.get("weight"))[6:] or None,
        matmul_output_dtype=str(dtypes.get("matmul"))[6:] or None, **accuracies, diverged=diverged_at is not None,
        diverged_at=diverged_at, changed_share=changed, versions=VERSIONS)
    if args.results and rank() == 0:
        append_record(args.results, {key: None if value != value else value for key, value in record.items()})  # NaN: null
        print_once(f"Results appended to {args.results}")
    return record


def append_record(path, record):
    """Append one JSON line to `path` under a lock on the file itself: concurrent runs keep every record, each whole."""
    with open(path, "a") as file:  # "a" follows a symbolic link and keeps the file and its mode; no lock file beside it
        if hasattr(os, "lockf"):  # POSIX; Windows has no lockf, and appends there go unlocked
            os.lockf(file.fileno(), os.F_LOCK, 0)  # waits for another run's append; released when the file closes
        file.write(json.dumps(record) + "\n")


def all_finite(*tensors):
    """True while every tensor is finite on every process; one small reduction and one sync."""
    finite = torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all().to(torch.int32)
    if world_size() > 1:  # every process stops together when any of them diverges
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def divergence_advice(dtypes):
    """What to do after a divergence: a lower learning rate, unless the weights are float16."""
    if dtypes.get("weight") == torch.float16:
        return ("use bf16-true (04_fabric_bf16true.py) or 16-mixed (02_fabric_16mixed.py), or with float16 weights "
                "an Adam eps that float16 can hold (03b_fabric_16true_adam_eps.py)")
    return "lower --learning-rate (the weights are not float16, so float16's narrow range is not the cause)"


def first_nonfinite(model, features, step):
    """Say where NaN/inf first appeared: weights or gradients of the last step, or this step's forward pass."""
    module = getattr(model, "module", model)  # Fabric's wrapper keeps the model as .module
    parameters = list(module.named_parameters())
    weights = [name for name, p in parameters if not p.isfinite().all()]
    gradients = [name for name, p in parameters if p.grad is not None and not p.grad.isfinite().all()]
    if weights:
        where = f"(first parameter {(gradients or weights)[0]}, {len(gradients or weights)} of {len(parameters)} parameter tensors)"
        return (f"the gradients of step {step - 1} were non-finite first {where}, and the optimizer step wrote them into "
                "the weights" if gradients else f"the weights turned non-finite in optimizer step {step - 1} although "
                f"its gradients were finite {where}, so the loss of step {step} is NaN")
    outputs = []  # (module name, finite?) in the order the modules finish: the first non-finite one is the culprit
    hooks = [sub.register_forward_hook(lambda sub, inputs, output, name=name: outputs.append((name, not isinstance(
             output, torch.Tensor) or output.isfinite().all()))) for name, sub in module.named_modules() if name]
    with torch.no_grad():
        model(features)
    for hook in hooks:
        hook.remove()
    culprit = next((name for name, finite in outputs if not finite), None)
    return (f"the forward pass of step {step} produced the first non-finite output in module {culprit}" if culprit else
            f"the loss of step {step} was non-finite although the forward pass was finite")
