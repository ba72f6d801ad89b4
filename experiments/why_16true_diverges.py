"""Print the evidence behind the README's "Why 16-true diverges": the formats' limits and one Adam step.

Run: python experiments/why_16true_diverges.py  (CPU, a second; prints Markdown)
"""

import torch

print(
    "| dtype | largest value | smallest normal | smallest subnormal | precision (eps) | Adam's eps=1e-8 becomes |"
)
print("| --- | --- | --- | --- | --- | --- |")
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    info = torch.finfo(dtype)
    print(
        f"| {str(dtype)[6:]} | {info.max:.4g} | {info.tiny:.3g} | {info.smallest_normal * info.eps:.3g} | "
        f"{info.eps:.3g} | {torch.tensor(1e-8, dtype=dtype).item():.3g} |"
    )

gradients = [0.0, 1e-5, 1e-3, 1.0]
print(
    f"\nOne Adam step (lr=1e-3) on float16 weights that start at 0, with gradients {gradients}:\n"
)
print("| eps | exp_avg_sq after the step | weights after the step |")
print("| --- | --- | --- |")
for eps in (1e-8, 1e-4):
    weights = torch.zeros(len(gradients), dtype=torch.float16, requires_grad=True)
    weights.grad = torch.tensor(gradients, dtype=torch.float16)
    optimizer = torch.optim.Adam([weights], lr=1e-3, eps=eps)
    optimizer.step()
    squares = optimizer.state[weights]["exp_avg_sq"]
    print(
        f"| {eps:g} | {[f'{value:.3g}' for value in squares.tolist()]} | {[f'{value:.3g}' for value in weights.tolist()]} |"
    )
