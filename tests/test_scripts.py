"""The numbered scripts run end to end as a user runs them (--quick): accuracy, records, output."""

import os
import re
import signal
import sys

import pytest
import torch
from conftest import (
    ROOT,
    SCRIPTS,
    dataloaders,
    refusal_in_process,
    run_in_process,
    schema_problems,
)

import step_timer

KAHAN_ADAM = "04b_fabric_bf16true_kahan.py"  # branches off 04
TRAINING_SCRIPTS = [
    "00_pytorch_baseline.py",
    "01_fabric_baseline.py",
    "02_fabric_16mixed.py",
    "04_fabric_bf16true.py",
    KAHAN_ADAM,
    "05_fabric_bf16mixed.py",
]


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_quick_run_reaches_90_percent_accuracy(quick_runs, script):
    returncode, _, stderr, records = quick_runs[script]
    assert returncode == 0, stderr
    assert records[-1]["val_acc"] >= 0.9 and records[-1]["test_acc"] >= 0.9


def test_16true_quick_run_is_reported_as_diverged(quick_runs):
    returncode, stdout, stderr, records = quick_runs["03_fabric_16true.py"]
    assert returncode == 3  # DIVERGED_EXIT_CODE: a runner can tell divergence from a crash
    assert records[-1]["diverged"] is True and records[-1]["test_acc"] is None
    assert re.search(r"error: training diverged: .*step \d+", stderr)
    assert "Batch 0070/0070" not in stdout  # stopped at once: no further steps


@pytest.mark.parametrize("script", [script.name for script in SCRIPTS])
def test_results_record_is_well_formed(quick_runs, script):
    record = quick_runs[script][3][-1]
    assert schema_problems(record) == []
    assert record["script"] == script and record["model"] == "vit_tiny_32" and record["epochs"] == 1
    assert set(record["versions"]) == {"python", "torch", "torchvision", "lightning"}
    assert record["train_time_s"] > 0 and record["peak_memory_gb"] > 0
    assert (
        record["diverged"] or record["images_per_s"] > 0
    )  # a run that diverged in warm-up has no steady state
    for key in ("train_acc", "val_acc", "test_acc"):
        assert record[key] is None if record["diverged"] else 0 <= record[key] <= 1


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_run_prints_versions_device_progress_time_memory_and_accuracy(quick_runs, script):
    stdout = quick_runs[script][1]
    for pattern in [
        r"torch\s*: \d",
        r"lightning\s*: \d",
        r"Device: .+ \| Model: vit_tiny_32",
        r"Matmul ceilings \(measured now, F\.linear\): fp32 [\d.]+ [GT]FLOP/s \(n=\d+\)",
        r"Precision in effect: \S+",
        r"Epoch: 001/001 \| Batch 0001/0070 \| Loss: \d+\.\d{4} \| [\d.]+ img/s"
        r"( \([\d.]+ s/step\))? \| "
        r"\d\d:\d\d left",
        r"Epoch: 001/001 \| Batch 0070/0070 \| .* \| 00:00 left",
        r"Epoch: 001/001 \| Train acc\.: [\d.]+% \| Val acc\.: [\d.]+%",
        r"Training time: [\d.]+ min \([\d.]+ s\), including the per-epoch validation \| "
        r"First step: [\d.]+ s \| Steady state: "
        r"[\d.]+ img/s.* over 65 steps, [\d.]+% of their time waiting for data \| MFU: "
        r"[\d.]+% of the measured (fp32|bf16) matmul ceiling( at matmul precision \w+)? "
        r"\([\d.]+ [GT]FLOP/s\)",
        r"Peak memory: [\d.]+ GB peak RSS growth .*absolute peak RSS",
        r"Train acc\.: [\d.]+% \| Val acc\.: [\d.]+% \| Test acc\.: [\d.]+%",
    ]:
        assert re.search(pattern, stdout), pattern


@pytest.mark.parametrize(
    "script, precision, weights, matmuls",
    [
        ("01_fabric_baseline.py", "32-true", "float32", "float32"),
        (
            "02_fabric_16mixed.py",
            "bf16-mixed",
            "float32",
            "bfloat16",
        ),  # Lightning's fallback on CPU
        ("03_fabric_16true.py", "16-true", "float16", "float16"),
        ("04_fabric_bf16true.py", "bf16-true", "bfloat16", "bfloat16"),
        (KAHAN_ADAM, "bf16-true", "bfloat16", "bfloat16"),
        ("05_fabric_bf16mixed.py", "bf16-mixed", "float32", "bfloat16"),
    ],
)
def test_dtypes_in_effect(quick_runs, script, precision, weights, matmuls):
    record = quick_runs[script][3][-1]
    assert (record["precision"], record["weight_dtype"], record["matmul_output_dtype"]) == (
        precision,
        weights,
        matmuls,
    )


def test_16mixed_on_cpu_says_it_runs_as_bf16mixed_and_why(quick_runs):
    stdout = quick_runs["02_fabric_16mixed.py"][1]
    assert "Precision in effect: bf16-mixed (Lightning has no float16 autocast on CPU" in stdout


