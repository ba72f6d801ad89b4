"""Plumbing shared by the numbered scripts: flags, data, model, accuracy and the run report.

The training loop itself lives in each script; everything here is the same for all of them.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from urllib.error import URLError

import torch
import torch.distributed as dist
import torchvision
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from torchvision import transforms
from torchvision.datasets import CIFAR10, ImageFolder

VIT_BUILDERS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")
TINY_VIT = "vit_tiny_32"  # the small model of --quick: 32x32 input, random initial weights
DIVERGED_EXIT_CODE = 3  # a run that stopped because the loss or the weights turned NaN/inf
PROGRESS_EVERY_S = 30.0
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
QUICK_SPLIT_SIZES = (2250, 250, 500)  # train, val, test: CIFAR-10's 45k/5k/10k divided by 20


def fail(message):
    """Stop the run with one sentence on stderr and exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def parse_args(argv=None):
    """The flags every numbered script accepts; defaults reproduce the reference experiment."""
    parser = argparse.ArgumentParser(
        description="Finetune a vision transformer on CIFAR-10 (or your own images) and report training time, "
        "peak memory and accuracy. The defaults reproduce the reference experiment.")
    parser.add_argument("--quick", action="store_true",
                        help=f"offline run in under a minute on a laptop CPU: the small {TINY_VIT} model trained on "
                        "generated images (or on --data-dir resized to 32x32)")
    parser.add_argument("--synthetic", action="store_true",
                        help="speed-and-memory mode: full-size generated images, random initial weights, no "
                        "download; one epoch of --max-steps steps (default 20)")
    parser.add_argument("--data-dir", type=Path, metavar="PATH",
                        help="your own images as PATH/train/<class>/*, PATH/test/<class>/* and optionally "
                        "PATH/val/<class>/* (else a seeded 10%% of train); default: CIFAR-10, downloaded to ./data")
    parser.add_argument("--model", choices=VIT_BUILDERS, default="vit_l_16",
                        help="torchvision ViT builder, with ImageNet weights unless --synthetic (default %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="passes over the training set (default 3)")
    parser.add_argument("--max-steps", type=positive_int, metavar="N",
                        help="train one epoch of at most N optimizer steps, then evaluate and report as usual")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per device and step (default 32)")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate (default 5e-5, or 1e-3 with --quick)")
    parser.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default="medium",
                        help="torch.set_float32_matmul_precision (default medium, as in the reference): high or "
                        "medium let float32 matmuls use TF32 on Ampere+ GPUs, and medium lets CPUs with AMX use "
                        "bfloat16; highest keeps true float32")
    parser.add_argument("--num-workers", type=non_negative_int,
                        help="data loader worker processes (default 0 for generated data, else up to 8)")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=5, metavar="N",
                        help="first N steps left out of the steady-state images/s (default 5)")
    parser.add_argument("--results", type=Path, metavar="FILE", help="append one JSON record of this run to FILE")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="where to train (default auto: a GPU when there is one, else the CPU)")
    parser.add_argument("--devices", type=positive_int, default=1, help="devices per machine (default 1)")
    parser.add_argument("--strategy", choices=("auto", "ddp", "fsdp"), default="auto",
                        help="how several devices share the work (default auto: ddp when --devices > 1)")
    parser.add_argument("--num-nodes", type=positive_int, default=1, help="machines (default 1)")
    args = parser.parse_args(argv)

    if args.quick and args.synthetic:
        parser.error("--quick and --synthetic pick different data; use one of them")
    if args.synthetic and args.data_dir:
        parser.error("--synthetic generates its own images; drop --data-dir")
    if args.max_steps and "--epochs" in (argv if argv is not None else sys.argv):
        parser.error("--max-steps trains one epoch of at most that many steps; drop --epochs")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error(f"--learning-rate must be positive, got {args.learning_rate}")
    if args.data_dir and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder; it needs train/<class>/ and test/<class>/")
    if args.strategy == "fsdp" and (args.accelerator == "cpu" or not torch.cuda.is_available()):
        parser.error("--strategy fsdp needs CUDA GPUs (Fabric runs FSDP on GPUs only); use --strategy ddp here")
    if args.synthetic and args.max_steps is None:
        args.max_steps = 20
    if args.max_steps:
        args.epochs = 1
    if args.quick:
        args.model = TINY_VIT
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.quick else 5e-5
    if args.num_workers is None:
        args.num_workers = 0 if (args.quick or args.synthetic) and not args.data_dir else min(8, os.cpu_count())
    return args


