"""hardware.py: the bfloat16 check, the CPU's 16-bit units, datasheet MFU peaks, peak memory."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

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
    "name, dtype, matmul_precision, flops",
    [
        # Lightning 2.6 finds no peak for this name (its H200 keys are "h200 sxm1", "h200 nvl1")
        ("NVIDIA H200", torch.bfloat16, "medium", 989e12),
        ("NVIDIA H200", torch.float16, "medium", 989e12),
        ("NVIDIA H200", torch.float32, "medium", 494e12),  # TF32
        ("NVIDIA H200", torch.float32, "highest", 67e12),
        ("NVIDIA H200 NVL", torch.bfloat16, "medium", 835e12),
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, "high", 989.4e12),  # the H100 SXM: Lightning's
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
