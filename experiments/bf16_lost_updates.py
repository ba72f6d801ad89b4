"""Why bf16-true finetuning at a small learning rate leaves most weights unchanged, and how Kahan
summation fixes it.

bfloat16 keeps 8 significant bits, so w + u rounds back to w unless |u| exceeds half a bfloat16
step at w, which is at least |w| * 2**-9. Adam's update is about lr whatever the gradient, so at
lr=5e-5 a weight stored in bfloat16 with |w| >= 5e-5 * 2**9 = 0.0256 cannot change. A
Kahan-summation optimizer (torch-optimi's `optimi.Adam`) keeps each update's rounding error in a
buffer and adds it back, so the small updates add up.

Pretrains a small ViT in float32 on a generated image task, finetunes copies of it on another with
Lightning Fabric at several learning rates and precisions, and prints a Markdown table of test
accuracy and the share of backbone weights that changed at all. CPU only, generated data.

Run: python experiments/bf16_lost_updates.py [--epochs N] [--lrs 5e-5 2e-4 1e-3] [--seed S]
     [--tiny] [--vit-l-16] [--zero-head]
Cost: 4 pretraining epochs of 128 steps, then 12 finetuning runs of 5 epochs of 32 steps: 84 to
128 s on our 2-core AMD EPYC with bfloat16 units, 716 s on a 2-core AVX2-only CPU. --tiny, which
tests/test_bf16_lost_updates.py runs, trains 4 pretraining epochs of 8 steps and 4 runs of 6
epochs of 8 steps per learning rate.
"""

import argparse
import logging
import platform
import time
from functools import partial
from pathlib import Path

import lightning as L
import optimi
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

# Table column: (Fabric precision, optimizer); every optimizer has torch.optim.Adam's defaults.
# bf16-mixed: float32 weights and Adam state, bfloat16 activations. bf16-true: all in bfloat16.
# optimi turns Kahan summation on for bfloat16 weights; betas and eps as torch.optim.Adam's.
SETTINGS = {
    "float32": ("32-true", torch.optim.Adam),
    "bf16-mixed": ("bf16-mixed", torch.optim.Adam),
    "bf16-true": ("bf16-true", torch.optim.Adam),
    "bf16-true + Kahan": ("bf16-true", partial(optimi.Adam, betas=(0.9, 0.999), eps=1e-8)),
}
SIZES = {  # the ViT's width and depth, and the images and epochs of each task
    "default": dict(
        hidden=64,
        layers=4,
        pretrain_images=8192,
        pretrain_epochs=4,
        train_images=2048,
        test_images=1024,
        epochs=5,
    ),
    "tiny": dict(
        hidden=32,
        layers=1,
        pretrain_images=512,
        pretrain_epochs=4,
        train_images=512,
        test_images=256,
        epochs=6,
    ),
}
BATCH_SIZE = 64


def generated_task(task, num_images, seed, num_classes=10, image_size=32):
    """Images of `num_classes` smooth colour patterns (fixed by `task`) under heavy noise (drawn
    from `seed`): (N, 3, 32, 32) floats and N labels."""
    prototypes = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(task))
    prototypes = F.interpolate(prototypes, size=image_size, mode="bilinear")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)
    noise = torch.randn(num_images, 3, image_size, image_size, generator=generator)
    return TensorDataset(prototypes[labels] + 2.5 * noise, labels)


def vit(size, num_classes=10):
    """torchvision's VisionTransformer on 32x32 images, randomly initialised."""
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=size["layers"],
        num_heads=4,
        hidden_dim=size["hidden"],
        mlp_dim=4 * size["hidden"],
        num_classes=num_classes,
    )


def train(fabric, model, optimizer, dataset, epochs, seed):
    """Adam on cross-entropy; the batch order depends only on `seed`."""
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, BATCH_SIZE, shuffle=True, generator=order)
    model.train()
    for _ in range(epochs):
        for features, targets in loader:
            loss = F.cross_entropy(model(features), targets)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()


@torch.no_grad()
def accuracy(model, dataset):
    """Share of the dataset's images classified correctly, in one batch."""
    model.eval()
    features, targets = dataset.tensors
    return (model(features).argmax(dim=1) == targets).float().mean().item()


def pretrain(size, seed):
    """Train a ViT in float32 on task 1, so its weights have the magnitudes of trained ones.

    Returns its weights (a float32 state dict) and its test accuracy on task 1.
    """
    L.seed_everything(seed, verbose=False)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    model = vit(size)
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    task = generated_task(1, size["pretrain_images"], seed)
    train(fabric, model, optimizer, task, size["pretrain_epochs"], seed)
    test_accuracy = accuracy(model, generated_task(1, size["test_images"], seed + 1))
    weights = {name: value.detach().clone() for name, value in model.module.state_dict().items()}
    return weights, test_accuracy


def backbone(model):
    """Every parameter but the classification head's, by name."""
    parameters = model.named_parameters()
    return {name: param for name, param in parameters if not name.startswith("heads.")}