def test_pytorch_and_fabric_baselines_train_identically(quick_runs):
    def losses_and_accuracies(script):
        return re.findall(r"Loss: [\d.]+|Train acc\.: .*", quick_runs[script][1])

    assert losses_and_accuracies("00_pytorch_baseline.py") == losses_and_accuracies(
        "01_fabric_baseline.py"
    )


def epoch_batches(flags, epoch):
    """The images of every training batch of one epoch, as a script's loaders give them."""
    train_loader = dataloaders(flags)[0]
    train_loader.sampler.set_epoch(epoch)  # what Fabric does at the start of each epoch
    return [features for features, _ in train_loader]


def test_data_order_depends_on_the_seed_and_epoch_not_the_worker_count(image_tree):
    flags = ["--quick", "--data-dir", str(image_tree), "--batch-size", "4"]
    in_process = epoch_batches([*flags, "--num-workers", "0"], epoch=1)
    in_workers = epoch_batches([*flags, "--num-workers", "2"], epoch=1)
    assert len(in_process) == len(in_workers) > 1
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))
    other_epoch = epoch_batches([*flags, "--num-workers", "0"], epoch=2)
    other_seed = epoch_batches([*flags, "--num-workers", "0", "--seed", "7"], epoch=1)
    assert not torch.equal(in_process[0], other_epoch[0])
    assert not torch.equal(in_process[0], other_seed[0])


def first_loss(monkeypatch, capsys, seed):
    """The loss of the first step of a one-step quick run of 01 with this seed, run in-process."""
    argv = ["01_fabric_baseline.py", "--quick", "--max-steps", "1", "--seed", str(seed)]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_in_process("01_fabric_baseline.py") == 0
    return re.search(r"Batch 0001/0001 \| Loss: ([\d.]+)", capsys.readouterr().out)[1]


def test_another_seed_gives_another_run_and_the_record_keeps_it(quick_runs, monkeypatch, capsys):
    """The same seed gives the same run: 00 and 01 train identically (the test above)."""
    assert first_loss(monkeypatch, capsys, 7) != first_loss(monkeypatch, capsys, 8)
    assert quick_runs["01_fabric_baseline.py"][3][-1]["seed"] == 123


def test_a_bad_flag_stops_the_script_before_training_with_one_sentence(capsys):
    returncode, stderr = refusal_in_process("01_fabric_baseline.py", "--batch-size", "0")
    assert returncode == 2 and capsys.readouterr().out == ""
    assert stderr.splitlines()[-1].endswith(
        "error: --batch-size: must be a positive whole number, got 0"
    )


def test_pytorch_baseline_refuses_several_devices():
    returncode, stderr = refusal_in_process("00_pytorch_baseline.py", "--quick", "--devices", "2")
    assert returncode == 1 and stderr.splitlines() == [
        "error: 00_pytorch_baseline.py runs on one device; use 01-05 for several"
    ]


def test_ci_runs_the_readme_test_command():
    readme_command = re.search(
        r"^(python -m pytest .*)$", (ROOT / "README.md").read_text(), re.MULTILINE
    ).group(1)
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[
        -1
    ] == "python3 " + readme_command.removeprefix("python ")


def test_runner_knows_the_scripts_exit_codes(capsys):
    import benchmark
    import nan_check

    # kept apart, so that the runner needs no torch
    assert benchmark.DIVERGED_EXIT_CODE == nan_check.DIVERGED_EXIT_CODE
    returncode, _ = refusal_in_process("04_fabric_bf16true.py", "--data-dir", "/no/such/folder")
    assert returncode == benchmark.SHARED_PROBLEM_EXIT_CODE


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_training_prints_one_line_exits_130_and_writes_no_record(
    tmp_path, monkeypatch, capsys, stop
):
    """SIGTERM (`kill`, `docker stop`, a scheduler's time limit) is handled as Ctrl-C."""
    step_done = step_timer.StepTimer.step_done

    def signalled_after_3_steps(timer):
        step_done(timer)
        if len(timer.step_times) == 3:
            os.kill(os.getpid(), stop)  # Python runs the handler at the next bytecode

    monkeypatch.setattr(step_timer.StepTimer, "step_done", signalled_after_3_steps)
    results = tmp_path / "results.jsonl"
    argv = ["01_fabric_baseline.py", "--quick", "--results", str(results)]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_in_process("01_fabric_baseline.py") == 130
    assert capsys.readouterr().err == "interrupted at epoch 1, step 4; no record written\n"
    assert not results.exists()


@pytest.mark.parametrize(
    "script, accelerator", [("00_pytorch_baseline.py", "cuda"), ("02_fabric_16mixed.py", "mps")]
)
def test_a_missing_accelerator_is_refused_in_one_sentence_by_every_kind_of_script(
    tmp_path, script, accelerator
):
    if {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}[accelerator]:
        pytest.skip(f"this machine has {accelerator}")
    returncode, stderr = refusal_in_process(script, "--quick", "--accelerator", accelerator)
    assert returncode == 2 and stderr.splitlines()[-1] == (
        f"{script}: error: --accelerator {accelerator} was asked for, but this machine has none; "
        "use --accelerator cpu or auto"
    )
