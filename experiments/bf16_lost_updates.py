"""Why bf16-true finetuning at a small learning rate leaves most weights unchanged, why Adam's
second moment stops decaying too, and how Kahan summation and stochastic rounding fix the weights.

bfloat16 keeps 8 significant bits (torch.finfo(torch.bfloat16).eps = 2**-7), so w + u rounds back
to w when |u| is below half the spacing of bfloat16 numbers at w: see `frozen_from`. Adam's update
is at most about lr whatever the gradient, so at lr=5e-5 a weight stored in bfloat16 with
|w| >= 2**-6 = 0.015625 cannot take it. The same rounding stops Adam's exp_avg_sq from decaying:
exp_avg_sq * 0.999 rounds back to exp_avg_sq in bfloat16 (see `decaying_beta2`). A
Kahan-summation optimizer (torch-optimi's `optimi.Adam`) keeps each update's rounding error in a
buffer and adds it back; stochastic rounding (torchao's `_AdamW(bf16_stochastic_round=True)`)
rounds up or down at random, in proportion, so the updates add up on average.

Pretrains a small ViT in float32 on a generated image task, finetunes copies of it on another with
Lightning Fabric at several learning rates and precisions, and prints a Markdown table of test
accuracy and the share of backbone weights that changed at all. With --digits, instead trains a
small MLP from scratch on scikit-learn's handwritten digits over seeds, in every setting of
DIGITS_SETTINGS, and prints accuracy, the share of exp_avg_sq that decayed, state bytes per weight
and time per step. CPU only.

Run: python experiments/bf16_lost_updates.py [--epochs N] [--lrs 5e-5 2e-4 1e-3] [--seed S]
     [--tiny] [--vit-l-16] [--zero-head] [--thresholds]
     python experiments/bf16_lost_updates.py --digits [--lrs 1e-4] [--seeds 1 2 3] [--epochs 20]
Cost: 4 pretraining epochs of 128 steps, then 12 finetuning runs of 5 epochs of 32 steps: 84 to
128 s on our 2-core AMD EPYC with bfloat16 units, 716 s on a 2-core AVX2-only CPU. --tiny, which
tests/test_bf16_lost_updates.py runs, trains 4 pretraining epochs of 8 steps and 4 runs of 6
epochs of 8 steps per learning rate. --digits: 7 settings x 3 seeds x 20 epochs of 45 steps, then
the timing: 580 s on one thread of a 2-core AVX2-only AMD EPYC shared with other work.
"""

import argparse
import logging
import math
import platform
import statistics
import time
from functools import partial
from importlib.metadata import version
from pathlib import Path

import lightning as L
import optimi
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

# torchao logs a deprecation notice from torch's pytree registry when imported, and its optimizer's
# torch.compile a note that there is no CUDA: neither is ours to act on
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torchao.optim import _AdamW  # noqa: E402

# Table column: (Fabric precision, optimizer); every optimizer has torch.optim.Adam's defaults.
# bf16-mixed: float32 weights and Adam state, bfloat16 activations. bf16-true: all in bfloat16.
# optimi turns Kahan summation on for bfloat16 weights; betas and eps as torch.optim.Adam's.
SETTINGS = {
    "float32": ("32-true", torch.optim.Adam),
    "bf16-mixed": ("bf16-mixed", torch.optim.Adam),
    "bf16-true": ("bf16-true", torch.optim.Adam),
    "bf16-true + Kahan": ("bf16-true", partial(optimi.Adam, betas=(0.9, 0.999), eps=1e-8)),
}
# --digits: the scripts' optimizers (01, 05, 04, 04b), stochastic rounding, and a beta2 whose decay
# bfloat16 can hold (below decaying_beta2(): 0.99612), with its float32 control.
KAHAN_ADAM = partial(optimi.Adam, betas=(0.9, 0.999), eps=1e-8)
DIGITS_SETTINGS = {
    "float32 (01)": ("32-true", torch.optim.Adam),
    "bf16-mixed (05)": ("bf16-mixed", torch.optim.Adam),
    "bf16-true (04)": ("bf16-true", torch.optim.Adam),
    "bf16-true + Kahan (04b)": ("bf16-true", KAHAN_ADAM),
    "bf16-true + stochastic rounding": (
        "bf16-true",
        partial(_AdamW, weight_decay=0.0, bf16_stochastic_round=True),  # AdamW without decay: Adam
    ),
    "bf16-true + Kahan, beta2 0.996": ("bf16-true", partial(KAHAN_ADAM, betas=(0.9, 0.996))),
    "float32, beta2 0.996": ("32-true", partial(torch.optim.Adam, betas=(0.9, 0.996))),
}
DIGITS_BATCH_SIZE = 32  # the digits runs of the README


