"""measurement.py: the dtypes in effect, the CPU's 16-bit units, speeds, the timer, MFU peaks."""

from types import SimpleNamespace

import pytest
import torch
from conftest import FixedLogits

import measurement
from flags import parse_args
from measurement import StepTimer, peak_flops, print_setup, speed, watch_dtypes


@pytest.mark.parametrize(
    "weights, autocast, in_effect",
    [
        (torch.float32, None, "32-true"),
        (torch.float32, torch.float16, "16-mixed"),
        (torch.float32, torch.bfloat16, "bf16-mixed"),
        (torch.bfloat16, None, "bf16-true"),
        (torch.float16, None, "16-true"),
    ],
)
def test_precision_in_effect_is_named_from_the_dtypes_of_the_first_forward_pass(
    capsys, weights, autocast, in_effect
):
    model = FixedLogits().to(weights)
    dtypes = watch_dtypes(model, in_effect, torch.device("cuda"))  # the device only names it
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        model.heads.head(torch.ones(3, 1, dtype=weights))
    assert dtypes["in_effect"] == in_effect and dtypes["weight"] == weights
    assert (
        f"Precision in effect: {in_effect} | weights {str(weights)[6:]}" in capsys.readouterr().out
    )


def test_bf16_on_a_gpu_without_native_bf16_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(SystemExit, match="1"):
        print_setup(parse_args(["--quick"]), "bf16-true", torch.device("cuda"))
    assert "bf16-true needs native bfloat16, which Tesla T4 lacks" in capsys.readouterr().err


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
    monkeypatch.setattr(measurement, "CPUINFO_PATH", cpuinfo)
    print_setup(parse_args(["--quick"]), precision, torch.device("cpu"))
    out = capsys.readouterr().out
    assert (
        "Note: this CPU has no" in out
        and f"so {precision} is emulated and slower than 32-true here" in out
    ) == noted


@pytest.mark.parametrize(
    "images_per_s, seconds_per_step, text",
    [
        (1391.46, 0.023, "1391.5 img/s"),
        (5.94, 1.35, "5.94 img/s (1.35 s/step)"),
        (0.0213, 375.6, "0.0213 img/s (375.60 s/step)"),  # never "0.0 img/s"
    ],
)
def test_speeds_keep_three_significant_digits_and_slow_steps_show_seconds(
    images_per_s, seconds_per_step, text
):
    assert speed(images_per_s, seconds_per_step) == text


def timer(total_steps, warmup_steps, batch_size):
    """A StepTimer of one epoch of total_steps steps on the CPU."""
    args = SimpleNamespace(epochs=1, warmup_steps=warmup_steps, batch_size=batch_size)
    return StepTimer(args, steps_per_epoch=total_steps, device=torch.device("cpu"))


def test_time_left_leaves_the_slow_warmup_out_and_carries_seconds_into_minutes():
    steps = timer(total_steps=12, warmup_steps=2, batch_size=32)
    steps.add(40.0, data_wait=0.0)  # warm-up: first-call kernels and allocations
    # still warming up: 11 steps at the last one's 40 s
    assert steps.progress() == "0.800 img/s (40.00 s/step) | 07:20 left"
    steps.add(20.0, data_wait=0.0)
    steps.add(5.98, data_wait=0.5)
    # 9 steps at the steady 5.98 s: 53.8 s
    assert steps.progress() == "5.35 img/s (5.98 s/step) | 00:54 left"
    steps.add(6.02, data_wait=0.5)
    assert steps.progress().endswith("| 00:48 left")
    assert steps.steady_steps == 2 and steps.steady_data_wait == 1.0
    steps = timer(total_steps=2, warmup_steps=0, batch_size=1)
    steps.add(59.6, 0.0)
    assert steps.progress().endswith("| 01:00 left")  # never "00:60"


def test_a_run_no_longer_than_its_warmup_is_all_steady_state():
    steps = timer(total_steps=3, warmup_steps=5, batch_size=1)
    for step_time in (3.0, 1.0, 2.0):
        steps.add(step_time, data_wait=0.0)
    assert (steps.steady_steps, steps.steady_time) == (3, 6.0)


def test_position_names_the_epoch_and_the_step_under_way():
    args = SimpleNamespace(epochs=3, warmup_steps=0, batch_size=1)
    steps = StepTimer(args, steps_per_epoch=4, device=torch.device("cpu"))
    assert steps.position() == "epoch 1, step 1"
    for _ in range(5):
        steps.add(1.0, 0.0)
    assert steps.position() == "epoch 2, step 6"


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
    assert peak_flops(torch.device("cuda"), dtype, matmul_precision) == flops


def test_no_mfu_peak_on_a_cpu():
    assert peak_flops(torch.device("cpu"), torch.bfloat16, "medium") is None
