"""bf16-true loses Adam's small updates and Kahan summation recovers them, on the tiny sizes of
experiments/bf16_lost_updates.py."""

import runpy
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "experiments" / "bf16_lost_updates.py"
LR = 5e-5  # the scripts' default learning rate: 2**9 * LR = 0.0256, below most pretrained weights


@pytest.fixture(scope="module")
def experiment():
    """The experiment's functions and constants, without running its __main__."""
    return runpy.run_path(str(SCRIPT))


@pytest.fixture(scope="module")
def changed_shares(experiment):
    """The share of backbone weights changed by finetuning at LR, per setting, on the tiny sizes."""
    size = experiment["SIZES"]["tiny"]
    pretrained, _ = experiment["pretrain"](size, seed=123)
    return {
        setting: experiment["run_cell"](setting, LR, pretrained, size, size["epochs"], seed=123)[1]
        for setting in ("float32", "bf16-true", "bf16-true + Kahan")
    }


def test_bf16true_changes_far_fewer_weights_than_float32(changed_shares):
    assert changed_shares["float32"] > 0.99  # in float32 any nonzero update changes a weight
    assert changed_shares["bf16-true"] < changed_shares["float32"] - 0.5


def test_kahan_summation_changes_about_as_many_weights_as_float32(changed_shares):
    assert changed_shares["bf16-true + Kahan"] >= changed_shares["float32"] - 0.1


def test_tiny_run_prints_the_lost_update_threshold_and_a_table_row_per_learning_rate(
    monkeypatch, capsys
):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--tiny", "--lrs", str(LR)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "lr 5e-05: updates are lost for |w| >= 0.0256" in out
    assert "| lr | float32 | bf16-mixed | bf16-true | bf16-true + Kahan |" in out
    assert len([line for line in out.splitlines() if line.startswith("| 5e-05 | ")]) == 1
