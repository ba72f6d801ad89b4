"""bf16-true loses Adam's small updates and Kahan summation recovers them: one run of
experiments/bf16_lost_updates.py on its tiny sizes, at the scripts' default learning rate. Its
thresholds against brute force (every bfloat16 number), and bfloat16's frozen second moment."""

import contextlib
import io
import re
import runpy
import sys

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "experiments" / "bf16_lost_updates.py"
LR = 5e-5  # the scripts' default learning rate: lost from |w| >= 2**-6, below most trained weights
EXPERIMENT = runpy.run_path(str(SCRIPT))  # its functions, without running it


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
    assert "lr 5e-05: updates are lost for |w| >= 0.015625" in printed
    assert "| lr | float32 | bf16-mixed | bf16-true | bf16-true + Kahan |" in printed
    assert len([line for line in printed.splitlines() if line.startswith("| 5e-05 | ")]) == 1


def every_number(dtype, low, high):
    """Every number of a 16-bit dtype in [low, high), low and high positive and representable."""
    start = torch.tensor(low, dtype=dtype).view(torch.int16).item()
    stop = torch.tensor(high, dtype=dtype).view(torch.int16).item()
    return torch.arange(start, stop, dtype=torch.int16).view(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lr", [5e-5, 1e-4, 2e-4, 1e-3, 3e-3])
def test_frozen_from_is_where_adding_lr_stops_changing_a_weight(dtype, lr):
    threshold = EXPERIMENT["frozen_from"](lr, dtype)
    weights = every_number(dtype, threshold / 64, threshold * 64)
    assert (weights + lr == weights).equal(weights >= threshold)  # away from zero
    assert (weights - lr == weights).equal(weights > threshold)  # toward zero: T itself moves


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_lr_of_exactly_half_the_spacing_is_lost_for_the_weights_with_an_even_last_bit(dtype):
    lr = 2.0**-13  # a power of two: a tie below the threshold, rounded to even
    threshold = EXPERIMENT["frozen_from"](lr, dtype)
    weights = every_number(dtype, threshold / 64, threshold * 64)
    lost = weights + lr == weights
    even = weights.view(torch.int16) % 2 == 0
    middle = (weights >= threshold / 2) & (weights < threshold)
    assert lost[weights >= threshold].all()
    assert not lost[weights < threshold / 2].any()
    assert lost[middle].equal(even[middle])


def test_below_decaying_beta2_every_bfloat16_second_moment_decays_and_above_it_not_all():
    squares = every_number(torch.bfloat16, 2.0**-60, 2.0**20)
    beta2 = EXPERIMENT["decaying_beta2"]()
    assert (squares * (beta2 - 1e-6) < squares).all()
    assert not (squares * (beta2 + 1e-6) < squares).all()
    assert (squares * 0.999 == squares).all()  # torch's default decays none


def test_torch_adams_second_moment_never_decreases_in_bfloat16_and_does_in_float32():
    squares = {}
    for dtype in (torch.bfloat16, torch.float32):
        weights = torch.zeros(3000, dtype=dtype, requires_grad=True)
        optimizer = torch.optim.Adam([weights], lr=1e-3)
        weights.grad = torch.logspace(-6, 2, 3000).to(dtype)  # one step of gradients 1e-6 to 100
        optimizer.step()
        first = optimizer.state[weights]["exp_avg_sq"].clone()
        for _ in range(10):  # then ten steps of zero gradients: the average should decay
            weights.grad = torch.zeros_like(weights)
            optimizer.step()
        squares[dtype] = (first, optimizer.state[weights]["exp_avg_sq"])
    first, last = squares[torch.bfloat16]
    assert last.equal(first)
    first, last = squares[torch.float32]
    assert (last < first).all()


def test_digits_mlp_bfloat16_state_never_decays_and_stochastic_rounding_keeps_4_bytes():
    run_digits = EXPERIMENT["run_digits"]
    float32 = run_digits("float32 (01)", lr=1e-4, seed=1, epochs=2)
    bf16 = run_digits("bf16-true (04)", lr=1e-4, seed=1, epochs=2)
    rounded = run_digits("bf16-true + stochastic rounding", lr=1e-4, seed=1, epochs=2)
    kahan = run_digits("bf16-true + Kahan (04b)", lr=1e-4, seed=1, epochs=2)
    assert float32[1] > 0 and bf16[1] == 0  # the share of exp_avg_sq that decreased
    assert (float32[2], bf16[2], rounded[2], kahan[2]) == (8, 4, 4, 6)  # state bytes per weight
    assert rounded[0] > bf16[0] + 0.1  # stochastic rounding trains where round-to-nearest stalls
