"""The measurement of a run, in one object: made before the model is built, told when steps start
and end, handed the model, and asked at the end for the report and the record."""

import math
import sys
from pathlib import Path

import torch
from lightning.fabric.utilities.throughput import Throughput, measure_flops

from hardware import (
    check_compiler,
    datasheet_peak_flops,
    device_name,
    peak_memory,
    reset_peak_memory,
    versions,
)
from matmul_ceiling import (
    Peak,
    ceilings_record,
    ceilings_text,
    measure_ceilings,
    mfu_peaks,
    mfu_text,
    slow_half_note,
)
from model_weights import get_model
from processes import print_once, rank, world_size
from run_record import append_record
from step_timer import StepTimer, speed

SHORT_DTYPE_NAMES = {torch.float32: "32", torch.float16: "16", torch.bfloat16: "bf16"}
ACCURACY_NAMES = {"train_acc": "Train", "val_acc": "Val", "test_acc": "Test"}


class Measurement:
    """What a run measures: time per step, speed, MFU, peak memory, the dtypes in effect and the
    share of weights training changed; it prints the report and appends the record.

    Made just before the model is built, where the peak memory starts to count. `timer` is the
    StepTimer the training loop tells when steps start and end. The other values are what the
    record keeps beside the measurements: the model's name (its FLOPs are counted from it), the
    epochs, the batch size per device, the warm-up steps before the steady state, the learning
    rate, the seed and the --save file (recorded_flags), and the data (get_dataloaders' DataInfo:
    the class count, the source and where validation and test came from).
    """

    def __init__(
        self,
        precision: str,
        device: torch.device,
        steps_per_epoch: int,
        *,
        model: str,
        epochs: int,
        batch_size: int,
        warmup_steps: int,
        learning_rate: float,
        seed: int,
        save: str | None = None,
        num_classes: int,
        source: str,
        val_split: str,
        test_split: str,
    ):
        self.precision = precision
        self.device = device
        self.model_name = model
        self.num_classes = num_classes
        self.matmul_precision = torch.get_float32_matmul_precision()  # as the script set it
        self.settings = dict(  # recorded as they are
            model=model,
            data=source,
            val_split=val_split,
            test_split=test_split,
            epochs=epochs,
            batch_size=batch_size,
            warmup_steps=warmup_steps,
            learning_rate=learning_rate,
            seed=seed,
            save=save,
            matmul_precision=self.matmul_precision,
        )
        self.timer = StepTimer(device, steps_per_epoch, epochs, batch_size, warmup_steps)
        self.weight_dtype: torch.dtype | None = None  # the dtypes in effect, from the first
        self.matmul_dtype: torch.dtype | None = None  # forward pass (watch)
        self.precision_in_effect: str | None = None
        self.model: torch.nn.Module | None = None
        self.initial_weights: dict[str, torch.Tensor] | None = None
        # the device's matmul ceilings, measured before the memory baseline: the probe's tensors
        # are freed by then
        self.ceilings = measure_ceilings(device, precision)
        print_once(f"Matmul ceilings (measured now, F.linear): {ceilings_text(self.ceilings)}")
        note = slow_half_note(self.ceilings, precision, device)
        if note:
            print_once(note)
        self.memory_baseline = reset_peak_memory(device)

    def watch(self, model: torch.nn.Module, track_updates: bool) -> None:
        """Note the dtypes in effect at the model's first forward pass, and print them; with
        `track_updates` (--track-updates), keep a copy of the weights in CPU memory to compare
        with after training.

        The precision in effect is named from the head's weight dtype and matmul output dtype:
        float32 weights with 16-bit matmul outputs are "mixed".
        Errors: MissingCompiler for a compiled model that this machine cannot compile
        (check_compiler).
        """
        check_compiler(model, self.device)  # a compiled model: before its first step compiles
        self.model = model
        if track_updates:
            self.initial_weights = {
                name: weight.detach().cpu().clone() for name, weight in model.named_parameters()
            }
        seen = {"weight": None, "matmul": None}  # fixed keys: torch.compile guards the dict's size

        def note(head, inputs, output):  # compiled, this runs in the graph: it notes and stays
            seen.update(weight=head.weight.dtype, matmul=output.dtype)
            if not torch.compiler.is_compiling() and self.precision_in_effect is None:
                head_hook.remove()
                announce(model, inputs, output)

        def announce(module, inputs, output):  # also the model's hook, run outside compiled code
            model_hook.remove()
            self.weight_dtype, self.matmul_dtype = seen["weight"], seen["matmul"]
            in_effect = f"{SHORT_DTYPE_NAMES[self.weight_dtype]}-true"
            if self.weight_dtype == torch.float32 and self.matmul_dtype != torch.float32:
                in_effect = f"{SHORT_DTYPE_NAMES[self.matmul_dtype]}-mixed"
            self.precision_in_effect = in_effect
            why = ""
            if self.precision == "16-mixed" and self.device.type == "cpu":
                why = (
                    " (Lightning has no float16 autocast on CPU and runs bfloat16 autocast instead)"
                )
            elif in_effect != self.precision:
                why = " (differs from the request)"
            print_once(
                f"Precision in effect: {in_effect}{why} | weights {dtype_name(self.weight_dtype)}, "
                f"matmul outputs {dtype_name(self.matmul_dtype)}"
            )
            if any(type(layer).__name__ == "Float8Linear" for layer in model.modules()):  # 04d
                from float8_training import describe_float8_layers, float8_layers  # loads torchao

                print_once(describe_float8_layers(float8_layers(getattr(model, "module", model))))

        head_hook = model.heads.head.register_forward_hook(note)
        model_hook = model.register_forward_hook(announce)

    def peaks(self) -> list[Peak]:
        """What MFU divides by, for matmuls in the dtype in effect: the datasheet's dense peak
        (known GPUs), then the matmul ceiling measured at start; the record's MFU uses the first."""
        datasheet = datasheet_peak_flops(self.device, self.matmul_dtype, self.matmul_precision)
        return mfu_peaks(datasheet, self.matmul_dtype, self.matmul_precision, self.ceilings)

    def report(
        self,
        train_time: float,
        accuracies: dict[str, float],
        diverged_at: str | None,
        results: Path | None,
    ) -> dict:
        """Print the run's time, speed, MFU, memory and accuracy (and the changed weights); append
        its record to `results` (--results) from the first process. Returns the record.

        `train_time` is in seconds; `accuracies` holds train_acc, val_acc and test_acc as
        fractions (any missing one, and all of them after a divergence, are recorded as null), and
        test_classes (local_utilities.accuracy_and_classes), printed when classes are imbalanced.
        """
        timer = self.timer
        accuracy = {key: accuracies.get(key, math.nan) for key in ACCURACY_NAMES}
        if diverged_at:
            accuracy = dict.fromkeys(accuracy, math.nan)
        flops = flops_per_image(self.model_name, self.num_classes)
        peaks = self.peaks()
        peak = None
        if peaks:
            peak = peaks[0].flops_per_s
        steady = steady_state(timer, flops, peak)
        if steady["mfu"] is not None and steady["mfu"] > 1:  # a ceiling measured too low
            steady["mfu"] = None
        first_step = None
        if timer.step_times:
            first_step = timer.step_times[0]
        line = f"Training time: {train_time / 60:.2f} min ({train_time:.1f} s)"
        line += ", including the per-epoch validation"
        if first_step is not None:
            line += f" | First step: {first_step:.2f} s"
        if steady["images_per_s"]:
            plural = "s" * (timer.steady_steps != 1)
            mfu = mfu_text(steady["flops_per_s"], peaks, self.device)
            line += (
                f" | Steady state: {speed(steady['images_per_s'], steady['seconds_per_step'])} "
                f"over {timer.steady_steps} step{plural}, {steady['data_wait_share']:.1%} of their "
                f"time waiting for data | MFU: {mfu}"
            )
        peak_gb, memory_line = peak_memory(self.device, self.memory_baseline)
        print_once(line)
        print_once(f"Peak memory: {memory_line}")
        classes = None  # local_utilities.class_accuracies of the test set
        if not diverged_at:
            texts = [f"{ACCURACY_NAMES[key]} acc.: {value:.2%}" for key, value in accuracy.items()]
            print_once(" | ".join(texts))
            classes = accuracies.get("test_classes")
        if classes and classes["imbalanced"]:  # plain accuracy rewards answering the large class
            print_once(imbalance_line(classes))
        changed = None
        if self.initial_weights is not None:
            changed = changed_shares(self.model, self.initial_weights)
            shares = ", ".join(f"{name} {share:.1%}" for name, share in changed.items())
            print_once(f"Weights changed by training: {shares}")
        record = dict(
            script=Path(sys.argv[0]).name,
            precision=self.precision_in_effect,
            precision_requested=self.precision,
            device=self.device.type,
            device_name=device_name(self.device),
            world_size=world_size(),
            **self.settings,
            steps=len(timer.step_times),
            train_images=len(timer.step_times) * timer.images_per_step,
            train_time_s=train_time,
            first_step_s=first_step,
            **steady,
            flops_per_image=flops,
            peak_memory_gb=peak_gb,
            memory_measure=memory_line,
            weight_dtype=dtype_name(self.weight_dtype),
            matmul_output_dtype=dtype_name(self.matmul_dtype),
            **accuracy,
            **class_record(classes),
            diverged=diverged_at is not None,
            diverged_at=diverged_at,
            changed_share=changed,
            **ceilings_record(self.ceilings, peaks),
            versions=versions(),
        )
        if results and rank() == 0:
            append_record(results, record)
            print_once(f"Results appended to {results}")
        return record


