"""flags.py: every flag value or combination that cannot work is refused in one sentence."""

import math

import pytest

from flags import parse_args


def test_max_steps_means_one_epoch_and_refuses_epochs(capsys):
    assert parse_args(["--max-steps", "7"]).epochs == 1
    for flags in (["--max-steps", "7", "--epochs", "3"], ["--max-steps", "7", "--epochs=3"]):
        with pytest.raises(SystemExit, match="2"):
            parse_args(flags)
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
