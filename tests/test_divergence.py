"""Why 16-true diverges: the report names where NaN/inf first appeared; the one-line fix trains."""

import re
import sys

import pytest
import torch
from conftest import run_in_process

import measurement
import nan_check
from nan_check import divergence_advice, first_nonfinite


def test_16true_report_names_the_optimizer_step_and_first_parameter(quick_runs):
    stderr = quick_runs["03_fabric_16true.py"][2]
    assert re.search(
        r"the weights turned non-finite in optimizer step 1 although its gradients were finite "
        r"\(first parameter [\w.]+, \d+ of 44 parameter tensors\), so the loss of step 2 is NaN",
        stderr,
    )


def test_adam_eps_fix_trains_16true(quick_runs):
    returncode, stdout, stderr, records = quick_runs["03b_fabric_16true_adam_eps.py"]
    assert returncode == 0, stderr
    assert records[-1]["weight_dtype"] == "float16" and not records[-1]["diverged"]
    assert records[-1]["val_acc"] >= 0.9 and records[-1]["test_acc"] >= 0.9


def test_adam_eps_of_1e_8_is_zero_in_float16_and_makes_the_first_step_non_finite():
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0
    weights = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    weights.grad = torch.tensor(
        [0.0, 1e-3, 1.0], dtype=torch.float16
    )  # 1e-3 squared underflows in float16
    torch.optim.Adam([weights], lr=1e-3).step()
    assert torch.isfinite(weights).tolist() == [False, False, True]


class Blowup(torch.nn.Module):
    def forward(self, features):
        return features * float("inf")


def test_report_names_the_first_module_whose_output_is_non_finite():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Blowup(), torch.nn.Linear(4, 2))
    where = first_nonfinite(model, torch.ones(2, 4), step=7)
    assert where == "the forward pass of step 7 produced the first non-finite output in module 1"


def test_report_blames_gradients_that_were_non_finite_before_the_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    model[1].bias.grad[0] = float("nan")
    model[1].bias.data[0] = float("nan")
    where = first_nonfinite(model, torch.ones(2, 4), step=3)
    assert where.startswith(
        "the gradients of step 2 were non-finite first (first parameter 1.bias, 1 of 4 parameter "
        "tensors)"
    )


def test_report_blames_the_loss_when_the_forward_pass_is_finite():
    model = torch.nn.Linear(4, 2)
    assert first_nonfinite(model, torch.ones(2, 4), step=1) == (
        "the loss of step 1 was non-finite although the forward pass was finite"
    )


REPORT = measurement.Measurement.report  # as it is, before a test wraps it


def always_finite(*tensors):
    return True


def final_weights(monkeypatch, script, check):
    """Train a script briefly in this process, with or without the NaN check; its final weights,
    as the report gets them."""
    if not check:
        monkeypatch.setattr(nan_check, "all_finite", always_finite)
    monkeypatch.setattr(sys, "argv", [script, "--quick", "--max-steps", "5"])
    reported = []

    def keep_the_weights(self, *values, **named):
        reported.extend(parameter.detach().clone() for parameter in self.model.parameters())
        return REPORT(self, *values, **named)

    monkeypatch.setattr(measurement.Measurement, "report", keep_the_weights)
    assert run_in_process(script) == 0
    return reported


@pytest.mark.parametrize("script", ["01_fabric_baseline.py", "04_fabric_bf16true.py"])
def test_nonfinite_check_changes_no_result_of_a_finite_run(monkeypatch, script):
    with_check = final_weights(monkeypatch, script, check=True)
    without_check = final_weights(monkeypatch, script, check=False)
    assert all(torch.equal(a, b) for a, b in zip(with_check, without_check, strict=True))


def test_divergence_advice_follows_the_precision_in_effect():
    assert "03b_fabric_16true_adam_eps.py" in divergence_advice("16-true")
    assert "bf16-mixed (05_fabric_bf16mixed.py)" in divergence_advice("16-mixed")
    for precision in ("32-true", "bf16-true", "bf16-mixed", None):
        advice = divergence_advice(precision)
        assert advice.startswith("lower --learning-rate") and "bf16-true" not in advice


def test_the_ranges_the_advice_names_are_the_formats_own():
    assert torch.finfo(torch.float16).max == 65504
    assert f"{torch.finfo(torch.bfloat16).max:.1e}" == f"{torch.finfo(torch.float32).max:.1e}"
    assert f"{torch.finfo(torch.bfloat16).max:.1e}" == "3.4e+38"


def test_float16_autocast_overflows_with_float32_weights():
    """16-mixed's case: the weights are float32, yet a float16 matmul output overflows to inf and
    the loss is NaN; bf16 autocast, with float32's range, keeps the same product finite."""
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(300.0)
    features = torch.full((1, 2), 300.0)  # 2 x 300 x 300 = 180,000 > 65,504
    with torch.autocast("cpu", dtype=torch.float16):
        output = layer(features)
    assert layer.weight.dtype == torch.float32 and output.dtype == torch.float16
    assert torch.isinf(output).all() and torch.isnan(output - output).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(layer(features)).all()
