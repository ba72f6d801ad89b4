"""matmul_ceiling.py: the probe's ladder and time box, the note on CPUs, and what MFU is held to."""

import json

import pytest
import torch

import matmul_ceiling
from matmul_ceiling import (
    Ceiling,
    Peak,
    ceilings_record,
    ceilings_text,
    matmul_dtype,
    measure_ceilings,
    measured_matmul_flops,
    mfu_peaks,
    mfu_text,
    slow_half_note,
)

CPU = torch.device("cpu")
# an AVX2-only CPU: bfloat16 and float16 matmuls emulated, far below float32
SLOW_HALVES = {
    torch.float32: Ceiling(flops_per_s=135e9, size=512),
    torch.bfloat16: Ceiling(flops_per_s=4.7e9, size=512),
    torch.float16: Ceiling(flops_per_s=2.7e10, size=256),
}
# a CPU with bfloat16 units (AVX512-BF16 or AMX): bfloat16 twice as fast as float32
FAST_BFLOAT16 = {
    torch.float32: Ceiling(flops_per_s=100e9, size=1024),
    torch.bfloat16: Ceiling(flops_per_s=200e9, size=1024),
}


def fake_matmul_seconds(flops_per_s_at, sizes_tried):
    """A stand-in for seconds_per_matmul: 2 n^3 FLOPs at the speed flops_per_s_at(n) gives; it
    appends each size n to sizes_tried."""

    def seconds(inputs, weight, device):
        size = inputs.shape[0]
        sizes_tried.append(size)
        return 2 * size**3 / flops_per_s_at(size)

    return seconds


def test_ceiling_is_the_fastest_size_of_the_ladder(monkeypatch):
    speeds = {128: 50e9, 256: 90e9, 512: 135e9, 1024: 108e9}  # this CPU's float32 shape

    def speed_at(size):
        return speeds[size]

    sizes_tried = []
    monkeypatch.setattr(matmul_ceiling, "LARGEST_SIZE", 1024)
    monkeypatch.setattr(
        matmul_ceiling, "seconds_per_matmul", fake_matmul_seconds(speed_at, sizes_tried)
    )
    ceiling = measured_matmul_flops(CPU, torch.float32)
    assert sizes_tried == [128, 256, 512, 1024]
    assert ceiling.size == 512
    assert ceiling.flops_per_s == pytest.approx(135e9)


@pytest.mark.parametrize("time_box_s, sizes", [(0.25, [128, 256]), (0.6, [128, 256, 512])])
def test_time_box_stops_the_ladder_before_a_size_predicted_to_overrun_it(
    monkeypatch, time_box_s, sizes
):
    def one_gigaflop(size):  # 4.2 ms at n=128, 34 ms at 256, then 268 ms predicted at 512
        return 1e9

    sizes_tried = []
    monkeypatch.setattr(
        matmul_ceiling, "seconds_per_matmul", fake_matmul_seconds(one_gigaflop, sizes_tried)
    )
    measured_matmul_flops(CPU, torch.bfloat16, time_box_s=time_box_s)
    assert sizes_tried == sizes


def test_a_fast_device_climbs_to_the_largest_size(monkeypatch):
    def one_petaflop(size):
        return 1e15

    sizes_tried = []
    monkeypatch.setattr(matmul_ceiling, "LARGEST_SIZE", 512)
    monkeypatch.setattr(
        matmul_ceiling, "seconds_per_matmul", fake_matmul_seconds(one_petaflop, sizes_tried)
    )
    measured_matmul_flops(CPU, torch.float32)
    assert sizes_tried == [128, 256, 512]


def test_probe_measures_a_real_matmul_and_leaves_the_seed_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ceiling = measured_matmul_flops(CPU, torch.float32, time_box_s=0.02)
    assert torch.equal(torch.rand(3), expected)
    assert ceiling.size == matmul_ceiling.FIRST_SIZE
    assert ceiling.flops_per_s > 0


@pytest.mark.parametrize(
    "precision, device, dtype",
    [
        ("32-true", "cpu", torch.float32),
        ("bf16-true", "cpu", torch.bfloat16),
        ("bf16-mixed", "cuda", torch.bfloat16),
        ("16-mixed", "cpu", torch.bfloat16),  # Lightning runs bf16-mixed on a CPU
        ("16-mixed", "cuda", torch.float16),
        ("16-true", "cpu", torch.float16),
    ],
)
def test_matmul_dtype_of_each_precision(precision, device, dtype):
    assert matmul_dtype(precision, torch.device(device)) == dtype


