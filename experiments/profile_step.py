"""Where the time of a training step goes: torch.profiler over a few steps of one precision setting.

Run: python experiments/profile_step.py --precision bf16-true --matmul-precision medium [--model vit_b_16]
Prints the operators that took the most time and the share spent in matrix multiplications.
"""

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import local_utilities  # noqa: E402, F401  (registers the --quick model, vit_tiny_32, with torchvision)

MATMULS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_efficient_attention_forward",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_flash_attention_forward",
    "aten::_flash_attention_backward",
)

parser = argparse.ArgumentParser()
parser.add_argument("--precision", default="32-true")
parser.add_argument("--matmul-precision", default="medium", choices=("highest", "high", "medium"))
parser.add_argument("--model", default="vit_b_16")
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

torch.set_float32_matmul_precision(args.matmul_precision)
fabric = L.Fabric(devices=1, precision=args.precision)
with fabric.init_module():
    model = torchvision.models.get_model(args.model, num_classes=10)
optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
model, optimizer = fabric.setup(model, optimizer)
features = torch.randn(args.batch_size, 3, 224, 224, device=fabric.device)
targets = torch.randint(0, 10, (args.batch_size,), device=fabric.device)


def step():
    loss = F.cross_entropy(model(features), targets)
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()


step()  # warm-up: first-call allocations and kernel selection stay out of the profile
activities = [ProfilerActivity.CPU] + (
    [ProfilerActivity.CUDA] if fabric.device.type == "cuda" else []
)
with profile(activities=activities) as profiler:
    for _ in range(args.steps):
        step()
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
averages = profiler.key_averages()
sort_key = "self_cuda_time_total" if fabric.device.type == "cuda" else "self_cpu_time_total"
print(averages.table(sort_by=sort_key, row_limit=12))
time_of = (
    (lambda event: event.self_device_time_total)
    if fabric.device.type == "cuda"
    else (lambda event: event.self_cpu_time_total)
)
total = sum(time_of(event) for event in averages)
matmul = sum(time_of(event) for event in averages if event.key in MATMULS)
print(
    f"{args.precision}, matmul precision {args.matmul_precision}: {total / args.steps / 1e6:.2f} s per step, "
    f"{matmul / args.steps / 1e6:.2f} s ({matmul / total:.0%}) of it in matrix multiplications and attention"
)
