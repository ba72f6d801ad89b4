"""The NaN check of every training step, and where a NaN or inf first appeared when it fires."""

import torch
import torch.distributed as dist

from processes import world_size

DIVERGED_EXIT_CODE = 3  # a run that stopped because the loss or the weights turned NaN/inf


def all_finite(*tensors: torch.Tensor) -> bool:
    """True while every tensor is finite on every process: one small reduction and one sync.

    With several processes, a NaN on any of them makes it False on all, so all stop together.
    """
    finite = torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all()
    finite = finite.to(torch.int32)
    if world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def divergence_message(diverged_at: str, precision_in_effect: str | None) -> str:
    """'error: training diverged: <where>; <what to do>', the advice following the precision in
    effect ("16-true", "16-mixed", ...: Measurement.precision_in_effect)."""
    return f"error: training diverged: {diverged_at}; {divergence_advice(precision_in_effect)}"


def divergence_advice(precision_in_effect: str | None) -> str:
    """What to do after a divergence, for the precision in effect.

    float16 is the only format here with a narrow range (largest value 65,504, smallest subnormal
    2^-24: torch.finfo(torch.float16)); bfloat16 has float32's 8 exponent bits (largest 3.4e38).
    With float16 weights (16-true) Adam's squared-gradient average underflows and the weights can
    overflow (docs/why_16true_diverges.md); with float32 weights under float16 autocast (16-mixed
    on a GPU) the matmul outputs are float16 and can overflow, whatever the weights.
    """
    if precision_in_effect == "16-true":
        return (
            "float16 weights and Adam state are the likely cause: use bf16-true "
            "(04_fabric_bf16true.py) or 16-mixed (02_fabric_16mixed.py), or with float16 weights "
            "an Adam eps that float16 can hold (03b_fabric_16true_adam_eps.py)"
        )
    if precision_in_effect == "16-mixed":
        return (
            "autocast's float16 matmul outputs overflow above 65,504 whatever the weights: use "
            "bf16-mixed (05_fabric_bf16mixed.py), or lower --learning-rate"
        )
    return (
        "lower --learning-rate (bfloat16 and float32 reach 3.4e38, so the format's range is not "
        "the likely cause)"
    )


def first_nonfinite(model: torch.nn.Module, features: torch.Tensor, step: int) -> str:
    """Where NaN/inf first appeared: the last step's weights or gradients, or this step's forward.

    `step` counts from 1 and is the step whose loss was non-finite; `features` is its batch.
    """
    module = getattr(model, "module", model)  # Fabric's wrapper keeps the model as .module
    parameters = list(module.named_parameters())
    weights = [name for name, p in parameters if not p.isfinite().all()]
    gradients = [
        name for name, p in parameters if p.grad is not None and not p.grad.isfinite().all()
    ]
    if weights and gradients:
        return (
            f"the gradients of step {step - 1} were non-finite first "
            f"{first_of(gradients, parameters)}, and the optimizer step wrote them into the weights"
        )
    if weights:
        return (
            f"the weights turned non-finite in optimizer step {step - 1} although its gradients "
            f"were finite {first_of(weights, parameters)}, so the loss of step {step} is NaN"
        )
    culprit = first_nonfinite_module(model, features)
    if culprit is None:
        return f"the loss of step {step} was non-finite although the forward pass was finite"
    return (
        f"the forward pass of step {step} produced the first non-finite output in module {culprit}"
    )


def first_of(names: list[str], parameters: list) -> str:
    """'(first parameter NAME, N of M parameter tensors)'."""
    return f"(first parameter {names[0]}, {len(names)} of {len(parameters)} parameter tensors)"


def first_nonfinite_module(model: torch.nn.Module, features: torch.Tensor) -> str | None:
    """The name of the first module to finish with a non-finite output; None if all are finite."""
    culprits = []

    def watch(name):
        def hook(module, inputs, output):
            if not culprits and isinstance(output, torch.Tensor) and not output.isfinite().all():
                culprits.append(name)

        return hook

    modules = getattr(model, "module", model).named_modules()
    hooks = [module.register_forward_hook(watch(name)) for name, module in modules if name]
    # eager even when the model is compiled: every hook runs, and nothing is compiled again.
    # Private: the public torch.compiler.set_stance("force_eager") needs torch 2.6, we allow 2.4
    with torch.no_grad(), torch._dynamo.config.patch(disable=True):
        model(features)
    for hook in hooks:
        hook.remove()
    if not culprits:
        return None
    return culprits[0]