def significant_bits(dtype: torch.dtype) -> int:
    """Significant bits of a floating-point dtype, the implicit leading 1 included: 1 - log2(eps).

    bfloat16: 8 (torch.finfo(torch.bfloat16).eps = 2**-7); float16: 11; float32: 24.
    """
    return round(1 - math.log2(torch.finfo(dtype).eps))


def frozen_from(lr: float, dtype: torch.dtype = torch.bfloat16) -> float:
    """The weight magnitude from which an update of size `lr` is lost: w + lr rounds back to w.

    A weight with 2**e <= |w| < 2**(e+1) has neighbours ulp = 2**(e - p + 1) away (p significant
    bits; bfloat16: 8, ulp = 2**(e-7)), and w + u rounds to the nearest, ties to even: u is lost
    if |u| < ulp / 2, and at |u| == ulp / 2 for the weights whose last bit is even. So an update
    of size lr is lost for every |w| >= T = 2**(floor(log2(lr)) + p + 1) and kept below T; when
    lr is a power of two, the weights in [T/2, T) with an even last bit lose it too (a tie). One
    exception: a step toward zero from |w| == T is kept unless lr is a power of two, because the
    neighbour below a power of two is half as far. Normal numbers only. Returns T, a power of two;
    tests/test_bf16_lost_updates.py checks it against adding lr to every bfloat16 number.
    """
    return 2.0 ** (math.floor(math.log2(lr)) + significant_bits(dtype) + 1)


def decaying_beta2(dtype: torch.dtype = torch.bfloat16) -> float:
    """The beta2 below which exp_avg_sq * beta2 rounds below exp_avg_sq for every normal value.

    Adam decays its second moment by exp_avg_sq.mul_(beta2) (torch/optim/adam.py, then it adds
    (1 - beta2) * g**2 in a second operation). v = m * 2**e (1 <= m < 2) has neighbours
    2**(e - p + 1) apart (p significant bits), so the decay (1 - beta2) * v must exceed half that,
    2**(e - p); hardest just above a power of two, m = 1 + 2**(1 - p): beta2 < 1 - 2**-p /
    (1 + 2**(1 - p)). bfloat16 (p = 8): 0.99612. With 1 - beta2 <= 2**-(p + 1) no value decays:
    torch's default beta2 = 0.999 (0.001 < 2**-9) keeps bfloat16's exp_avg_sq from ever
    decreasing. tests/test_bf16_lost_updates.py checks both against every bfloat16 number.
    """
    p = significant_bits(dtype)
    return 1 - 2.0**-p / (1 + 2.0 ** (1 - p))


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
    parser.add_argument(
        "--epochs", type=int, help="finetuning epochs (default 5; --tiny: 6; --digits: 20)"
    )
    parser.add_argument(
        "--lrs", type=float, nargs="+", help="default 5e-5 2e-4 1e-3; --digits: 1e-4"
    )
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--digits", action="store_true", help="the digits MLP study instead")
    parser.add_argument(
        "--thresholds", action="store_true", help="pretrain and print the thresholds; no finetuning"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="--digits' seeds")
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
        "bfloat16 keeps 8 significant bits: w + lr rounds back to w once lr < half the spacing of "
        "bfloat16 numbers at w, 2**(floor(log2|w|) - 8), which holds for every "
        "|w| >= 2**(floor(log2(lr)) + 9)."
    )
    for lr in lrs:
        share = (backbone_weights.abs() >= frozen_from(lr)).float().mean().item()
        print(
            f"lr {lr:g}: updates are lost for |w| >= {frozen_from(lr):g}: {share:.0%} of the "
            "pretrained backbone weights"
        )
    models = {  # --quick's model (model_weights.vit_tiny_32) and the reference's, at random
        "vit_tiny_32 (--quick's model; seed 1)": partial(
            torchvision.models.VisionTransformer,
            32,
            8,
            num_layers=3,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=128,
        ),
    }
    if vit_l_16:  # its ImageNet weights need a download
        models["vit_l_16 (not its ImageNet weights)"] = torchvision.models.vit_l_16
    for model_name, build in models.items():
        torch.manual_seed(1)
        named = build().named_parameters()
        weights = [p.detach().flatten() for name, p in named if not name.startswith("heads.")]
        weights = torch.cat(weights).abs()
        shares = [(weights >= frozen_from(lr)).float().mean() for lr in lrs]
        above = [
            f"{share:.1%} at or above the threshold of lr {lr:g}"
            for share, lr in zip(shares, lrs, strict=True)
        ]
        print(
            f"{model_name} at torchvision's random initialisation, {weights.numel():,} backbone "
            f"weights, median |w| {weights.median():.3g}: " + ", ".join(above)
        )
    print("Adam's updates are at most about lr and mostly smaller, so more weights than these stay")
    print("unchanged.")


