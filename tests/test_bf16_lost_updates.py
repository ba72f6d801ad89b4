"""bf16-true loses Adam's small updates and Kahan summation recovers them: one run of
experiments/bf16_lost_updates.py on its tiny sizes, at the scripts' default learning rate."""

import contextlib
import io
import re
import runpy
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "experiments" / "bf16_lost_updates.py"
LR = 5e-5  # the scripts' default learning rate: 2**9 * LR = 0.0256, below most pretrained weights


@pytest.fixture(scope="module")
def printed():
    """What `python experiments/bf16_lost_updates.py --tiny --lrs 5e-5` prints."""
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.setattr(sys, "argv", [str(SCRIPT), "--tiny", "--lrs", str(LR)])
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return output.getvalue()


@pytest.fixture(scope="module")
def changed_shares(printed):
    """The share of backbone weights that finetuning changed, per setting, from the table."""
    header = re.search(r"^\| lr \| (.*) \|$", printed, re.MULTILINE)[1].split(" | ")
    row = re.search(r"^\| 5e-05 \| (.*) \|$", printed, re.MULTILINE)[1].split(" | ")
    shares = [int(re.fullmatch(r"[\d.]+% / (\d+)%", cell)[1]) / 100 for cell in row]
    return dict(zip(header, shares, strict=True))


def test_bf16true_changes_far_fewer_weights_than_float32(changed_shares):
    assert changed_shares["float32"] >= 0.99  # in float32 any nonzero update changes a weight
    assert changed_shares["bf16-true"] < changed_shares["float32"] - 0.5


def test_kahan_summation_changes_about_as_many_weights_as_float32(changed_shares):
    assert changed_shares["bf16-true + Kahan"] >= changed_shares["float32"] - 0.1


def test_tiny_run_prints_the_lost_update_threshold_and_a_table_row_per_learning_rate(printed):
    assert "lr 5e-05: updates are lost for |w| >= 0.0256" in printed
    assert "| lr | float32 | bf16-mixed | bf16-true | bf16-true + Kahan |" in printed
    assert len([line for line in printed.splitlines() if line.startswith("| 5e-05 | ")]) == 1
