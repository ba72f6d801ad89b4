"""Why bf16-true finetuning at a small learning rate leaves most weights unchanged, and how Kahan summation fixes it.

bfloat16 keeps 8 significant bits, so w + u rounds back to w unless |u| exceeds half a bfloat16 step at w, which
is at least |w| * 2**-9. Adam's update is about lr whatever the gradient, so at lr=5e-5 a weight stored in bfloat16
with |w| >= 5e-5 * 2**9 = 0.0256 cannot change. A Kahan-summation optimizer (torch-optimi's `optimi.Adam`) keeps
each update's rounding error in a buffer and adds it back, so the small updates add up.

Pretrains a small ViT in float32 on a generated image task, finetunes copies of it on another with Lightning Fabric
at several learning rates and precisions, and prints a Markdown table of test accuracy and the share of backbone
weights that changed at all. CPU only, generated data: nothing to download.

Run: python experiments/bf16_lost_updates.py [--epochs N] [--lrs 5e-5 2e-4 1e-3] [--seed S] [--tiny] [--vit-l-16]
     [--zero-head]
(about 90 s on 2 CPU cores; --tiny, which tests/test_bf16_lost_updates.py runs, takes a second after the imports)
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

SETTINGS = {  # table column: (Fabric precision, optimizer); every optimizer has torch.optim.Adam's defaults
    "float32": ("32-true", torch.optim.Adam),
    "bf16-mixed": (
        "bf16-mixed",
        torch.optim.Adam,
    ),  # float32 weights and Adam state, bfloat16 activations
    "bf16-true": (
        "bf16-true",
        torch.optim.Adam,
    ),  # weights, activations, gradients and Adam state in bfloat16
    # optimi turns Kahan summation on for bfloat16 weights; betas and eps as torch.optim.Adam's defaults
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
    """Images of `num_classes` smooth colour patterns (fixed by `task`) under heavy noise (drawn from `seed`)."""
    prototypes = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(task))
    prototypes = F.interpolate(prototypes, size=image_size, mode="bilinear")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)
    images = prototypes[labels] + 2.5 * torch.randn(
        num_images, 3, image_size, image_size, generator=generator
    )
    return TensorDataset(images, labels)


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
    loader = DataLoader(
        dataset, BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
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
    train(
        fabric,
        model,
        optimizer,
        generated_task(1, size["pretrain_images"], seed),
        size["pretrain_epochs"],
        seed,
    )
    test_accuracy = accuracy(model, generated_task(1, size["test_images"], seed + 1))
    return {
        name: value.detach().clone() for name, value in model.module.state_dict().items()
    }, test_accuracy


def backbone(model):
    """Every parameter but the classification head's, by name."""
    return {
        name: param for name, param in model.named_parameters() if not name.startswith("heads.")
    }


def run_cell(setting, lr, pretrained, size, epochs, seed, zero_head=False):
    """Finetune the pretrained ViT on task 2 under one SETTINGS column; return (test accuracy, changed share).

    The changed share counts the backbone weight elements that differ from their pretrained value cast to the
    run's weight dtype (float32, or bfloat16 under bf16-true): a change of any size counts.
    """
    precision, optimizer_class = SETTINGS[setting]
    L.seed_everything(seed, verbose=False)  # the same new head in every cell
    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    with fabric.init_module():
        model = vit(size)
        model.load_state_dict(pretrained)
        model.heads.head = torch.nn.Linear(
            size["hidden"], 10
        )  # a new head, as the numbered scripts make
        if zero_head:  # small weights that bfloat16 can still move, to separate the head's loss from the backbone's
            torch.nn.init.zeros_(model.heads.head.weight)
    initial = {name: pretrained[name].to(param.dtype) for name, param in backbone(model).items()}
    model, optimizer = fabric.setup(model, optimizer_class(model.parameters(), lr=lr))
    train(fabric, model, optimizer, generated_task(2, size["train_images"], seed), epochs, seed)
    changed = sum(
        (param != initial[name]).sum().item() for name, param in backbone(model.module).items()
    )
    test_accuracy = accuracy(model, generated_task(2, size["test_images"], seed + 1))
    return test_accuracy, changed / sum(param.numel() for param in initial.values())


