"""What a run measures: the device and versions, the dtypes in effect, step times, memory, MFU."""

import os
import platform
import re
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import get_available_flops

from processes import fail, print_once, world_size

CPUINFO_PATH = Path("/proc/cpuinfo")  # Linux; other systems name no CPU flags
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux, if writable)
# Dense (no 2:4 sparsity) peak FLOP/s of H100 SXM and H200 SXM, from NVIDIA's datasheets.
# Lightning 2.6's get_available_flops misses the H200 and lists the sparse figures.
DENSE_PEAK_FLOPS = {
    torch.bfloat16: 989e12,
    torch.float16: 989e12,
    "tfloat32": 494e12,
    torch.float32: 67e12,
}
# CPU flags of 16-bit matrix instructions (x86 AMX and AVX-512, Arm), from /proc/cpuinfo
HALF_UNITS = {
    "bfloat16": ("amx_bf16", "avx512_bf16", "bf16"),
    "float16": ("amx_fp16", "avx512_fp16", "fphp"),
}
SHORT_DTYPE_NAMES = {torch.float32: "32", torch.float16: "16", torch.bfloat16: "bf16"}


def versions() -> dict[str, str]:
    """The versions that decide the numbers: Python, torch, torchvision, lightning."""
    packages = {name: version(name) for name in ("torch", "torchvision", "lightning")}
    return {"python": platform.python_version(), **packages}


