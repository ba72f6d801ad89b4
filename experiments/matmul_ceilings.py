"""This CPU's matmul speed by size and dtype, and the ceilings the start-of-run probe measures.

Run: python experiments/matmul_ceilings.py      (prints Markdown; about 10 s on a 2-core CPU)
     OMP_NUM_THREADS=1 python experiments/matmul_ceilings.py   (one thread: steadier on a busy CPU)
The speeds by size are the probe's own timing (matmul_ceiling.seconds_per_matmul: F.linear, the
fastest batch of repetitions) at every size up to 1024; the probe itself stops where its time box
ends. The threads are torch's default, as in a run.
"""

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from matmul_ceiling import (  # noqa: E402
    flops_text,
    measure_ceilings,
    seconds_per_matmul,
    slow_half_note,
)

CPU = torch.device("cpu")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SIZES = (128, 256, 512, 1024)
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def cpu_description() -> str:
    """The first CPU's model name and its matrix-related flags, from /proc/cpuinfo (Linux)."""
    with open("/proc/cpuinfo") as cpuinfo:
        text = cpuinfo.read()
    name = text.split("model name", 1)[1].split(":", 1)[1].splitlines()[0].strip()
    flags = set(text.split("flags", 1)[1].split(":", 1)[1].splitlines()[0].split())
    present = [flag for flag in MATRIX_FLAGS if flag in flags]
    return f"{name}, flags of note: {' '.join(present)}"


def gigaflops(size: int, seconds: float) -> str:
    """2 n^3 FLOPs in `seconds`, in GFLOP/s."""
    return f"{2 * size**3 / seconds / 1e9:.3g}"


def main() -> None:
    print(
        f"{cpu_description()}; {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, float32 matmul precision "
        f"{torch.get_float32_matmul_precision()}; load average at start "
        f"{os.getloadavg()[0]:.1f} (processes waiting for the CPUs, the other jobs included).\n"
    )
    print("F.linear of two n x n matrices (2 n^3 FLOPs), GFLOP/s:\n")
    print("| n | " + " | ".join(str(dtype).removeprefix("torch.") for dtype in DTYPES) + " |")
    print("|---:|" + "---:|" * len(DTYPES))
    for size in SIZES:
        cells = []
        for dtype in DTYPES:
            inputs = torch.randn(size, size, dtype=dtype)
            weight = torch.randn(size, size, dtype=dtype)
            cells.append(gigaflops(size, seconds_per_matmul(inputs, weight, CPU)))
        print(f"| {size} | " + " | ".join(cells) + " |")

    print()
    print("The probe as a run calls it, once per precision (measure_ceilings):\n")
    print("| precision | float32 ceiling | 16-bit ceiling | probe time | note |")
    print("|---|---|---|---:|---|")
    for precision in ("32-true", "bf16-true", "16-true"):
        start = time.perf_counter()
        ceilings = measure_ceilings(CPU, precision)
        seconds = time.perf_counter() - start
        texts = []
        for ceiling in ceilings.values():
            texts.append(f"{flops_text(ceiling.flops_per_s)} at n={ceiling.size}")
        if len(texts) == 1:
            texts.append("–")
        note = slow_half_note(ceilings, precision, CPU) or "none"
        print(f"| {precision} | {texts[0]} | {texts[1]} | {seconds:.2f} s | {note} |")


if __name__ == "__main__":
    main()