def get_device(args):
    """The one device of the plain-PyTorch script: CUDA, else MPS, else CPU."""
    if args.devices > 1 or args.num_nodes > 1 or args.strategy != "auto":
        fail("00_pytorch_baseline.py trains on one device; use a Fabric script (01-05) for "
             "--devices, --num-nodes or --strategy")
    if args.accelerator in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if args.accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    if args.accelerator not in ("auto", "cpu"):
        fail(f"--accelerator {args.accelerator} was asked for but is not available on this machine")
    return torch.device("cpu")


# ---------------------------------------------------------------- data


def generated_dataset(num_images, num_classes=10, image_size=32, seed=0):
    """A learnable in-memory image set: each class is a smooth colour pattern under heavy noise."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    prototypes = torch.nn.functional.interpolate(prototypes, size=image_size, mode="bilinear")
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)
    images = prototypes[labels] + 2.5 * torch.randn(num_images, 3, image_size, image_size, generator=generator)
    return TensorDataset(images, labels)


class RepeatedImages(torch.utils.data.Dataset):
    """Full-size random images for speed runs: a small pool, indexed round-robin, costs no loading time."""

    def __init__(self, length, image_size, num_classes=10, pool_size=64):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(pool_size, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (pool_size,), generator=generator)
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.images[index % len(self.images)], self.labels[index % len(self.labels)]


def image_folder_splits(data_dir, transform):
    """train/val/test ImageFolders from a tree; val is a seeded 10% of train when the folder is absent."""
    splits = {}
    for name in ("train", "val", "test"):
        folder = data_dir / name
        if not folder.is_dir():
            if name == "val":
                continue
            fail(f"--data-dir {data_dir} has no {name}/ folder; it needs {name}/<class>/<image files>")
        try:
            splits[name] = ImageFolder(folder, transform=transform)
        except (FileNotFoundError, RuntimeError) as error:  # no class folders, or no images in them
            fail(f"--data-dir split {folder} holds no usable images ({error})")
    train_classes = splits["train"].classes
    for name, dataset in splits.items():
        if dataset.classes != train_classes:
            fail(f"--data-dir splits disagree on the classes: train has {train_classes}, "
                 f"{name} has {dataset.classes}; give every split the same class folders")
    if "val" in splits:
        return splits["train"], splits["val"], splits["test"], len(train_classes)
    order = torch.randperm(len(splits["train"]), generator=torch.Generator().manual_seed(0)).tolist()
    num_val = max(1, len(order) // 10)
    train = Subset(splits["train"], order[num_val:])
    return train, Subset(splits["train"], order[:num_val]), splits["test"], len(train_classes)


def cifar10_splits(data_dir, transform):
    """CIFAR-10 as 45,000 train, 5,000 validation (the last training images) and 10,000 test images."""
    try:
        train_full = CIFAR10(data_dir, train=True, transform=transform, download=True)
        test = CIFAR10(data_dir, train=False, transform=transform, download=True)
    except (URLError, OSError) as error:
        fail(f"could not download CIFAR-10 to {data_dir} ({getattr(error, 'reason', error)}); connect to the "
             "internet, or train offline with --quick or on your own images with --data-dir PATH")
    num_train = len(train_full) - 5000
    return Subset(train_full, range(num_train)), Subset(train_full, range(num_train, len(train_full))), test, 10


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ShardedEvalSampler(DistributedSampler):
    """Each process evaluates its own slice of the data, with no sample padded in or dropped."""

    def __init__(self, dataset):
        super().__init__(dataset, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self):
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def get_dataloaders(args):
    """Train, validation and test loaders plus the class count, for the data the flags select."""
    image_size = 32 if args.quick else 224
    if args.synthetic:
        num_train = args.max_steps * args.batch_size * world_size()
        train, val, test, num_classes = (RepeatedImages(num_train, image_size), RepeatedImages(2 * args.batch_size, image_size),
                                         RepeatedImages(2 * args.batch_size, image_size), 10)
    elif args.quick and not args.data_dir:
        num_train, num_val, num_test = QUICK_SPLIT_SIZES
        train_full = generated_dataset(num_train + num_val, seed=0)
        train, val = Subset(train_full, range(num_train)), Subset(train_full, range(num_train, num_train + num_val))
        test, num_classes = generated_dataset(num_test, seed=1), 10
    else:
        if args.quick:
            transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        else:  # the pretrained weights' own preprocessing: resize, centre crop, ImageNet normalisation
            transform = torchvision.models.get_model_weights(args.model)["IMAGENET1K_V1"].transforms()
        if args.data_dir:
            train, val, test, num_classes = image_folder_splits(args.data_dir, transform)
        else:
            train, val, test, num_classes = cifar10_splits(Path("data"), transform)

    loader_settings = dict(batch_size=args.batch_size, num_workers=args.num_workers,
                           pin_memory=torch.cuda.is_available(), persistent_workers=args.num_workers > 0)
    shuffle_order = torch.Generator().manual_seed(123)  # the same data order on every device
    train_loader = DataLoader(train, shuffle=True, drop_last=True, generator=shuffle_order, **loader_settings)
    eval_loaders = [DataLoader(dataset, sampler=ShardedEvalSampler(dataset) if world_size() > 1 else None, **loader_settings)
                    for dataset in (val, test)]
    return train_loader, *eval_loaders, num_classes


# ---------------------------------------------------------------- model and accuracy


def vit_architecture(name, num_classes):
    """The network alone, randomly initialised (also used on the meta device to count FLOPs)."""
    if name == TINY_VIT:
        return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4,
                                                    hidden_dim=64, mlp_dim=128, num_classes=num_classes)
    return torchvision.models.get_model(name, num_classes=num_classes)


def build_model(args, num_classes):
    """torchvision's ViT with a new `num_classes` head; ImageNet weights unless --quick or --synthetic."""
    if args.quick or args.synthetic:
        return vit_architecture(args.model, num_classes)
    weights = torchvision.models.get_model_weights(args.model)["IMAGENET1K_V1"]
    try:
        model = torchvision.models.get_model(args.model, weights=weights)
    except (URLError, OSError) as error:
        fail(f"could not download the {args.model} ImageNet weights ({getattr(error, 'reason', error)}); connect to "
             "the internet once (they are cached in ~/.cache/torch), or use --synthetic or --quick")
    model.heads.head = torch.nn.Linear(model.heads.head.in_features, num_classes)
    return model


