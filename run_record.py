"""The end of a run: what it prints about time, speed, memory and accuracy, and its record."""

import json
import math
import os
import sys
from pathlib import Path

import torch
import torchvision
from lightning.fabric.utilities.throughput import Throughput, measure_flops

from local_utilities import DataInfo
from measurement import StepTimer, device_name, peak_flops, peak_memory, speed, versions
from processes import print_once, rank, world_size


def flops_per_image(model_name: str, num_classes: int) -> int:
    """FLOPs of one training image, forward and backward, counted on a copy on the meta device."""
    with torch.device("meta"):
        model = torchvision.models.get_model(model_name, num_classes=num_classes)
        images = torch.randn(1, 3, model.image_size, model.image_size)

        def forward():
            return model(images)

        def loss(logits):
            return logits.sum()

        return measure_flops(model, forward, loss)


def steady_state(timer: StepTimer, flops: int, peak: float | None) -> dict:
    """Images/s, s/step, data-wait share and MFU after warm-up, from Lightning's Throughput.

    All None when no step finished after warm-up (a run that diverged at once).
    """
    numbers = dict(images_per_s=None, seconds_per_step=None, data_wait_share=None, mfu=None)
    if timer.steady_time == 0:
        return numbers
    throughput = Throughput(available_flops=peak, world_size=world_size(), window_size=2)
    images = timer.steady_steps * timer.images_per_step // world_size()  # this process's
    throughput.update(time=0.0, batches=0, samples=0, flops=0)
    throughput.update(
        time=timer.steady_time, batches=timer.steady_steps, samples=images, flops=flops * images
    )
    metrics = throughput.compute()
    numbers["images_per_s"] = metrics.get("samples_per_sec", metrics["device/samples_per_sec"])
    numbers["mfu"] = metrics.get("device/mfu")
    numbers["seconds_per_step"] = timer.steady_time / timer.steady_steps
    numbers["data_wait_share"] = timer.steady_data_wait / timer.steady_time
    return numbers


def copy_weights(model: torch.nn.Module, track_updates: bool) -> dict[str, torch.Tensor] | None:
    """For --track-updates, a copy of the weights in CPU memory to compare with after training."""
    if not track_updates:
        return None
    return {name: weight.detach().cpu().clone() for name, weight in model.named_parameters()}


def changed_shares(model: torch.nn.Module, initial_weights: dict) -> dict[str, float]:
    """The share of weight elements that training changed: overall, and of the 3 largest tensors."""
    same = {}
    for name, weight in model.named_parameters():
        short = name.removeprefix("_forward_module.").removeprefix("_orig_mod.")  # Fabric, compile
        same[short] = (weight.detach().cpu() == initial_weights[name]).float()
    total = sum(s.numel() for s in same.values())
    shares = {"all": 1 - sum(s.sum().item() for s in same.values()) / total}
    largest = sorted(same.items(), key=lambda item: item[1].numel(), reverse=True)[:3]
    for name, unchanged in largest:
        shares[name] = 1 - unchanged.mean().item()
    return shares


def report(
    *,
    args,
    data: DataInfo,
    timer: StepTimer,
    train_time: float,
    memory_baseline: int | None,
    dtypes: dict,
    accuracies: dict,
    diverged_at: str | None,
    model: torch.nn.Module,
    initial_weights: dict | None = None,
) -> dict:
    """Print the run's time, speed, MFU, memory and accuracy; append its record to --results.

    `dtypes` is watch_dtypes' dict (the precision asked for, the device and the dtypes in effect);
    `train_time` is in seconds; `accuracies` holds train_acc, val_acc and test_acc as fractions
    (any missing one, and all of them after a divergence, are recorded as null). Returns the record.
    """
    precision, device = dtypes["requested"], dtypes["device"]
    accuracy = {key: accuracies.get(key, math.nan) for key in ("train_acc", "val_acc", "test_acc")}
    if diverged_at:
        accuracy = dict.fromkeys(accuracy, math.nan)
    flops = flops_per_image(args.model, data.num_classes)
    peak = peak_flops(device, dtypes.get("matmul"), args.matmul_precision)
    steady = steady_state(timer, flops, peak)
    first_step = None
    if timer.step_times:
        first_step = timer.step_times[0]
    line = f"Training time: {train_time / 60:.2f} min ({train_time:.1f} s)"
    line += ", including the per-epoch validation"
    if first_step is not None:
        line += f" | First step: {first_step:.2f} s"
    if steady["images_per_s"]:
        plural = "s" * (timer.steady_steps != 1)
        mfu = f"none (no datasheet peak FLOP/s for this {device.type.upper()})"
        if steady["mfu"]:
            mfu = f"{steady['mfu']:.1%}"
        line += (
            f" | Steady state: {speed(steady['images_per_s'], steady['seconds_per_step'])} over "
            f"{timer.steady_steps} step{plural}, {steady['data_wait_share']:.1%} of their time "
            f"waiting for data | MFU: {mfu}"
        )
    peak_gb, memory_line = peak_memory(device, memory_baseline)
    print_once(line)
    print_once(f"Peak memory: {memory_line}")
    if not diverged_at:
        names = {"train_acc": "Train", "val_acc": "Val", "test_acc": "Test"}
        print_once(" | ".join(f"{names[key]} acc.: {value:.2%}" for key, value in accuracy.items()))
    changed = None
    if initial_weights is not None:
        changed = changed_shares(model, initial_weights)
        shares = ", ".join(f"{name} {share:.1%}" for name, share in changed.items())
        print_once(f"Weights changed by training: {shares}")
    record = dict(
        script=Path(sys.argv[0]).name,
        precision=dtypes.get("in_effect"),
        precision_requested=precision,
        device=device.type,
        device_name=device_name(device),
        world_size=world_size(),
        model=args.model,
        data=data.source,
        val_split=data.val_split,
        test_split=data.test_split,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        matmul_precision=args.matmul_precision,
        steps=len(timer.step_times),
        train_images=len(timer.step_times) * timer.images_per_step,
        train_time_s=train_time,
        first_step_s=first_step,
        **steady,
        flops_per_image=flops,
        peak_memory_gb=peak_gb,
        memory_measure=memory_line,
        weight_dtype=dtype_name(dtypes.get("weight")),
        matmul_output_dtype=dtype_name(dtypes.get("matmul")),
        **accuracy,
        diverged=diverged_at is not None,
        diverged_at=diverged_at,
        changed_share=changed,
        versions=versions(),
    )
    if args.results and rank() == 0:
        append_record(args.results, record)
        print_once(f"Results appended to {args.results}")
    return record


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """'bfloat16' for torch.bfloat16; None for None."""
    if dtype is None:
        return None
    return str(dtype).removeprefix("torch.")


def append_record(path: Path, record: dict) -> None:
    """Append the record as one JSON line, NaN written as null, under a lock on the file itself.

    Concurrent runs keep every record whole. A last line left without its newline (a run killed
    while writing) is ended first, so the new record starts on a line of its own.
    """
    if not path.parent.is_dir():
        print_once(f"Creating the folder {path.parent} for --results")
        path.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in record.items()
    }
    with open(path, "a+b") as file:  # "a" follows a symbolic link and keeps the file's mode
        if hasattr(os, "lockf"):  # POSIX; Windows has no lockf, and appends there go unlocked
            os.lockf(file.fileno(), os.F_LOCK, 0)  # waits for another run's append
        end = file.seek(0, os.SEEK_END)
        if end > 0:
            file.seek(end - 1)
            if file.read(1) != b"\n":
                file.write(b"\n")
        file.write((json.dumps(clean) + "\n").encode())