def digits_task(seed_split=0):
    """scikit-learn's 1,797 handwritten digits as (64,) floats in [0, 1]: (train, test) datasets.

    The stratified 80/20 split of experiments/digits_image_folder.py (random_state 0).
    """
    digits = load_digits()
    features = torch.tensor(digits.data, dtype=torch.float32) / 16  # 16 grey levels
    labels = torch.tensor(digits.target)
    train, test = train_test_split(
        range(len(labels)), test_size=0.2, stratify=digits.target, random_state=seed_split
    )
    return (
        TensorDataset(features[train], labels[train]),
        TensorDataset(features[test], labels[test]),
    )


def digits_mlp():
    """64 -> 128 -> 128 -> 10, ReLU, PyTorch's default initialisation (|w| up to 1/sqrt(fan-in))."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def second_moments(optimizer):
    """Every exp_avg_sq of the optimizer, flattened into one float32 tensor (a copy)."""
    state = optimizer.state.values()
    return torch.cat([entry["exp_avg_sq"].flatten().float() for entry in state])


def state_bytes_per_weight(optimizer, model):
    """Bytes of optimizer state per weight, counting the per-element buffers (not step counters)."""
    weights = sum(param.numel() for param in model.parameters())
    total = 0
    for entry in optimizer.state.values():
        for value in entry.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                total += value.numel() * value.element_size()
    return total / weights


def run_digits(setting, lr, seed, epochs):
    """Train the digits MLP from scratch under one DIGITS_SETTINGS entry.

    Returns (test accuracy, share of exp_avg_sq elements lower after the last epoch than before it,
    state bytes per weight).
    """
    precision, optimizer_class = DIGITS_SETTINGS[setting]
    L.seed_everything(seed, verbose=False)  # the same initial weights and order in every setting
    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    with fabric.init_module():
        model = digits_mlp()
    model, optimizer = fabric.setup(model, optimizer_class(model.parameters(), lr=lr))
    train_set, test_set = digits_task()
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, DIGITS_BATCH_SIZE, shuffle=True, generator=order)
    model.train()
    for epoch in range(epochs):
        if epoch == epochs - 1:
            before = second_moments(optimizer)
        for features, targets in loader:
            loss = F.cross_entropy(model(features), targets)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
    decreased = (second_moments(optimizer) < before).float().mean().item()
    features, targets = test_set.tensors
    model.eval()
    with torch.no_grad():
        logits = model(features)  # Fabric casts the inputs to the weights' dtype
    test_accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
    return test_accuracy, decreased, state_bytes_per_weight(optimizer, model)


def step_times(lr, steps=200, warmup=20):
    """Median seconds per training step (forward, backward, optimizer step) of every
    DIGITS_SETTINGS entry on one batch of 32 digits. The settings take turns step by step, so a
    CPU busy with other work slows them alike; the warm-up steps hold torchao's compilation."""
    features, targets = digits_task()[0][:DIGITS_BATCH_SIZE]
    runs = {}
    for setting, (precision, optimizer_class) in DIGITS_SETTINGS.items():
        L.seed_everything(1, verbose=False)
        fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
        with fabric.init_module():
            model = digits_mlp()
        model, optimizer = fabric.setup(model, optimizer_class(model.parameters(), lr=lr))
        runs[setting] = (fabric, model, optimizer, [])
    for step in range(warmup + steps):
        for fabric, model, optimizer, times in runs.values():
            start = time.perf_counter()
            loss = F.cross_entropy(model(features), targets)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return {setting: statistics.median(run[3]) for setting, run in runs.items()}


