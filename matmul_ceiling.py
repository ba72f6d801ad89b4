"""The matmul ceilings of the device a run uses, measured at start, and what they are held against.

A ceiling is the most FLOP/s a linear layer's matmul reached in one dtype on this device, with the
threads the run uses. It gives CPUs, which have no datasheet peak, an MFU; it turns the note on
CPUs without 16-bit matrix units into a measured ratio; and it stands beside the datasheet's peak
on GPUs.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FIRST_SIZE = 128  # the ladder of square sizes starts here and doubles
LARGEST_SIZE = 8192  # three float32 tensors of 8192 x 8192 take 0.8 GB
SECONDS_PER_SIZE = 0.01  # timed repetitions of one size last at least this long
SECONDS_PER_DTYPE = 0.25  # the ladder's time box in each dtype, set-up and warm-ups included
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Ceiling:
    """The most FLOP/s a square matmul reached in one dtype, and the size n it reached them at."""

    flops_per_s: float
    size: int


@dataclass(frozen=True)
class Peak:
    """FLOP/s to hold a run against, and what they are ("of the measured bf16 matmul ceiling")."""

    flops_per_s: float
    label: str


def synchronize(device: torch.device) -> None:
    """Wait for the accelerator's queued work; a CPU's is done when the call returns."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def seconds_per_matmul(inputs: torch.Tensor, weight: torch.Tensor, device: torch.device) -> float:
    """Seconds of one F.linear(inputs, weight), at its fastest, after an untimed call that prepares
    its kernel.

    Repeats in batches that double, waiting for the device after each, until SECONDS_PER_SIZE have
    passed: many repetitions of a fast matmul, one of a slow one. The fastest batch counts, as
    timeit advises, since a busy machine only ever slows a batch down.
    """
    F.linear(inputs, weight)
    synchronize(device)
    fastest = math.inf
    batch = 1
    total = 0.0
    while total < SECONDS_PER_SIZE:
        start = time.perf_counter()
        for _ in range(batch):
            F.linear(inputs, weight)
        synchronize(device)  # the queue is empty: the time is the matmuls', not their launch
        elapsed = time.perf_counter() - start
        fastest = min(fastest, elapsed / batch)
        total += elapsed
        batch *= 2
    return fastest