def imbalance_line(classes: dict) -> str:
    """The report's line for a test set whose classes are imbalanced: the balanced accuracy (the
    mean of the per-class accuracies) and each class's, in class-index order."""
    counts = [count for count in classes["class_counts"] if count > 0]
    per_class = []
    for accuracy in classes["per_class_acc"]:
        if accuracy is not None:
            per_class.append(f"{accuracy:.1%}")
    return (
        f"Test classes imbalanced ({max(counts)} images in the largest, {min(counts)} in the "
        f"smallest): balanced test acc.: {classes['balanced_acc']:.2%} | per class: "
        f"{', '.join(per_class)}"
    )


def class_record(classes: dict | None) -> dict:
    """The record's per-class fields: the balanced test accuracy, each class's test accuracy and
    image count, and whether they are imbalanced; all None without a test accuracy."""
    if classes is None:
        return dict(
            balanced_test_acc=None, per_class_test_acc=None, test_class_counts=None, imbalanced=None
        )
    return dict(
        balanced_test_acc=classes["balanced_acc"],
        per_class_test_acc=classes["per_class_acc"],
        test_class_counts=classes["class_counts"],
        imbalanced=classes["imbalanced"],
    )


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """'bfloat16' for torch.bfloat16; None for None."""
    if dtype is None:
        return None
    return str(dtype).removeprefix("torch.")


