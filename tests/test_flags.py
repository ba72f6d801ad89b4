"""flags.py: every flag value or combination that cannot work is refused in one sentence."""

import math
import os
import warnings

import pytest
from conftest import dataloaders

import flags
from flags import parse_args


def refusal(argv, capsys):
    """The last line parse_args prints before exiting with status 2 (its usage line is above)."""
    with pytest.raises(SystemExit, match="2"):
        parse_args(argv)
    return capsys.readouterr().err.splitlines()[-1]


def test_max_steps_means_one_epoch_and_refuses_epochs(capsys):
    assert parse_args(["--max-steps", "7"]).epochs == 1
    for argv in (["--max-steps", "7", "--epochs", "3"], ["--max-steps", "7", "--epochs=3"]):
        with pytest.raises(SystemExit, match="2"):
            parse_args(argv)
        assert "--max-steps trains one epoch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning-rate", "inf"], "--learning-rate: must be a positive finite number, got inf"),
        (["--learning-rate", "nan"], "--learning-rate: must be a positive finite number, got nan"),
        (["--learning-rate", "0"], "--learning-rate: must be a positive finite number, got 0.0"),
        (
            ["--quick", "--model", "vit_b_16"],
            "--quick trains its own small model (vit_tiny_32); drop --model",
        ),
        (["--accelerator", "cuda"], "--accelerator cuda was asked for, but this machine has none"),
        (
            ["--epoch", "2"],
            "unrecognized arguments: --epoch 2",
        ),  # no abbreviations: --epoch is not --epochs
    ],
)
def test_flag_values_and_combinations_that_cannot_work_are_refused(capsys, flags, message):
    with pytest.raises(SystemExit, match="2"):
        parse_args(flags)
    assert message in capsys.readouterr().err
    assert math.isfinite(parse_args(["--learning-rate", "1e-3"]).learning_rate)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning-rate", "inf"], "--learning-rate: must be a positive finite number, got inf"),
        (["--learning-rate", "nan"], "--learning-rate: must be a positive finite number, got nan"),
        (
            ["--max-steps", "2", "--epochs=2"],
            "--max-steps trains one epoch of at most that many steps; drop --epochs",
        ),
        (
            ["--quick", "--model", "vit_b_16"],
            "--quick trains its own small model (vit_tiny_32); drop --model, or drop --quick",
        ),
    ],
)
def test_flags_that_cannot_work_together_are_refused_in_one_sentence(capsys, flags, message):
    with pytest.raises(SystemExit, match="2"):
        parse_args(flags)
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "--batch-size: must be a positive whole number, got 0"),
        (["--epochs", "-1"], "--epochs: must be a positive whole number, got -1"),
        (["--data-dir", "no/such/folder"], "--data-dir no/such/folder is not a folder"),
        (["--quick", "--synthetic"], "--quick and --synthetic pick different data"),
        (["--quick", "--devices", "2", "--strategy", "fsdp"], "--strategy fsdp needs CUDA GPUs"),
    ],
)
def test_bad_flags_get_one_clear_sentence(capsys, flags, message):
    with pytest.raises(SystemExit, match="2"):
        parse_args(flags)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "where, message",
    [
        ("", "--results {path} is a folder; name a file in it"),
        (
            "somefile.txt/results.jsonl",
            "--results {path} cannot be written: {tmp_path}/somefile.txt is not a writable folder",
        ),  # a file where a folder would have to be: no run can ever write it
    ],
)
def test_a_results_path_that_can_never_be_written_is_refused_before_training(
    tmp_path, capsys, where, message
):
    (tmp_path / "somefile.txt").write_text("a file\n")
    path = tmp_path / where
    assert refusal(["--quick", "--results", str(path)], capsys).endswith(
        "error: " + message.format(path=path, tmp_path=tmp_path)
    )


def test_a_results_file_without_write_permission_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    results = tmp_path / "results.jsonl"
    results.write_text("")
    monkeypatch.setattr(
        flags.os, "access", lambda path, mode: False
    )  # what a user who is not root meets
    assert refusal(["--quick", "--results", str(results)], capsys).endswith(
        f"error: --results {results} cannot be written: {results} is not a writable file"
    )


def test_a_one_cpu_affinity_mask_gets_one_loader_worker_and_no_pytorch_warning(
    image_tree, monkeypatch, tmp_path
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # `taskset -c 0 python ...`
    monkeypatch.setattr(flags, "CGROUP", tmp_path / "no cgroup")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # `python -W error`: PyTorch's warning would be a traceback
        loaders = dataloaders(["--quick", "--data-dir", str(image_tree), "--batch-size", "4"])
        next(iter(loaders[0]))  # starting the worker checks the count again
    assert [loader.num_workers for loader in loaders[:3]] == [1, 1, 1]


@pytest.mark.parametrize(
    "files, devices, workers",
    [
        ({}, 1, 8),  # no cgroup: 16 CPUs, at most 8 workers
        ({"cpu.max": "max 100000\n"}, 2, 7),  # v2 without a quota: 16 CPUs / 2 processes - 1
        ({"cpu.max": "150000 100000\n"}, 1, 1),  # `docker --cpus 1.5`: 2 CPUs, 1 for training
        ({"cpu.max": "400000 100000\n"}, 2, 1),  # 4 CPUs shared by 2 processes
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4, 3),
    ],
)
def test_default_loader_workers_follow_the_cpus_a_container_allows(
    tmp_path, monkeypatch, files, devices, workers
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    for name, text in files.items():
        (tmp_path / "cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cgroup" / name).write_text(text)
    monkeypatch.setattr(flags, "CGROUP", tmp_path / "cgroup")
    assert (
        parse_args(["--data-dir", str(tmp_path), "--devices", str(devices)]).num_workers == workers
    )
