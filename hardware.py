"""The machine a run is on: versions, the device, its datasheet peak FLOP/s and its peak memory."""

import os
import platform
import re
import resource
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import get_available_flops

from processes import print_once, world_size

CPUINFO_PATH = Path("/proc/cpuinfo")  # Linux; other systems name no CPU flags
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux, if writable)
# Dense (no 2:4 sparsity) peak FLOP/s of the H200 from NVIDIA's H200 datasheet, whose tensor-core
# figures are given with sparsity: halved here. Lightning 2.6's table (_CUDA_FLOPS in
# lightning/fabric/utilities/throughput.py) keys the H200 as "h200 sxm1" and "h200 nvl1" with the
# sparse figures, and a device named "NVIDIA H200" matches neither; its H100 entries are dense.
H200_DENSE_PEAK_FLOPS = {
    "sxm": {
        torch.bfloat16: 989e12,
        torch.float16: 989e12,
        "tfloat32": 494e12,
        torch.float32: 67e12,
    },
    "nvl": {
        torch.bfloat16: 835e12,
        torch.float16: 835e12,
        "tfloat32": 417e12,
        torch.float32: 60e12,
    },
}


class PrecisionUnavailable(Exception):
    """This device lacks the precision a script asks for, though another script may run here;
    the message is the one sentence a user reads (the scripts exit with status 1)."""


class MissingCompiler(PrecisionUnavailable):
    """What torch.compile's inductor builds kernels with is missing here, though the scripts that
    do not compile run: the scripts catch it as PrecisionUnavailable (status 1)."""


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
    """Print the versions and the device (its matmul ceilings come with the Measurement).

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


def datasheet_peak_flops(
    device: torch.device, dtype: torch.dtype | None, matmul_precision: str
) -> float | None:
    """The chip's dense peak FLOP/s for matmuls in `dtype` (float32 counts as TF32 below matmul
    precision "highest", on Ampere and newer), from Lightning's table or, for the H200, NVIDIA's
    datasheet; None where unknown (CPUs, GPUs missing from both)."""
    if device.type != "cuda" or dtype is None:
        return None
    name = torch.cuda.get_device_name(device).lower()
    if "h200" not in name:
        return get_available_flops(device, dtype)  # TF32 decided as above, by Lightning
    key = dtype
    if dtype == torch.float32 and matmul_precision != "highest":
        key = "tfloat32"
    form = "sxm"
    if "nvl" in name:
        form = "nvl"
    return H200_DENSE_PEAK_FLOPS[form].get(key)


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


def check_compiler(model: torch.nn.Module, device: torch.device) -> None:
    """Before the first step, when `model` (or a module in it) is compiled with inductor,
    torch.compile's default backend, check that what inductor builds kernels with is here: on a
    CPU, a C++ compiler (torch's own search, get_cpp_compiler in torch/_inductor/cpp_builder.py:
    torch._inductor.config.cpp.cxx, which is $CXX or g++); on a CUDA GPU, triton (torch's
    has_triton) and the C compiler triton builds its launcher with ($CC, else gcc or clang on
    the PATH: _find_compiler in triton/runtime/build.py).

    The backend is read from the arguments Lightning keeps on a compiled module
    (_compile_kwargs, lightning/fabric/wrappers.py), and is inductor without them.
    Errors: MissingCompiler, saying what is missing and what to do.
    """
    from torch._dynamo import OptimizedModule  # as Lightning imports it; only compiled runs

    compiled = [module for module in model.modules() if isinstance(module, OptimizedModule)]
    if not compiled:
        return
    if getattr(compiled[0], "_compile_kwargs", {}).get("backend", "inductor") != "inductor":
        return
    without = "or train without torch.compile (04_fabric_bf16true.py is 04c without it)"
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler as error:
            raise MissingCompiler(
                f"torch.compile builds C++ kernels for a CPU, and no C++ compiler works here "
                f"({error}); install one (apt install g++, or set CXX to one), {without}"
            ) from None
    if device.type != "cuda":
        return
    from torch.utils._triton import has_triton

    if not has_triton():
        raise MissingCompiler(
            "torch.compile builds GPU kernels with triton, which is not installed or does not "
            f"support this GPU; install it (pip install triton), {without}"
        )
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        raise MissingCompiler(
            "torch.compile builds GPU kernels with triton, which needs a C compiler, and none is "
            f"here (no $CC, no gcc or clang on the PATH); install one (apt install gcc), {without}"
        )
