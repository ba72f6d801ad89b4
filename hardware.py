"""The machine a run is on: versions, the device and its 16-bit units, its datasheet peak FLOP/s
and its peak memory."""

import os
import platform
import re
import resource
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import get_available_flops

from processes import print_once, world_size

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


class PrecisionUnavailable(Exception):
    """This device lacks the precision a script asks for, though another script may run here;
    the message is the one sentence a user reads (the scripts exit with status 1)."""


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


def print_setup(precision: str, device: torch.device, model_name: str) -> None:
    """Print the versions and the device; say if a CPU emulates the 16-bit precision asked for.

    Errors: PrecisionUnavailable for bfloat16 on a GPU without native support (before Ampere).
    """
    bf16 = "bf16" in precision
    if (
        device.type == "cuda"
        and bf16
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise PrecisionUnavailable(
            f"{precision} needs native bfloat16, which {device_name(device)} lacks (Ampere and "
            "newer GPUs have it); run 02_fabric_16mixed.py (16-mixed) on this GPU instead"
        )
    for name, value in versions().items():
        print_once(f"{name:<11}: {value}")
    print_once(
        f"Device: {device_name(device)} x {world_size()} process(es) | Model: {model_name} | "
        f"Precision asked for: {precision} | "
        f"float32 matmul precision: {torch.get_float32_matmul_precision()}"
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


def datasheet_peak_flops(
    device: torch.device, dtype: torch.dtype | None, matmul_precision: str
) -> float | None:
    """The chip's dense peak FLOP/s for matmuls in `dtype`, from its datasheet (NVIDIA's, or
    Lightning's table); None where unknown (CPUs, some GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    sxm = ("h200" in name and "nvl" not in name) or ("h100" in name and "hbm3" in name)
    if not sxm:
        return get_available_flops(device, dtype)
    if dtype == torch.float32 and matmul_precision != "highest":
        return DENSE_PEAK_FLOPS["tfloat32"]
    return DENSE_PEAK_FLOPS[dtype]


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

    `baseline` is reset_peak_memory's. With several processes, each measures its own peak and
    the largest is reported.
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