def run_cell(setting, lr, pretrained, size, epochs, seed, zero_head=False):
    """Finetune the pretrained ViT on task 2 under one SETTINGS column.

    Returns (test accuracy, changed share), both fractions. The changed share counts the backbone
    weight elements that differ from their pretrained value cast to the run's weight dtype
    (float32, or bfloat16 under bf16-true): a change of any size counts.
    """
    precision, optimizer_class = SETTINGS[setting]
    L.seed_everything(seed, verbose=False)  # the same new head in every cell
    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    with fabric.init_module():
        model = vit(size)
        model.load_state_dict(pretrained)
        model.heads.head = torch.nn.Linear(size["hidden"], 10)  # new, as the numbered scripts make
        if zero_head:  # weights bfloat16 can still move: the head's loss apart from the backbone's
            torch.nn.init.zeros_(model.heads.head.weight)
    initial = {name: pretrained[name].to(param.dtype) for name, param in backbone(model).items()}
    model, optimizer = fabric.setup(model, optimizer_class(model.parameters(), lr=lr))
    train(fabric, model, optimizer, generated_task(2, size["train_images"], seed), epochs, seed)
    backbone_now = backbone(model.module).items()
    changed = sum((param != initial[name]).sum().item() for name, param in backbone_now)
    test_accuracy = accuracy(model, generated_task(2, size["test_images"], seed + 1))
    return test_accuracy, changed / sum(param.numel() for param in initial.values())


def cpu_name():
    """The CPU's model name, for the line of conditions."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, help="finetuning epochs (default 5; --tiny: 6)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-5, 2e-4, 1e-3])
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--tiny", action="store_true", help="the same code on tiny sizes")
    parser.add_argument("--zero-head", action="store_true", help="start the new head at zero")
    parser.add_argument(
        "--vit-l-16",
        action="store_true",
        help="also count vit_l_16's weights above each threshold, at torchvision's initialisation "
        "(its ImageNet weights need a download; 1.2 GB of memory)",
    )
    return parser.parse_args()


def print_conditions(size, epochs, seed, backbone_weights, pretrain_accuracy) -> None:
    """The line of conditions: versions, CPU, model, data, epochs, batch size and seed."""
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, {cpu_name()} ({threads} threads) | "
        f"ViT {size['layers']} layers, hidden {size['hidden']}, "
        f"{backbone_weights.numel():,} backbone weights | pretrained in float32: "
        f"{size['pretrain_epochs']} epochs on {size['pretrain_images']} images of task 1, "
        f"{pretrain_accuracy:.1%} test accuracy | finetuned: {epochs} epochs on "
        f"{size['train_images']} images of task 2 (new classes, new head), batch size "
        f"{BATCH_SIZE}, seed {seed}\n"
    )


def print_thresholds(lrs, backbone_weights, vit_l_16) -> None:
    """Where bfloat16 loses an update of size lr, and the share of weights at or above it."""
    print(
        "bfloat16 keeps 8 significant bits: w + lr rounds back to w once lr < half a step at w, "
        "which holds for every |w| >= lr * 2**9."
    )
    for lr in lrs:
        share = (backbone_weights.abs() >= lr * 2**9).float().mean().item()
        print(
            f"lr {lr:g}: updates are lost for |w| >= {lr * 2**9:.4g}: {share:.0%} of the "
            "pretrained backbone weights"
        )
    if vit_l_16:  # the reference's model, randomly initialised: no download here
        named = torchvision.models.vit_l_16().named_parameters()
        weights = [p.detach().flatten() for name, p in named if not name.startswith("heads.")]
        weights = torch.cat(weights).abs()
        shares = [(weights >= lr * 2**9).float().mean() for lr in lrs]
        above = [
            f"{share:.1%} at or above the threshold of lr {lr:g}"
            for share, lr in zip(shares, lrs, strict=True)
        ]
        print(
            f"vit_l_16 at torchvision's initialisation (not its ImageNet weights), "
            f"{weights.numel():,} backbone weights, median |w| {weights.median():.3g}: "
            + ", ".join(above)
        )
    print("Adam's updates are at most about lr and mostly smaller, so more weights than these stay")
    print("unchanged.")


def main() -> None:
    args = parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no AMP notice in the table
    size = SIZES["default"]
    if args.tiny:
        size = SIZES["tiny"]
    epochs = args.epochs or size["epochs"]
    start = time.perf_counter()

    # 1 Pretrain in float32 on task 1
    pretrained, pretrain_accuracy = pretrain(size, args.seed)
    backbone_weights = [
        v.flatten() for name, v in pretrained.items() if not name.startswith("heads.")
    ]
    backbone_weights = torch.cat(backbone_weights)
    print_conditions(size, epochs, args.seed, backbone_weights, pretrain_accuracy)

    # 2 Where bfloat16 loses an update of size lr
    print_thresholds(args.lrs, backbone_weights, args.vit_l_16)

    # 3 Finetune on task 2 in every setting
    print(
        "\nTest accuracy / share of backbone weights that changed at all (vs their pretrained "
        "value in the run's weight dtype):\n"
    )
    print("| lr | " + " | ".join(SETTINGS) + " |")
    print("| --- |" + " --- |" * len(SETTINGS))
    for lr in args.lrs:
        cells = []
        for setting in SETTINGS:
            test_accuracy, changed = run_cell(
                setting, lr, pretrained, size, epochs, args.seed, args.zero_head
            )
            cells.append(f"{test_accuracy:.1%} / {changed:.0%}")
        print(f"| {lr:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