@pytest.mark.parametrize(
    "precision, dtypes",
    [
        ("32-true", [torch.float32]),
        ("bf16-mixed", [torch.float32, torch.bfloat16]),
        ("16-true", [torch.float32, torch.float16]),
    ],
)
def test_ceilings_of_float32_and_the_precisions_16_bit_dtype(monkeypatch, precision, dtypes):
    def fake_probe(device, dtype):
        return SLOW_HALVES[dtype]

    monkeypatch.setattr(matmul_ceiling, "measured_matmul_flops", fake_probe)
    assert list(measure_ceilings(CPU, precision)) == dtypes


def test_start_line_names_each_ceiling_and_its_size():
    assert ceilings_text(FAST_BFLOAT16) == "fp32 100 GFLOP/s (n=1024), bf16 200 GFLOP/s (n=1024)"


def test_note_states_the_measured_ratio_on_a_cpu_without_bfloat16_units():
    assert slow_half_note(SLOW_HALVES, "bf16-true", CPU) == (
        "Note: a bfloat16 matmul runs at 0.035x the float32 speed on this CPU (4.7 GFLOP/s against "
        "135 GFLOP/s, measured at start); compare the precisions' speed on a GPU or on a CPU with "
        "bfloat16 matrix units"
    )


def test_note_on_16_mixed_names_bfloat16_and_on_16_true_float16():
    assert "a bfloat16 matmul runs at 0.035x" in slow_half_note(SLOW_HALVES, "16-mixed", CPU)
    assert "a float16 matmul runs at 0.2x" in slow_half_note(SLOW_HALVES, "16-true", CPU)


@pytest.mark.parametrize(
    "ceilings, precision, device",
    [
        (FAST_BFLOAT16, "bf16-true", "cpu"),  # bfloat16 units: not slower, no note
        (SLOW_HALVES, "32-true", "cpu"),  # no 16-bit matmuls in the run
        (SLOW_HALVES, "bf16-true", "cuda"),  # the note is about CPUs
    ],
)
def test_no_note_where_the_runs_matmuls_are_not_slowed(ceilings, precision, device):
    assert slow_half_note(ceilings, precision, torch.device(device)) is None


def test_cpu_mfu_is_held_against_the_measured_ceiling_of_the_dtype_in_effect():
    peaks = mfu_peaks(None, torch.bfloat16, "highest", SLOW_HALVES)
    assert peaks == [Peak(4.7e9, "of the measured bf16 matmul ceiling")]
    assert mfu_text(1e9, peaks, CPU) == "21.3% of the measured bf16 matmul ceiling (4.7 GFLOP/s)"


def test_listed_gpu_keeps_the_datasheet_peak_first_and_adds_the_measured_one():
    ceilings = {torch.bfloat16: Ceiling(flops_per_s=750e12, size=8192)}
    peaks = mfu_peaks(989e12, torch.bfloat16, "high", ceilings)
    assert peaks == [
        Peak(989e12, "of the datasheet bf16 peak"),
        Peak(750e12, "of the measured bf16 matmul ceiling"),
    ]
    assert mfu_text(300e12, peaks, torch.device("cuda")) == (
        "30.3% of the datasheet bf16 peak (989 TFLOP/s), "
        "40.0% of the measured bf16 matmul ceiling (750 TFLOP/s)"
    )


def test_float32_label_names_a_matmul_precision_below_highest():
    peaks = mfu_peaks(None, torch.float32, "high", SLOW_HALVES)
    assert peaks[0].label == "of the measured fp32 matmul ceiling at matmul precision high"


def test_no_peak_and_no_ceiling_says_so():
    assert mfu_peaks(None, None, "highest", SLOW_HALVES) == []
    assert mfu_text(1e9, [], CPU) == (
        "none (no datasheet peak FLOP/s and no measured matmul ceiling for this CPU)"
    )


def test_record_keeps_every_ceiling_and_the_mfu_basis_as_json():
    peaks = mfu_peaks(None, torch.bfloat16, "highest", SLOW_HALVES)
    record = json.loads(json.dumps(ceilings_record(SLOW_HALVES, peaks)))
    assert record["matmul_ceilings"]["float32"] == {"flops_per_s": 135e9, "size": 512}
    assert record["matmul_ceilings"]["bfloat16"] == {"flops_per_s": 4.7e9, "size": 512}
    assert record["mfu_peak"] == {
        "flops_per_s": 4.7e9,
        "label": "of the measured bf16 matmul ceiling",
    }


def test_a_ceiling_the_run_beats_was_measured_too_low_and_gets_no_percentage():
    peaks = [Peak(2.6e8, "of the measured fp32 matmul ceiling")]  # a busy CPU at start
    text = mfu_text(4e8, peaks, torch.device("cpu"))
    assert text == (
        "above 100% of the measured fp32 matmul ceiling (0.26 GFLOP/s), which was measured too "
        "low: the CPU was busier at start than in training; run on a quiet CPU, or with "
        "OMP_NUM_THREADS=1 on a shared one"
    )
