"""run_record.py: the report's steady state and MFU, and the JSON-lines record it appends."""

import pytest
import torch
import torchvision

import run_record
from flags import parse_args
from local_utilities import DataInfo
from measurement import StepTimer
from model_weights import register_tiny_vit
from run_record import append_record, report


def test_results_are_appended_one_json_line_per_run(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"script": "a"})
    append_record(path, {"script": "b"})
    assert path.read_text() == '{"script": "a"}\n{"script": "b"}\n'


def test_report_measures_the_steady_state_with_lightnings_throughput_and_the_chips_peak(
    monkeypatch, capsys
):
    monkeypatch.setattr(run_record, "peak_flops", lambda device, dtype, matmul_precision: 1e10)
    args = parse_args(["--quick", "--batch-size", "4"])
    timer = StepTimer(args, steps_per_epoch=5, device=torch.device("cpu"))  # 3 epochs
    for step_time in [1.0] * 5 + [0.5] * 10:
        timer.add(step_time, data_wait=0.05)
    register_tiny_vit()
    model = torchvision.models.get_model(args.model, num_classes=10)
    record = report(
        args=args,
        data=DataInfo(10, "generated"),
        timer=timer,
        train_time=9.0,
        memory_baseline=None,
        dtypes={"requested": "32-true", "device": torch.device("cpu"), "matmul": torch.float32},
        accuracies=dict(train_acc=1, val_acc=1, test_acc=1),
        diverged_at=None,
        model=model,
    )
    assert record["images_per_s"] == pytest.approx(8.0)
    assert record["seconds_per_step"] == pytest.approx(0.5) and record["first_step_s"] == 1.0
    assert record["data_wait_share"] == pytest.approx(0.1) and record["flops_per_image"] > 1e6
    assert record["mfu"] == pytest.approx(8.0 * record["flops_per_image"] / 1e10)
    assert (
        "Steady state: 8.00 img/s over 10 steps, 10.0% of their time waiting for data | MFU: "
        in capsys.readouterr().out
    )