def cpu_name():
    """The CPU's model name, for the line of conditions."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"finetuning epochs (default {SIZES['default']['epochs']}, "
        f"or {SIZES['tiny']['epochs']} with --tiny)",
    )
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[5e-5, 2e-4, 1e-3], help="Adam learning rates"
    )
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument(
        "--tiny", action="store_true", help="a seconds-long run of the same code on tiny sizes"
    )
    parser.add_argument(
        "--zero-head", action="store_true", help="start the new head's weights at zero"
    )
    parser.add_argument(
        "--vit-l-16",
        action="store_true",
        help="also count vit_l_16's weights above each threshold, "
        "at torchvision's initialisation (its ImageNet weights need a download; 1.2 GB of memory)",
    )
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(
        logging.WARNING
    )  # keeps Fabric's AMP notice out of the table
    size = SIZES["tiny" if args.tiny else "default"]
    epochs = args.epochs or size["epochs"]
    start = time.perf_counter()

    # 1 Pretrain in float32 on task 1
    pretrained, pretrain_accuracy = pretrain(size, args.seed)
    backbone_weights = torch.cat(
        [value.flatten() for name, value in pretrained.items() if not name.startswith("heads.")]
    )
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, {cpu_name()} ({torch.get_num_threads()} threads) | "
        f"ViT {size['layers']} layers, hidden {size['hidden']}, {backbone_weights.numel():,} backbone weights | "
        f"pretrained in float32: {size['pretrain_epochs']} epochs on {size['pretrain_images']} images of task 1, "
        f"{pretrain_accuracy:.1%} test accuracy | finetuned: {epochs} epochs on {size['train_images']} images of "
        f"task 2 (new classes, new head), batch size {BATCH_SIZE}, seed {args.seed}\n"
    )

    # 2 Where bfloat16 loses an update of size lr
    print(
        "bfloat16 keeps 8 significant bits: w + lr rounds back to w once lr < half a step at w, "
        "which holds for every |w| >= lr * 2**9."
    )
    for lr in args.lrs:
        share = (backbone_weights.abs() >= lr * 2**9).float().mean().item()
        print(
            f"lr {lr:g}: updates are lost for |w| >= {lr * 2**9:.4g}: {share:.0%} of the pretrained backbone weights"
        )
    if args.vit_l_16:  # the reference's model: randomly initialised, as no pretrained weights can be downloaded here
        weights = torch.cat(
            [
                p.detach().flatten()
                for name, p in torchvision.models.vit_l_16().named_parameters()
                if not name.startswith("heads.")
            ]
        )
        print(
            f"vit_l_16 at torchvision's initialisation (not its ImageNet weights), {weights.numel():,} backbone weights, "
            f"median |w| {weights.abs().median():.3g}: "
            + ", ".join(
                f"{(weights.abs() >= lr * 2**9).float().mean():.1%} at or above the threshold of lr {lr:g}"
                for lr in args.lrs
            )
        )
    print(
        "Adam's updates are at most about lr and mostly smaller, so more weights than these stay unchanged."
    )

    # 3 Finetune on task 2 in every setting
    print(
        "\nTest accuracy / share of backbone weights that changed at all (vs their pretrained value in the "
        "run's weight dtype):\n"
    )
    print("| lr | " + " | ".join(SETTINGS) + " |")
    print("| --- |" + " --- |" * len(SETTINGS))
    for lr in args.lrs:
        cells = [
            run_cell(setting, lr, pretrained, size, epochs, args.seed, args.zero_head)
            for setting in SETTINGS
        ]
        print(
            f"| {lr:g} | "
            + " | ".join(f"{acc:.1%} / {changed:.0%}" for acc, changed in cells)
            + " |",
            flush=True,
        )
    print(f"\n{time.perf_counter() - start:.0f} s in all")
