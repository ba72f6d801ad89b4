"""measurement.py: the dtypes in effect, and the report's steady state, MFU and record."""

import pytest
import torch
from conftest import SLOW_BF16_CEILINGS, FixedLogits, measured

import measurement as measurement_module
from matmul_ceiling import Ceiling

FAST_BF16_CEILINGS = {  # a CPU with bfloat16 units: twice the float32 speed
    torch.float32: Ceiling(flops_per_s=1e10, size=1024),
    torch.bfloat16: Ceiling(flops_per_s=2e10, size=1024),
}


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
    monkeypatch, capsys, weights, autocast, in_effect
):
    monkeypatch.setattr(measurement_module, "reset_peak_memory", lambda device: None)  # no GPU here
    model = FixedLogits().to(weights)
    measurement = measured(in_effect, torch.device("cuda"))  # the device only names it
    measurement.watch(model, track_updates=False)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        model.heads.head(torch.ones(3, 1, dtype=weights))
    assert measurement.precision_in_effect == in_effect and measurement.weight_dtype == weights
    assert (
        f"Precision in effect: {in_effect} | weights {str(weights)[6:]}" in capsys.readouterr().out
    )


def test_report_measures_the_steady_state_with_lightnings_throughput_and_the_measured_ceiling(
    capsys,
):
    measurement = measured("32-true", torch.device("cpu"), batch_size=4)  # 3 epochs of 5 steps
    measurement.watch(FixedLogits(), track_updates=False)
    measurement.model.heads.head(torch.ones(2, 1))  # the first forward pass: float32 matmuls
    for step_time in [1.0] * 5 + [0.5] * 10:
        measurement.timer.add(step_time, data_wait=0.05)
    record = measurement.report(9.0, dict(train_acc=1, val_acc=1, test_acc=1), None, None)
    assert record["images_per_s"] == pytest.approx(8.0)
    assert record["seconds_per_step"] == pytest.approx(0.5) and record["first_step_s"] == 1.0
    assert record["data_wait_share"] == pytest.approx(0.1) and record["flops_per_image"] > 1e6
    # SLOW_BF16_CEILINGS: float32 matmuls reached 1e10 FLOP/s at start
    assert record["mfu"] == pytest.approx(8.0 * record["flops_per_image"] / 1e10)
    assert record["flops_per_s"] == pytest.approx(8.0 * record["flops_per_image"])
    assert record["matmul_ceilings"]["float32"] == {"flops_per_s": 1e10, "size": 1024}
    assert record["mfu_peak"]["label"].startswith("of the measured fp32 matmul ceiling")
    label = record["mfu_peak"]["label"]  # names the matmul precision some other test set
    out = capsys.readouterr().out
    assert "Steady state: 8.00 img/s over 10 steps, 10.0% of their time waiting for data" in out
    assert f"MFU: {record['mfu']:.1%} {label} (10 GFLOP/s)" in out


@pytest.mark.parametrize(
    "precision, ceilings, note",
    [
        ("bf16-true", SLOW_BF16_CEILINGS, "a bfloat16 matmul runs at 0.1x the float32 speed"),
        ("16-mixed", SLOW_BF16_CEILINGS, "a bfloat16 matmul runs at 0.1x"),  # bf16-mixed on CPU
        ("16-true", SLOW_BF16_CEILINGS, "a float16 matmul runs at 0.1x"),
        ("32-true", SLOW_BF16_CEILINGS, None),
        ("bf16-true", FAST_BF16_CEILINGS, None),  # bfloat16 units: no note
    ],
)
def test_a_cpu_whose_16bit_matmuls_are_slower_gets_the_measured_ratio_at_start(
    capsys, precision, ceilings, note
):
    measured(precision, torch.device("cpu"), ceilings=ceilings)
    out = capsys.readouterr().out
    assert "Matmul ceilings (measured now, F.linear): fp32 10 GFLOP/s (n=1024)" in out
    if note is None:
        assert "Note:" not in out
    else:
        assert f"Note: {note}" in out and "on this CPU" in out


def test_imbalanced_test_classes_get_their_balanced_accuracy_printed_and_recorded(capsys):
    measurement = measured("32-true", torch.device("cpu"))
    classes = {
        "class_counts": [100, 0, 10],
        "imbalanced": True,
        "per_class_acc": [1.0, None, 0.0],
        "balanced_acc": 0.5,
    }
    accuracies = dict(train_acc=1.0, val_acc=1.0, test_acc=100 / 110, test_classes=classes)
    record = measurement.report(1.0, accuracies, None, None)
    assert (
        "Test classes imbalanced (100 images in the largest, 10 in the smallest): balanced test "
        "acc.: 50.00% | per class: 100.0%, 0.0%" in capsys.readouterr().out
    )
    assert (record["balanced_test_acc"], record["imbalanced"]) == (0.5, True)
    assert record["per_class_test_acc"] == [1.0, None, 0.0]
    classes["imbalanced"] = False
    measurement.report(1.0, accuracies, None, None)
    assert "imbalanced" not in capsys.readouterr().out


def test_a_measured_ceiling_below_what_training_reached_records_no_mfu(capsys):
    busy = {torch.float32: Ceiling(flops_per_s=1e5, size=128)}  # far below any real CPU
    measurement = measured("32-true", torch.device("cpu"), batch_size=4, ceilings=busy)
    measurement.watch(FixedLogits(), track_updates=False)
    measurement.model.heads.head(torch.ones(2, 1))
    for step_time in [1.0] * 5 + [0.5] * 10:
        measurement.timer.add(step_time, data_wait=0.05)
    record = measurement.report(9.0, dict(train_acc=1, val_acc=1, test_acc=1), None, None)
    assert record["mfu"] is None and record["flops_per_s"] > 1e5
    assert "MFU: above 100% of the measured fp32 matmul ceiling" in capsys.readouterr().out