def model_device(model):
    return next(model.parameters()).device


@torch.inference_mode()
def compute_accuracy(model, loader):
    """Fraction of correctly classified images; exact across processes (summed counts, no padding)."""
    model.eval()
    device = model_device(model)
    accuracy = None
    for features, targets in loader:
        logits = model(features.to(device))
        if accuracy is None:
            accuracy = MulticlassAccuracy(logits.shape[1], average="micro", validate_args=False).to(device)
        accuracy.update(logits.argmax(dim=1), targets.to(device))
    if accuracy is None:  # this process got no samples; still join the other processes' sum
        accuracy = MulticlassAccuracy(2, average="micro").to(device)
    return accuracy.compute().item()


# ---------------------------------------------------------------- run monitor and report


def is_main_process():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print_once(*values):
    """print on the first process only, so a multi-GPU run prints each line once."""
    if is_main_process():
        print(*values, flush=True)


def versions():
    return {"python": platform.python_version(),
            **{name: version(name) for name in ("torch", "torchvision", "lightning")}}


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{cpu} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"{device.type}: {cpu}"


def precision_in_effect(weight_dtype, matmul_dtype):
    """Name the precision from what the run really computes in: the weights' and the matmuls' dtypes."""
    short = {torch.float32: "32", torch.float16: "16", torch.bfloat16: "bf16"}
    if weight_dtype == torch.float32:
        return "32-true" if matmul_dtype == torch.float32 else f"{short[matmul_dtype]}-mixed"
    return f"{short[weight_dtype]}-true"


