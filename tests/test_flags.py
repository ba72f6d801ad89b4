"""flags.py: every flag value or combination that cannot work is refused in one sentence."""

import math
import os
import warnings
from types import SimpleNamespace

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


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_that_seed_everything_cannot_take_is_refused(capsys, seed):
    """Lightning 2.5+ raises on it, and 2.4 trained as seed 0 while the record kept the seed."""
    assert refusal(["--quick", "--seed", seed], capsys).endswith(
        f"error: --seed: must be a whole number from 0 to 4294967295, got {seed}"
    )
    assert parse_args(["--quick", "--seed", "4294967295"]).seed == 4294967295


def test_save_paths_that_can_never_be_written_are_refused_before_training(tmp_path, capsys):
    (tmp_path / "somefile.txt").write_text("a file\n")
    assert refusal(["--quick", "--save-every-epoch"], capsys).endswith(
        "error: --save-every-epoch saves to the file --save names; add --save FILE"
    )
    assert refusal(["--quick", "--save", str(tmp_path)], capsys).endswith(
        f"error: --save {tmp_path} is not a file (a folder or a device); name a file"
    )
    blocked = tmp_path / "somefile.txt" / "model.pt"
    assert refusal(["--quick", "--save", str(blocked)], capsys).endswith(
        f"error: --save {blocked} cannot be written: {tmp_path}/somefile.txt is not a writable "
        "folder"
    )
    assert parse_args(["--quick", "--save", str(tmp_path / "new" / "model.pt")]).save


def docker_default_shm(path):
    """os.statvfs of a /dev/shm as Docker makes it unless told more: 64 MiB, all free."""
    return SimpleNamespace(f_bavail=64 * 2**20 // 4096, f_frsize=4096)


def test_loader_workers_that_would_outgrow_a_small_dev_shm_are_refused_with_both_fixes(
    capsys, monkeypatch
):
    monkeypatch.setattr(flags.os, "statvfs", docker_default_shm)
    # a batch: 32 x (3 x 224 x 224 float32 + one int64 label) = 19,267,840 bytes = 18.4 MiB
    assert refusal(["--synthetic", "--num-workers", "2"], capsys).endswith(
        "error: --num-workers 2: the loader workers need about 110 MiB of shared memory "
        "(1 x (2 x 2 + 2) batches of 18.4 MiB), but /dev/shm has 64 MiB free; give the "
        "container more (docker run --shm-size=1g), or load the data in the training process "
        "with --num-workers 0"
    )
    assert parse_args(["--synthetic", "--num-workers", "0"]).num_workers == 0
    half = ["--synthetic", "--num-workers", "1", "--batch-size", "16"]
    assert parse_args(half).num_workers == 1  # (1 x 2 + 2) x 9.2 MiB: fits
    assert parse_args(["--quick", "--num-workers", "8"]).num_workers == 8  # 32x32 images