def cpu_field(name: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("model name", "flags"), or "" if absent."""
    if not CPUINFO_PATH.exists():
        return ""
    match = re.search(rf"^{name}\s*: (.*)$", CPUINFO_PATH.read_text(), re.MULTILINE)
    if match is None:
        return ""
    return match[1]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpu_field("model name") or platform.processor() or platform.machine()
    if device.type == "cpu":
        return f"{cpu} ({torch.get_num_threads()} threads)"
    return f"{device.type}: {cpu}"


def print_setup(args, precision: str, device: torch.device) -> None:
    """Print the versions and the device; stop if a GPU lacks bfloat16; say if a CPU emulates it.

    Errors: exits with status 1 for bfloat16 on a GPU without native support (before Ampere).
    """
    bf16 = "bf16" in precision
    if (
        device.type == "cuda"
        and bf16
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        fail(
            f"{precision} needs native bfloat16, which {device_name(device)} lacks (Ampere and "
            "newer GPUs have it); run 02_fabric_16mixed.py (16-mixed) on this GPU instead",
            status=1,
        )
    for name, value in versions().items():
        print_once(f"{name:<11}: {value}")
    print_once(
        f"Device: {device_name(device)} x {world_size()} process(es) | Model: {args.model} | "
        f"Precision asked for: {precision} | float32 matmul precision: {args.matmul_precision}"
    )
    half = "bfloat16"  # 16-mixed runs as bf16-mixed on a CPU
    if precision == "16-true":
        half = "float16"
    flags = set(cpu_field("flags").split() or cpu_field("Features").split())  # x86, Arm
    missing_units = flags and not flags & set(HALF_UNITS[half])
    if device.type == "cpu" and precision != "32-true" and missing_units:
        print_once(
            f"Note: this CPU has no {half} matrix units ({' '.join(HALF_UNITS[half])}), so "
            f"{precision} is emulated and slower than 32-true here, up to tens of times; "
            "compare precisions on a GPU or a CPU with them"
        )


def watch_dtypes(model: torch.nn.Module, precision: str, device: torch.device) -> dict:
    """A dict of the precision asked for and the device, which the first forward pass fills with
    the dtypes in effect, and prints.

    Keys it adds: "weight" (the head's weight dtype), "matmul" (its output dtype) and "in_effect",
    the precision named from them: float32 weights with 16-bit matmul outputs are "mixed".
    """
    dtypes = {"requested": precision, "device": device}
    seen = {"weight": None, "matmul": None}  # fixed keys: torch.compile guards the dict's size

    def record(head, inputs, output):  # compiled, this runs in the graph: it notes and stays there
        seen.update(weight=head.weight.dtype, matmul=output.dtype)
        if not torch.compiler.is_compiling() and "in_effect" not in dtypes:
            head_hook.remove()
            announce(model, inputs, output)

    def announce(module, inputs, output):  # also the model's hook, which runs outside compiled code
        model_hook.remove()
        weight, matmul = seen["weight"], seen["matmul"]
        in_effect = f"{SHORT_DTYPE_NAMES[weight]}-true"
        if weight == torch.float32 and matmul != torch.float32:
            in_effect = f"{SHORT_DTYPE_NAMES[matmul]}-mixed"
        dtypes.update(weight=weight, matmul=matmul, in_effect=in_effect)
        why = ""
        if precision == "16-mixed" and device.type == "cpu":
            why = " (Lightning has no float16 autocast on CPU and runs bfloat16 autocast instead)"
        elif in_effect != precision:
            why = " (differs from the request)"
        print_once(
            f"Precision in effect: {in_effect}{why} | weights {str(weight)[6:]}, "
            f"matmul outputs {str(matmul)[6:]}"
        )

    head_hook = model.heads.head.register_forward_hook(record)
    model_hook = model.register_forward_hook(announce)
    return dtypes


def synchronize(device: torch.device) -> None:
    """Wait until the accelerator has finished its queued work (a CPU's is done on return)."""
    if device.type in ("cuda", "mps"):
        getattr(torch, device.type).synchronize()


def speed(images_per_s: float, seconds_per_step: float) -> str:
    """Images/s with three significant digits or more; s/step beside it for steps of 1 s or more."""
    text = f"{images_per_s:#.3g} img/s"
    if images_per_s >= 10:
        text = f"{images_per_s:.1f} img/s"
    if seconds_per_step >= 1:
        text += f" ({seconds_per_step:.2f} s/step)"
    return text


def clock(seconds: float) -> str:
    """MM:SS, or H:MM:SS from an hour on; rounded to whole seconds first, so 59.6 s is 01:00."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class StepTimer:
    """The time of every training step, and the part of it spent waiting for the data loader.

    From args: the epochs, the warm-up steps and the batch size per device. The steps after the
    warm-up make the steady state (all of them when a run has no more steps than the warm-up).
    Times are in seconds, taken after the accelerator has finished the step's work.
    """

    def __init__(self, args, steps_per_epoch: int, device: torch.device):
        self.steps_per_epoch = steps_per_epoch
        self.epochs = args.epochs
        self.total_steps = steps_per_epoch * args.epochs
        self.warmup_steps = args.warmup_steps
        self.images_per_step = args.batch_size * world_size()  # over all processes
        self.step_times: list[float] = []
        self.data_waits: list[float] = []
        self.device = device
        self.last_end = 0.0  # perf_counter() seconds
        self.batch_arrived = 0.0
        self.last_progress = 0.0

    def start_epoch(self) -> None:
        """Start the clock at the top of an epoch, so that validation counts in no step."""
        self.last_end = time.perf_counter()

    def batch_ready(self) -> None:
        """The batch is here: the time since the last step ended went into waiting for it."""
        self.batch_arrived = time.perf_counter()

    def step_done(self) -> None:
        """Wait for the accelerator's queued work (a sync point), then record the step's time."""
        synchronize(self.device)
        now = time.perf_counter()
        self.add(step_time=now - self.last_end, data_wait=self.batch_arrived - self.last_end)
        self.last_end = now

    def add(self, step_time: float, data_wait: float) -> None:
        """Record one step: its time and the part of it spent waiting for data, in seconds."""
        self.step_times.append(step_time)
        self.data_waits.append(data_wait)

    @property
    def steady(self) -> slice:
        """The steps of the steady state, as a slice of step_times."""
        if self.total_steps <= self.warmup_steps:
            return slice(0, None)
        return slice(self.warmup_steps, None)

    @property
    def steady_steps(self) -> int:
        return len(self.step_times[self.steady])

    @property
    def steady_time(self) -> float:
        return sum(self.step_times[self.steady])

    @property
    def steady_data_wait(self) -> float:
        return sum(self.data_waits[self.steady])

    def seconds_since_progress(self) -> float:
        return time.perf_counter() - self.last_progress

    def progress(self) -> str:
        """'<speed> | MM:SS left', from the steady state so far, or the last step in warm-up."""
        self.last_progress = time.perf_counter()
        step_time = self.step_times[-1]
        if self.steady_steps:
            step_time = self.steady_time / self.steady_steps
        left = (self.total_steps - len(self.step_times)) * step_time
        return f"{speed(self.images_per_step / step_time, step_time)} | {clock(left)} left"

    def position(self) -> str:
        """'epoch E, step S': where training is, for a message."""
        done = len(self.step_times)
        epoch = min(done // self.steps_per_epoch + 1, self.epochs)
        return f"epoch {epoch}, step {done + 1}"


def reset_peak_memory(device: torch.device) -> int | None:
    """Start the peak-memory measurement; return the RSS in bytes a CPU's peak is measured from.

    None on a GPU (its allocator counts from the reset) and where the peak RSS cannot be reset.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return None
    if not os.access(CLEAR_REFS, os.W_OK):  # absent or read-only in some containers, and on macOS
        return None
    CLEAR_REFS.write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    return process_memory_bytes("VmRSS")


def process_memory_bytes(field_name: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, in bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    return 1024 * int(re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)[1])


def peak_memory(device: torch.device, baseline: int | None) -> tuple[float, str]:
    """(the peak in GB that the record keeps, a sentence saying what was measured).

    With several processes, each measures its own peak and the largest is reported.
    """
    if device.type == "cuda":
        numbers = [torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)]
        description = "{:.2f} GB allocated (max_memory_allocated), {:.2f} GB reserved"
    elif baseline is not None:
        peak = process_memory_bytes("VmHWM")
        numbers = [peak - baseline, peak]
        description = (
            "{:.2f} GB peak RSS growth over the RSS before the model was built "
            "(absolute peak RSS {:.2f} GB)"
        )
    else:  # ru_maxrss: the whole process's peak, in KiB on Linux and in bytes on macOS
        unit = 1024
        if sys.platform == "darwin":
            unit = 1
        numbers = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit]
        description = (
            "{:.2f} GB absolute peak RSS of the process (this system cannot reset the peak)"
        )
    gigabytes = [number / 1e9 for number in numbers]
    if world_size() > 1:
        tensor = torch.tensor(gigabytes, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        gigabytes = tensor.tolist()
        description += f", per process: the most of any of the {world_size()} processes"
    return gigabytes[0], description.format(*gigabytes)


def peak_flops(device: torch.device, dtype: torch.dtype | None, matmul_precision: str):
    """The chip's dense peak FLOP/s for matmuls in `dtype`; None where unknown (CPUs, some GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    sxm = ("h200" in name and "nvl" not in name) or ("h100" in name and "hbm3" in name)
    if not sxm:
        return get_available_flops(device, dtype)
    if dtype == torch.float32 and matmul_precision != "highest":
        return DENSE_PEAK_FLOPS["tfloat32"]
    return DENSE_PEAK_FLOPS[dtype]