def process_memory_kb(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


def write_record(path, record):
    """Append one JSON line to `path`, atomically: the file never holds a half-written record."""
    path = Path(path)
    existing = path.read_text() if path.exists() else ""
    with tempfile.NamedTemporaryFile("w", dir=path.parent or ".", delete=False, suffix=".tmp") as tmp:
        tmp.write(existing + json.dumps(record) + "\n")
    os.chmod(tmp.name, 0o644)  # a temporary file is private to its owner; a results file is not
    os.replace(tmp.name, path)


class TrainingMonitor:
    """Times the steps, prints progress, stops a diverged run with a diagnosis, and reports the run."""

    def __init__(self, args, precision, device):
        self.args, self.precision_requested, self.device = args, precision, torch.device(device)
        if self.device.type == "cuda" and "bf16" in precision and not torch.cuda.is_bf16_supported(including_emulation=False):
            fail(f"{precision} needs native bfloat16, which {device_name(self.device)} lacks (it arrived with Ampere, "
                 "compute capability 8.0); run 02_fabric_16mixed.py (16-mixed) on this GPU instead")
        try:
            from watermark import watermark
            print_once(watermark(packages="torch,torchvision,lightning,torchmetrics", python=True).strip())
        except ImportError:
            print_once(" | ".join(f"{name}: {value}" for name, value in versions().items()))
        print_once(f"Device: {device_name(self.device)} x {world_size()} process(es) | Model: {args.model} | "
                   f"Precision asked for: {precision} | float32 matmul precision: {args.matmul_precision}")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
            self.rss_before_model_kb = process_memory_kb("VmRSS")
        self.epoch = self.steps = self.steady_steps = self.images_trained = 0
        self.steady_time = self.data_wait = 0.0
        self.model = self.batch = self.train_accuracy = self.start = None
        self.weight_dtype = self.matmul_dtype = self.precision_in_effect = None  # set by the first forward pass
        self.train_acc = self.val_acc = float("nan")
        self.diverged_at = None

    def watch(self, model):
        """Keep the model for the dtype report and the divergence diagnosis; count its FLOPs."""
        self.model = model
        head = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
        self.head_hook = head.register_forward_hook(self._record_matmul_dtype)
        with torch.device("meta"):
            meta_model = vit_architecture(self.args.model, head.out_features)
            size = meta_model.image_size
            self.flops_per_image = measure_flops(meta_model, lambda: meta_model(torch.randn(1, 3, size, size)),
                                                 lambda logits: logits.sum())

    def _record_matmul_dtype(self, module, inputs, output):
        self.head_hook.remove()
        self.weight_dtype, self.matmul_dtype = module.weight.dtype, output.dtype
        self.precision_in_effect = in_effect = precision_in_effect(self.weight_dtype, self.matmul_dtype)
        why = ""
        if in_effect != self.precision_requested:
            why = (" (Lightning has no float16 autocast on CPU and runs bfloat16 autocast instead)"
                   if self.precision_requested == "16-mixed" and self.device.type == "cpu" else " (differs from the request)")
        print_once(f"Precision in effect: {in_effect}{why} | weights {str(self.weight_dtype)[6:]}, "
                   f"matmul outputs {str(output.dtype)[6:]}")

    def _synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def batches(self, loader):
        """Yield the training batches of one epoch, timing each step and printing progress."""
        self.epoch += 1
        self.start = self.start or time.perf_counter()
        total_steps = self.args.max_steps or self.args.epochs * len(loader)
        steps_this_epoch = min(len(loader), total_steps - self.steps)
        last_print, images_since_print = time.perf_counter(), 0
        iterator = iter(loader)
        for batch_index in range(1, steps_this_epoch + 1):
            step_start = time.perf_counter()
            self.batch = next(iterator)
            waited = time.perf_counter() - step_start
            yield self.batch
            self._synchronize()
            now = time.perf_counter()
            self.steps += 1
            self.images_trained += len(self.batch[1])
            images_since_print += len(self.batch[1]) * world_size()
            if self.steps > self.args.warmup_steps or total_steps <= self.args.warmup_steps:
                self.steady_steps += 1
                self.steady_time += now - step_start
                self.data_wait += waited
            if self.steps == 1 or now - last_print >= PROGRESS_EVERY_S or batch_index == steps_this_epoch:
                seconds_left = (total_steps - self.steps) * (now - self.start) / self.steps
                print_once(f"Epoch: {self.epoch:03d}/{self.args.epochs:03d} | Batch {batch_index:04d}/{steps_this_epoch:04d}"
                           f" | Loss: {self.loss.item():.4f} | {images_since_print / (now - last_print):.1f} img/s"
                           f" | {seconds_left // 60:02.0f}:{seconds_left % 60:02.0f} left")
                last_print, images_since_print = now, 0

    def step(self, loss, logits, targets):
        """Count training accuracy and stop at once, with a diagnosis, if the loss is not finite."""
        if self.train_accuracy is None:
            self.train_accuracy = MulticlassAccuracy(logits.shape[1], average="micro", validate_args=False).to(logits.device)
        self.train_accuracy.update(logits.detach().argmax(dim=1), targets)
        self.loss = loss.detach()
        if not all_finite(self.loss):
            self._stop_diverged()

    def end_epoch(self, val_acc):
        """Print and keep the epoch's accuracies; start the next epoch's training accuracy afresh."""
        self.val_acc, self.train_acc = val_acc, self.train_accuracy.compute().item()
        self.train_accuracy.reset()
        self.end = time.perf_counter()
        print_once(f"Epoch: {self.epoch:03d}/{self.args.epochs:03d} | Train acc.: {self.train_acc:.2%} | "
                   f"Val acc.: {val_acc:.2%}")

    def _stop_diverged(self):
        where = first_nonfinite(self.model, self.batch[0], self.steps + 1)
        self.diverged_at = where
        self.end = time.perf_counter()
        self.report(float("nan"))
        if is_main_process():
            print(f"error: training diverged: {where}; use bf16-true (04_fabric_bf16true.py) or 16-mixed "
                  "(02_fabric_16mixed.py), or with float16 weights an Adam eps that float16 can hold "
                  "(03b_fabric_16true_adam_eps.py)", file=sys.stderr)
        sys.exit(DIVERGED_EXIT_CODE)

    def peak_memory(self):
        """(peak GB that the record keeps, what was measured); the most of any process when there are several."""
        if self.device.type == "cuda":
            numbers = [torch.cuda.max_memory_allocated(self.device) / 1e9, torch.cuda.max_memory_reserved(self.device) / 1e9]
            description = "{:.2f} GB allocated (max_memory_allocated), {:.2f} GB reserved"
        elif hasattr(self, "rss_before_model_kb"):
            peak_kb = process_memory_kb("VmHWM")
            numbers = [(peak_kb - self.rss_before_model_kb) * 1024 / 1e9, peak_kb * 1024 / 1e9]
            description = "{:.2f} GB peak RSS growth over the RSS before the model was built (absolute peak RSS {:.2f} GB)"
        else:
            numbers = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9]  # bytes on macOS
            description = "{:.2f} GB absolute peak RSS of the process"
        if world_size() > 1:
            numbers = reduce_over_processes(numbers, self.device, dist.ReduceOp.MAX)
            description += f", per process: the most of any of the {world_size()} processes"
        return numbers[0], description.format(*numbers)

    def report(self, test_acc):
        """Print the run's time, speed, memory and accuracy; append its record to --results."""
        if self.diverged_at is None and not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.diverged_at = "the weights were non-finite at the end of training"
        peak_gb, memory_line = self.peak_memory()
        train_time = self.end - self.start
        images_trained = int(reduce_over_processes([self.images_trained], self.device, dist.ReduceOp.SUM)[0])
        measured = self.steady_time > 0  # a run that diverged during warm-up has no steady state
        images_per_s = self.steady_steps * self.args.batch_size * world_size() / self.steady_time if measured else None
        data_wait_share = self.data_wait / self.steady_time if measured else None
        peak_flops = get_available_flops(self.device, self.matmul_dtype) if self.device.type == "cuda" else None
        mfu = images_per_s / world_size() * self.flops_per_image / peak_flops if peak_flops and measured else None
        print_once(f"Training time: {train_time / 60:.2f} min ({train_time:.1f} s)" + (
            f" | Steady state: {images_per_s:.1f} images/s over {self.steady_steps} steps, {data_wait_share:.1%} of "
            f"their time waiting for data" if measured else "") + (f" | MFU: {mfu:.1%}" if mfu is not None else ""))
        print_once(f"Peak memory: {memory_line}")
        if self.diverged_at is None:
            print_once(f"Train acc.: {self.train_acc:.2%} | Val acc.: {self.val_acc:.2%} | Test acc.: {test_acc:.2%}")
        record = {
            "script": Path(sys.argv[0]).name, "precision": self.precision_in_effect,
            "precision_requested": self.precision_requested, "device": self.device.type,
            "device_name": device_name(self.device), "world_size": world_size(), "model": self.args.model,
            "data": "synthetic" if self.args.synthetic else str(self.args.data_dir or ("generated" if self.args.quick else "cifar10")),
            "epochs": self.args.epochs, "batch_size": self.args.batch_size, "steps": self.steps,
            "train_images": images_trained,
            "matmul_precision": self.args.matmul_precision, "train_time_s": train_time, "images_per_s": images_per_s,
            "data_wait_share": data_wait_share, "flops_per_image": self.flops_per_image, "mfu": mfu,
            "peak_memory_gb": peak_gb, "memory_measure": memory_line, "weight_dtype": str(self.weight_dtype)[6:],
            "matmul_output_dtype": str(self.matmul_dtype)[6:], "train_acc": self.train_acc, "val_acc": self.val_acc,
            "test_acc": test_acc, "diverged": self.diverged_at is not None, "diverged_at": self.diverged_at,
            "versions": versions(),
        }
        if self.args.results and is_main_process():
            write_record(self.args.results, {key: None if isinstance(value, float) and math.isnan(value) else value
                                              for key, value in record.items()})
            print_once(f"Results appended to {self.args.results}")
        return record


