"""The evidence of docs/why_16true_diverges.md: float16's underflow threshold against torch's Adam
on every float16 number, and 03b's first step on a few digits, in float16 and in float32."""

import runpy

import torch
from conftest import ROOT
from torch.utils.data import TensorDataset

EXPERIMENT = runpy.run_path(str(ROOT / "experiments" / "why_16true_diverges.py"))


def test_square_underflow_gradient_is_where_torch_adams_float16_second_moment_stays_zero():
    gradients = torch.arange(1, 0x7C00, dtype=torch.int16).view(torch.float16)  # every one > 0
    weights = torch.zeros_like(gradients, requires_grad=True)
    weights.grad = gradients.clone()
    optimizer = torch.optim.Adam([weights], lr=1e-3, eps=1e-4)
    optimizer.step()
    zero = optimizer.state[weights]["exp_avg_sq"] == 0
    assert zero.equal(gradients <= EXPERIMENT["square_underflow_gradient"]())


def test_03b_first_step_is_lr_times_gradient_over_eps_where_the_second_moment_underflowed():
    train_set, test_set = EXPERIMENT["digits_32x32"]()
    few = TensorDataset(*(tensor[:64] for tensor in train_set.tensors))  # two steps
    float16, _, _ = EXPERIMENT["train_digits"]("float16, eps=1e-4 (03b)", 1, 1, few, test_set)
    float32, _, _ = EXPERIMENT["train_digits"]("float32, eps=1e-4", 1, 1, few, test_set)
    assert float16["zero"] == float16["below bound"]  # exactly the gradients <= 0.00546
    assert float16["zero"] > 0.3
    assert float16["above lr"] > 0.3 and float16["max"] > 10
    assert float32["zero"] < 1e-3  # only the gradients that are exactly 0
    assert float32["above lr"] == 0 and float32["max"] <= 1
