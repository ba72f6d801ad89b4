"""hardware.py: the bfloat16 check, the CPU's 16-bit units, datasheet MFU peaks, peak memory."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import hardware
from hardware import PrecisionUnavailable, datasheet_peak_flops, print_setup


def test_bf16_on_a_gpu_without_native_bf16_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(PrecisionUnavailable) as refused:
        print_setup("bf16-true", torch.device("cuda"), "vit_tiny_32")
    assert str(refused.value).startswith("bf16-true needs native bfloat16, which Tesla T4 lacks")
    assert capsys.readouterr() == ("", "")  # refused before printing anything


@pytest.mark.parametrize(
    "flags, precision, noted",
    [
        ("fpu sse2 avx avx2 fma", "bf16-true", True),  # AVX2 only: bfloat16 is emulated
        ("fpu sse2 avx avx2 fma", "16-mixed", True),  # runs as bf16-mixed on a CPU
        ("fpu sse2 avx avx2 fma", "16-true", True),
        ("fpu sse2 avx avx2 fma", "32-true", False),
        ("avx2 avx512f avx512_bf16", "bf16-true", False),  # AMD Zen 4, Intel Cooper Lake and newer
        ("avx2 amx_tile amx_bf16", "bf16-mixed", False),  # Intel Sapphire Rapids
        ("avx2 amx_tile amx_bf16", "16-true", True),  # no float16 matrix units on it
        ("fp asimd fphp asimdhp bf16", "bf16-true", False),  # Arm with the BF16 extension
    ],
)
def test_cpu_without_16bit_matrix_units_gets_a_note_at_start(
    monkeypatch, capsys, tmp_path, flags, precision, noted
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(hardware, "CPUINFO_PATH", cpuinfo)
    print_setup(precision, torch.device("cpu"), "vit_tiny_32")
    out = capsys.readouterr().out
    assert (
        "Note: this CPU has no" in out
        and f"so {precision} is emulated and slower than 32-true here" in out
    ) == noted


@pytest.mark.parametrize(
    "name, dtype, matmul_precision, flops",
    [
        # Lightning 2.6 finds no peak for this name
        ("NVIDIA H200", torch.bfloat16, "medium", 989e12),
        ("NVIDIA H200", torch.float16, "medium", 989e12),
        ("NVIDIA H200", torch.float32, "medium", 494e12),  # TF32
        ("NVIDIA H200", torch.float32, "highest", 67e12),
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, "high", 989e12),  # the H100 SXM
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, "medium", 312e12),  # from Lightning's table
    ],
)
def test_mfu_peak_is_the_dense_datasheet_figure(monkeypatch, name, dtype, matmul_precision, flops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert datasheet_peak_flops(torch.device("cuda"), dtype, matmul_precision) == flops


def test_no_mfu_peak_on_a_cpu():
    assert datasheet_peak_flops(torch.device("cpu"), torch.bfloat16, "medium") is None


PEAK_WITHOUT_CLEAR_REFS = """
import sys
from pathlib import Path
import torch
import hardware
hardware.CLEAR_REFS = Path("/no/such/clear_refs")  # a system that cannot reset the peak RSS
cpu = torch.device("cpu")
baseline = hardware.reset_peak_memory(cpu)
block = torch.ones(100_000_000)  # 400 MB, every page written
del block
peak = hardware.peak_memory(cpu, baseline)[0]
print(baseline, peak, hardware.process_memory_bytes("VmHWM") / 1e9)
"""


def test_peak_memory_without_clear_refs_is_the_true_peak_in_gb():
    output = subprocess.run(
        [sys.executable, "-c", PEAK_WITHOUT_CLEAR_REFS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    baseline, reported, true_peak = output[0], float(output[1]), float(output[2])
    assert (
        baseline == "None" and true_peak > 0.4
    )  # the fallback: no baseline; the peak includes the 400 MB block
    assert abs(reported - true_peak) <= 0.2 * true_peak