def reduce_over_processes(numbers, device, op):
    """Sum (or max) a few numbers over all processes; the numbers themselves on a single process."""
    if world_size() == 1:
        return numbers
    tensor = torch.tensor(numbers, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_finite(loss):
    """True while the loss is finite on every process; one scalar and one sync per step."""
    finite = torch.isfinite(loss).to(torch.int32)
    if world_size() > 1:  # every process stops together when any of them diverges
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def first_nonfinite(model, features, step):
    """Say where NaN/inf first appeared: weights or gradients of the last step, or this step's forward pass."""
    module = getattr(model, "module", model)  # Fabric's wrapper keeps the user's model as .module
    num_tensors = len(list(module.parameters()))
    bad_weights = [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad_weights:
        bad_grads = [name for name, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad_grads:
            return (f"the gradients of step {step - 1} were non-finite first (parameter {bad_grads[0]}, "
                    f"{len(bad_grads)} of {num_tensors} parameter tensors), and the optimizer step wrote them into the weights")
        return (f"the weights turned non-finite in optimizer step {step - 1} although its gradients were finite "
                f"(first parameter {bad_weights[0]}, {len(bad_weights)} of {num_tensors} parameter tensors), "
                f"so the loss of step {step} is NaN")
    bad_outputs = []  # hooks fire as each module finishes, so the first entry is the earliest culprit

    def note_nonfinite(name, output):
        if isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
            bad_outputs.append(name)

    hooks = [sub.register_forward_hook(lambda sub, inputs, output, name=name: note_nonfinite(name, output))
             for name, sub in module.named_modules() if name]
    with torch.no_grad():
        model(features)
    for hook in hooks:
        hook.remove()
    if bad_outputs:
        return f"the forward pass of step {step} produced the first non-finite output in module {bad_outputs[0]}"
    return f"the loss of step {step} was non-finite although the forward pass was finite"
