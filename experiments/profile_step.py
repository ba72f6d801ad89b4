"""Where the time of a training step goes: torch.profiler over a few steps of one precision.

Run: python experiments/profile_step.py --precision bf16-true --matmul-precision medium
     [--model vit_b_16] [--batch-size 8] [--steps 3]
Prints the operators that took the most time and the share spent in matrix multiplications.
"""

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_weights import get_model  # noqa: E402  (builds vit_tiny_32 too)

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
    model = get_model(args.model, num_classes=10)
optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
model, optimizer = fabric.setup(model, optimizer)
size = model.image_size  # 224 for the ImageNet ViTs
features = torch.randn(args.batch_size, 3, size, size, device=fabric.device)
targets = torch.randint(0, 10, (args.batch_size,), device=fabric.device)


def step():
    loss = F.cross_entropy(model(features), targets)
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()


step()  # warm-up: first-call allocations and kernel selection stay out of the profile
activities = [ProfilerActivity.CPU]
if fabric.device.type == "cuda":
    activities.append(ProfilerActivity.CUDA)
with profile(activities=activities) as profiler:
    for _ in range(args.steps):
        step()
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
averages = profiler.key_averages()
time_key = "self_cpu_time_total"  # microseconds
if fabric.device.type == "cuda":
    time_key = "self_device_time_total"
print(averages.table(sort_by=time_key.replace("device", "cuda"), row_limit=12))
total = sum(getattr(event, time_key) for event in averages)
matmul = sum(getattr(event, time_key) for event in averages if event.key in MATMULS)
print(
    f"{args.precision}, matmul precision {args.matmul_precision}: "
    f"{total / args.steps / 1e6:.2f} s per step, {matmul / args.steps / 1e6:.2f} s "
    f"({matmul / total:.0%}) of it in matrix multiplications and attention"
)
