"""Print the evidence behind "Why 16-true diverges": the formats' limits and one Adam step.

Run: python experiments/why_16true_diverges.py  (CPU, no data; prints Markdown)
"""

import torch


def format_limits() -> None:
    """One table row per dtype: range, smallest numbers, precision, and what Adam's eps becomes."""
    print(
        "| dtype | largest value | smallest normal | smallest subnormal | precision (eps) "
        "| Adam's eps=1e-8 becomes |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        info = torch.finfo(dtype)
        eps_becomes = torch.tensor(1e-8, dtype=dtype).item()
        subnormal = info.smallest_normal * info.eps
        print(
            f"| {str(dtype)[6:]} | {info.max:.4g} | {info.tiny:.3g} | {subnormal:.3g} | "
            f"{info.eps:.3g} | {eps_becomes:.3g} |"
        )


def one_adam_step(gradients: list[float]) -> None:
    """One Adam step (lr=1e-3) on float16 weights at 0, with torch's eps and with 1e-4."""
    print("\nOne Adam step (lr=1e-3) on float16 weights that start at 0, with gradients")
    print(f"{gradients}:\n")
    print("| eps | exp_avg_sq after the step | weights after the step |")
    print("| --- | --- | --- |")
    for eps in (1e-8, 1e-4):
        weights = torch.zeros(len(gradients), dtype=torch.float16, requires_grad=True)
        weights.grad = torch.tensor(gradients, dtype=torch.float16)
        optimizer = torch.optim.Adam([weights], lr=1e-3, eps=eps)
        optimizer.step()
        squares = [f"{value:.3g}" for value in optimizer.state[weights]["exp_avg_sq"].tolist()]
        after = [f"{value:.3g}" for value in weights.tolist()]
        print(f"| {eps:g} | {squares} | {after} |")


if __name__ == "__main__":
    format_limits()
    one_adam_step([0.0, 1e-5, 1e-3, 1.0])