def measured_matmul_flops(
    device: torch.device, dtype: torch.dtype, time_box_s: float = SECONDS_PER_DTYPE
) -> Ceiling:
    """The ceiling of a linear layer's matmul in `dtype` on `device`: the highest FLOP/s over
    square sizes n = 128, 256, ... (2 n^3 FLOPs each: n^2 outputs of n multiply-adds).

    The op is F.linear, which nn.Linear runs and which holds most of a ViT's FLOPs. The size is
    the chip's, not the model's: MFU is the share of what the chip can do, and a ceiling taken at
    the small model's width (64) would credit the waste of its narrow matmuls to the chip. The
    sizes climb while the next one, predicted at the last one's speed (twice the size, eight times
    the time), fits in `time_box_s` seconds, so a slow emulated dtype stops at a smaller size: its
    ceiling is then the best of the sizes it reached, a lower bound. It measures the machine as it
    is at the start: other jobs on the same cores lower it. The probe draws its inputs from its
    own generator, leaving the run's seed alone.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    warm = torch.randn(FIRST_SIZE, FIRST_SIZE, device=device, dtype=dtype, generator=generator)
    F.linear(warm, warm)  # one-off set-up (the CUDA BLAS handle, oneDNN), outside the time box
    synchronize(device)
    best = Ceiling(flops_per_s=0.0, size=0)
    predicted = 0.0  # seconds of one matmul at the next size
    size = FIRST_SIZE
    start = time.perf_counter()
    while size <= LARGEST_SIZE:
        cost = predicted + max(predicted, SECONDS_PER_SIZE)  # a warm-up, then the timed calls
        if time.perf_counter() - start + cost > time_box_s:
            break
        inputs = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        weight = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        seconds = seconds_per_matmul(inputs, weight, device)
        flops_per_s = 2 * size**3 / seconds
        if flops_per_s > best.flops_per_s:
            best = Ceiling(flops_per_s=flops_per_s, size=size)
        predicted = 8 * seconds
        size *= 2
    return best


def matmul_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a Fabric precision's matmuls run in. 16-mixed runs as bf16-mixed on a CPU
    (lightning/fabric/connector.py: no float16 autocast on CPU)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision == "16-mixed" and device.type == "cpu":
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def measure_ceilings(device: torch.device, precision: str) -> dict[torch.dtype, Ceiling]:
    """The ceilings of float32 and of the precision's 16-bit dtype (if any) on `device`.

    Once per run, before training: about 0.3 s on a 2-core AVX2 CPU (docs/cpus.md), at most about
    SECONDS_PER_DTYPE per dtype plus the one-off set-up. Float32 matmuls run at the precision set by
    torch.set_float32_matmul_precision, as the run's do (TF32 on a GPU under "high").
    """
    dtypes = [torch.float32]
    half = matmul_dtype(precision, device)
    if half != torch.float32:
        dtypes.append(half)
    ceilings = {dtype: measured_matmul_flops(device, dtype) for dtype in dtypes}
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the cached blocks would count in the run's reserved memory
    return ceilings


def flops_text(flops_per_s: float) -> str:
    """'135 GFLOP/s', '989 TFLOP/s': three significant digits at most."""
    if flops_per_s >= 1e12:
        return f"{flops_per_s / 1e12:.3g} TFLOP/s"
    return f"{flops_per_s / 1e9:.3g} GFLOP/s"


def ceilings_text(ceilings: dict[torch.dtype, Ceiling]) -> str:
    """'fp32 135 GFLOP/s (n=512), bf16 4.7 GFLOP/s (n=512)': the line a run prints at start."""
    parts = []
    for dtype, ceiling in ceilings.items():
        parts.append(f"{DTYPE_NAMES[dtype]} {flops_text(ceiling.flops_per_s)} (n={ceiling.size})")
    return ", ".join(parts)


def slow_half_note(
    ceilings: dict[torch.dtype, Ceiling], precision: str, device: torch.device
) -> str | None:
    """The line a CPU run prints when its 16-bit matmuls are slower than float32's, with the
    measured ratio; None on other devices, for 32-true, and where the 16-bit ceiling is as high."""
    half = matmul_dtype(precision, device)
    if device.type != "cpu" or half == torch.float32:
        return None
    ratio = ceilings[half].flops_per_s / ceilings[torch.float32].flops_per_s
    if ratio >= 1:
        return None
    name = str(half).removeprefix("torch.")
    measured = f"{flops_text(ceilings[half].flops_per_s)} against "
    measured += f"{flops_text(ceilings[torch.float32].flops_per_s)}, measured at start"
    return (
        f"Note: a {name} matmul runs at {ratio:.2g}x the float32 speed on this CPU ({measured}); "
        f"compare the precisions' speed on a GPU or on a CPU with {name} matrix units"
    )


def mfu_peaks(
    datasheet_peak: float | None,
    dtype: torch.dtype | None,
    matmul_precision: str,
    ceilings: dict[torch.dtype, Ceiling],
) -> list[Peak]:
    """What the run's FLOP/s are held against, the MFU of the record first.

    `datasheet_peak` is the chip's dense peak for `dtype` (measurement.peak_flops: Lightning's table
    or NVIDIA's datasheets), None on CPUs and unlisted GPUs; `dtype` is the matmul dtype in
    effect (None if no forward pass ran). The measured ceiling of `dtype` follows the datasheet's
    peak, or stands alone. A float32 label names the matmul precision unless it is "highest".
    """
    if dtype is None:
        return []
    name = DTYPE_NAMES[dtype]
    setting = ""
    if dtype == torch.float32 and matmul_precision != "highest":
        setting = f" at matmul precision {matmul_precision}"
    peaks = []
    if datasheet_peak is not None:
        peaks.append(Peak(datasheet_peak, f"of the datasheet {name} peak{setting}"))
    if dtype in ceilings:
        label = f"of the measured {name} matmul ceiling{setting}"
        peaks.append(Peak(ceilings[dtype].flops_per_s, label))
    return peaks


def mfu_text(flops_per_s: float, peaks: list[Peak], device: torch.device) -> str:
    """'4.2% of the measured bf16 matmul ceiling (4.7 GFLOP/s)', one part per peak; `flops_per_s` is
    the model FLOPs one device ran per second (forward and backward). A share above 100% can only
    come from a ceiling measured too low (a busy CPU at start), and says so instead."""
    if not peaks:
        kind = device.type.upper()
        return f"none (no datasheet peak FLOP/s and no measured matmul ceiling for this {kind})"
    parts = []
    for peak in peaks:
        share = flops_per_s / peak.flops_per_s
        if share > 1:  # only a ceiling measured while other work held the cores can be beaten
            parts.append(
                f"above 100% {peak.label} ({flops_text(peak.flops_per_s)}), which was measured "
                "too low: the CPU was busier at start than in training; run on a quiet CPU, or "
                "with OMP_NUM_THREADS=1 on a shared one"
            )
            continue
        parts.append(f"{share:.1%} {peak.label} ({flops_text(peak.flops_per_s)})")
    return ", ".join(parts)


def ceilings_record(ceilings: dict[torch.dtype, Ceiling], peaks: list[Peak]) -> dict:
    """The record's fields: every measured ceiling, and the peak its "mfu" is a share of."""
    measured = {}
    for dtype, ceiling in ceilings.items():
        name = str(dtype).removeprefix("torch.")
        measured[name] = {"flops_per_s": ceiling.flops_per_s, "size": ceiling.size}
    basis = {"flops_per_s": None, "label": None}
    if peaks:
        basis = {"flops_per_s": peaks[0].flops_per_s, "label": peaks[0].label}
    return {"matmul_ceilings": measured, "mfu_peak": basis}