def digits_study(lrs, seeds, epochs) -> None:
    """One Markdown table row per setting and learning rate, over the seeds."""
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, torch-optimi "
        f"{optimi.__version__}, torchao {version('torchao')}, {cpu_name()} ({threads} threads) | "
        f"MLP 64-128-128-10 from PyTorch's initialisation | scikit-learn's digits, 1,437 "
        f"training and 360 test images | Adam, {epochs} epochs of "
        f"{math.ceil(1437 / DIGITS_BATCH_SIZE)} steps, batch size {DIGITS_BATCH_SIZE}, "
        f"seeds {', '.join(map(str, seeds))}\n"
    )
    for lr in lrs:
        print(
            f"lr {lr:g}: bfloat16 loses it for |w| >= {frozen_from(lr):g}; exp_avg_sq decays in "
            f"bfloat16 only with beta2 < {decaying_beta2():.5f}\n"
        )
    print(
        "| lr | setting | test acc. (mean over seeds) | per seed | exp_avg_sq lower after the "
        "last epoch than before it | state bytes per weight |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for lr in lrs:
        for setting in DIGITS_SETTINGS:
            runs = [run_digits(setting, lr, seed, epochs) for seed in seeds]
            accuracies = [run[0] for run in runs]
            decreased = sum(run[1] for run in runs) / len(runs)
            per_seed = ", ".join(f"{accuracy:.1%}" for accuracy in accuracies)
            print(
                f"| {lr:g} | {setting} | {sum(accuracies) / len(runs):.1%} | {per_seed} | "
                f"{decreased:.1%} | {runs[0][2]:g} |",
                flush=True,
            )
    print(
        "\nTime per training step, median of 200 steps on one batch after 20 of warm-up, the "
        "settings taking turns step by step:\n"
    )
    print("| setting | ms per step | vs bf16-true + Kahan (04b) |")
    print("| --- | --- | --- |")
    times = step_times(lrs[0])
    for setting, seconds in times.items():
        ratio = seconds / times["bf16-true + Kahan (04b)"]
        print(f"| {setting} | {seconds * 1000:.2f} | {ratio:.2f}x |")


def main() -> None:
    args = parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no AMP notice in the table
    start = time.perf_counter()
    if args.digits:
        epochs = args.epochs or 20
        if epochs < 2:  # the last epoch's change of exp_avg_sq needs an epoch before it
            raise SystemExit("error: --digits needs --epochs 2 or more; give a larger --epochs")
        digits_study(args.lrs or [1e-4], args.seeds, epochs)
        print(f"\n{time.perf_counter() - start:.0f} s in all")
        return
    lrs = args.lrs or [5e-5, 2e-4, 1e-3]
    size = SIZES["default"]
    if args.tiny:
        size = SIZES["tiny"]
    epochs = args.epochs or size["epochs"]

    # 1 Pretrain in float32 on task 1
    pretrained, pretrain_accuracy = pretrain(size, args.seed)
    backbone_weights = [
        v.flatten() for name, v in pretrained.items() if not name.startswith("heads.")
    ]
    backbone_weights = torch.cat(backbone_weights)
    print_conditions(size, epochs, args.seed, backbone_weights, pretrain_accuracy)

    # 2 Where bfloat16 loses an update of size lr
    print_thresholds(lrs, backbone_weights, args.vit_l_16)
    if args.thresholds:
        return

    # 3 Finetune on task 2 in every setting
    print(
        "\nTest accuracy / share of backbone weights that changed at all (vs their pretrained "
        "value in the run's weight dtype):\n"
    )
    print("| lr | " + " | ".join(SETTINGS) + " |")
    print("| --- |" + " --- |" * len(SETTINGS))
    for lr in lrs:
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