def flops_per_image(model_name: str, num_classes: int) -> int:
    """FLOPs of one training image, forward and backward, counted on a copy on the meta device."""
    with torch.device("meta"):
        model = get_model(model_name, num_classes=num_classes)
        images = torch.randn(1, 3, model.image_size, model.image_size)

        def forward():
            return model(images)

        def loss(logits):
            return logits.sum()

        return measure_flops(model, forward, loss)


def steady_state(timer: StepTimer, flops: int, peak: float | None) -> dict:
    """Images/s, s/step, data-wait share and MFU after warm-up, from Lightning's Throughput.

    `flops` is per image, `peak` the device's FLOP/s. All None when no step finished after
    warm-up (a run that diverged at once).
    """
    numbers = dict(
        images_per_s=None, seconds_per_step=None, data_wait_share=None, mfu=None, flops_per_s=None
    )
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
    numbers["flops_per_s"] = metrics["device/flops_per_sec"]  # one device's
    numbers["seconds_per_step"] = timer.steady_time / timer.steady_steps
    numbers["data_wait_share"] = timer.steady_data_wait / timer.steady_time
    return numbers


def changed_shares(model: torch.nn.Module, initial_weights: dict) -> dict[str, float]:
    """The share of weight elements that training changed: overall, and of the 3 largest tensors.

    `initial_weights` maps the model's parameter names to CPU copies taken before training.
    """
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
