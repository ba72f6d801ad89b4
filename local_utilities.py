"""Data loading (CIFAR-10, your image folders, generated images) and accuracy for the scripts."""

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy
from torchvision.datasets import CIFAR10, ImageFolder

from errors import InputError
from image_files import image_folders
from model_weights import preprocessing
from processes import print_once, rank, world_size

SPLIT_SEED = 0  # the validation split drawn from train/ is the same for every --seed
NOISE = 2.0  # generated images: class prototype + NOISE * N(0, 1), learnt in one epoch


@dataclass
class DataInfo:
    """What get_dataloaders found: the class count and where each split came from."""

    num_classes: int
    source: str  # "cifar10", "generated", "synthetic", or the --data-dir path
    val_split: str = "validation split"
    test_split: str = "test split"


def generated_dataset(num_images: int, image_size: int = 32, seed: int = 0) -> TensorDataset:
    """(N, 3, size, size) float images in 10 classes, each class a colour pattern under noise."""
    prototypes = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    prototypes = torch.nn.functional.interpolate(prototypes, size=image_size, mode="bilinear")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (num_images,), generator=generator)
    noise = torch.randn(num_images, 3, image_size, image_size, generator=generator)
    return TensorDataset(prototypes[labels] + NOISE * noise, labels)


def image_folder_splits(data_dir: Path, transform) -> tuple[Dataset, Dataset, Dataset, DataInfo]:
    """(train, val, test, info) from train/ beside test/ and/or val/, each with class folders.

    With both val/ and test/, each is used as named. Otherwise validation is drawn from train/
    (validation_from_train), and val/ (if there is no test/) is the held-out test set.
    Errors: InputError for what image_folders or validation_from_train refuses.
    """
    found = image_folders(data_dir, transform)
    val_folder = "val/"
    if "val" in found:  # or valid/, validation/ (split_folder)
        val_folder = f"{Path(found['val'].root).name}/"
    info = DataInfo(len(found["train"].classes), str(data_dir), val_folder, "test/")
    if "val" in found and "test" in found:
        return found["train"], found["val"], found["test"], info
    test = "test"
    if "test" not in found:
        info.test_split, test = val_folder, "val"
    train, val = validation_from_train(found["train"])
    info.val_split = (
        f"a seeded 10% of each class of train/ ({len(val)} of {len(found['train'])} images)"
    )
    print_once(f"Validation: {info.val_split} | test: {info.test_split}")
    return train, val, found[test], info


def validation_from_train(train: ImageFolder) -> tuple[Subset, Subset]:
    """(training, validation) Subsets of train/: from each class a seeded 10% of its images,
    rounded up, but never its last one; prints the per-class counts of both.

    SPLIT_SEED draws them, so that every --seed validates on the same images.
    Errors: InputError when no class has two images to split.
    """
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    targets = torch.tensor(train.targets)
    training, validation = [], []
    for label in range(len(train.classes)):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        count = min(math.ceil(len(members) / 10), len(members) - 1)  # the last image trains
        validation += members[:count]
        training += members[count:]
    if not validation:
        raise InputError(
            f"--data-dir {train.root} has one image per class, none to spare for validation; "
            "add images, or give both val/ and test/"
        )
    for split, members in (("training", training), ("validation", validation)):
        counts = np.bincount(targets[members], minlength=len(train.classes)).tolist()
        counts = dict(zip(train.classes, counts, strict=True))
        print_once(f"Used for {split}: {len(members)} images {counts}")
    unsplit = [name for name, count in counts.items() if count == 0]  # validation's counts
    if unsplit:
        print_once(
            f"No validation image of {', '.join(unsplit)}: one image in train/ each, kept to train"
        )
    return Subset(train, sorted(training)), Subset(train, sorted(validation))


def cifar10_splits(data_dir: Path, transform) -> tuple[Dataset, Dataset, Dataset]:
    """CIFAR-10 as 45,000 train, 5,000 validation (the last training images) and 10,000 test images.

    Errors: InputError when the download fails; KeyboardInterrupt("interrupted while
    downloading ...") on Ctrl-C during it.
    """
    try:
        train_full = CIFAR10(data_dir, train=True, transform=transform, download=True)
        test = CIFAR10(data_dir, train=False, transform=transform, download=True)
    except KeyboardInterrupt:  # a cut download fails its checksum next time and is fetched again
        raise KeyboardInterrupt(f"interrupted while downloading CIFAR-10 to {data_dir}") from None
    except (URLError, OSError, RuntimeError) as error:  # RuntimeError: a failed checksum
        raise InputError(
            f"could not download CIFAR-10 to {data_dir} ({getattr(error, 'reason', error)}); "
            "connect to the internet, or train offline with --quick or on your own images with "
            "--data-dir PATH"
        ) from None
    return Subset(train_full, range(45_000)), Subset(train_full, range(45_000, 50_000)), test


def load_splits(
    data: str | Path, model: str, batch_size: int, max_steps: int | None
) -> tuple[Dataset, Dataset, Dataset, DataInfo]:
    """(train, val, test, info) for `data`: "synthetic", "generated", "cifar10" or an image
    folder (a Path), the images prepared for `model` (TINY_VIT: 32x32; else its ImageNet
    weights' own preprocessing); "synthetic" is sized by the batch size and max_steps."""
    if data == "synthetic":  # a pool of 64 full-size images, repeated: no memory or loading time
        pool = generated_dataset(64, image_size=224)
        train_images = max_steps * batch_size * world_size()
        val_images = 2 * batch_size
        train = Subset(pool, [i % 64 for i in range(train_images)])
        val = Subset(pool, [i % 64 for i in range(val_images)])
        return train, val, val, DataInfo(10, "synthetic")
    if data == "generated":  # CIFAR-10's split sizes / 20
        full = generated_dataset(3000)
        train, val, test = (
            Subset(full, range(2250)),
            Subset(full, range(2250, 2500)),
            Subset(full, range(2500, 3000)),
        )
        return train, val, test, DataInfo(10, "generated")
    transform = preprocessing(model)  # the same as predict.py's
    if data == "cifar10":
        return *cifar10_splits(Path("data"), transform), DataInfo(10, "cifar10")
    return image_folder_splits(data, transform)


def limit_steps(train: Dataset, max_steps: int | None, batch_images: int, seed: int) -> Dataset:
    """--max-steps N: N batches of training images, drawn at random; all of them when fewer."""
    if max_steps is None:
        return train
    available = len(train) // batch_images
    if available < max_steps:
        print_once(
            f"Training {available} of the {max_steps} steps asked for: one epoch of this data "
            f"has {available} batches"
        )
        return train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return Subset(train, order[: max_steps * batch_images].tolist())


def get_dataloaders(
    data: str | Path, model: str, batch_size: int, seed: int, max_steps: int | None, workers: int
) -> tuple[DataLoader, DataLoader, DataLoader, DataInfo]:
    """(train, val, test loaders, what the data is) for `data` (load_splits), in batches of
    `batch_size` per process, with `workers` loader processes each; max_steps (--max-steps)
    limits the training batches.

    The training order is a shuffle fixed by `seed` and the epoch (Fabric calls set_epoch);
    evaluation shards across processes with no sample padded in or dropped.
    Errors: InputError when the training split holds less than one batch, and what load_splits
    raises.
    """
    train, val, test, info = load_splits(data, model, batch_size, max_steps)
    batch_images = batch_size * world_size()
    train = limit_steps(train, max_steps, batch_images, seed)
    if len(train) < batch_images:  # drop_last would leave not one training step
        where = ""
        if isinstance(data, Path):  # an image folder
            where = f" of {data}/train/ (validation: {info.val_split})"
        advice = "add images"
        if len(train) >= world_size():
            advice += f", or use --batch-size {len(train) // world_size()} or less"
        raise InputError(
            f"the training split{where} has {len(train)} images, fewer than one batch of "
            f"{batch_size} x {world_size()} device(s); {advice}"
        )
    settings = dict(
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
    sampler = DistributedSampler(
        train, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed
    )
    train_loader = DataLoader(train, sampler=sampler, drop_last=True, **settings)
    val_loader = DataLoader(val, sampler=evaluation_sampler(val), **settings)
    test_loader = DataLoader(test, sampler=evaluation_sampler(test), **settings)
    return train_loader, val_loader, test_loader, info


def evaluation_sampler(dataset: Dataset) -> UnrepeatedDistributedSampler | None:
    """Each process's slice of an evaluation set, none padded in (Lightning's); None alone."""
    if world_size() == 1:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


IMBALANCE_RATIO = 4  # largest class / smallest: a binary set's minority at 20%, where Google's
# Machine Learning Crash Course ("Imbalanced datasets") begins "moderate" imbalance (1% to 20%)


def class_accuracies(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict:
    """Per-class accuracy (recall) and balanced accuracy of (N,) predicted and true class indices,
    and whether the classes of targets are imbalanced (imbalanced):

    {"class_counts": [int] * num_classes, "imbalanced": bool, "per_class_acc": [float or None],
    "balanced_acc": float}. A class absent from targets has no accuracy (None) and is left out of
    the balanced accuracy, the mean of the others (scikit-learn's balanced_accuracy_score).
    On several processes, gather predictions and targets first: this counts what it is given.
    """
    counts = torch.bincount(targets, minlength=num_classes)
    per_class = multiclass_accuracy(predictions, targets, num_classes, average="none")
    present = counts > 0
    return {
        "class_counts": counts.tolist(),
        "imbalanced": imbalanced(counts.tolist()),
        "per_class_acc": [
            acc if seen else None
            for acc, seen in zip(per_class.tolist(), present.tolist(), strict=True)
        ],
        "balanced_acc": per_class[present].mean().item(),
    }


def imbalanced(class_counts: list[int]) -> bool:
    """Whether the largest class holds at least IMBALANCE_RATIO times the images of the smallest
    (classes with no image left out): there plain accuracy rewards answering the large class."""
    held = [count for count in class_counts if count > 0]
    return len(held) > 1 and max(held) >= IMBALANCE_RATIO * min(held)


@torch.inference_mode()
def compute_accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    """The fraction of images classified right, exact across processes (torchmetrics sums)."""
    model.eval()
    device = next(model.parameters()).device
    accuracy = MulticlassAccuracy(model.heads.head.out_features, average="micro").to(device)
    for features, targets in loader:
        accuracy.update(model(features.to(device)).argmax(dim=1), targets.to(device))
    return accuracy.compute().item()


@torch.inference_mode()
def accuracy_and_classes(model: torch.nn.Module, loader: DataLoader) -> dict:
    """{"test_acc": the fraction of images classified right, "test_classes": class_accuracies of
    the same predictions}, in one pass over the test set; with several processes, every process's
    predictions and targets are gathered first, so both are exact for the whole set."""
    model.eval()
    device = next(model.parameters()).device
    predictions, targets = [], []
    for features, labels in loader:
        predictions.append(model(features.to(device)).argmax(dim=1).cpu())
        targets.append(labels.cpu())
    predictions, targets = torch.cat(predictions), torch.cat(targets)
    if world_size() > 1:
        gathered = [None] * world_size()
        dist.all_gather_object(gathered, (predictions, targets))
        predictions = torch.cat([pair[0] for pair in gathered])
        targets = torch.cat([pair[1] for pair in gathered])
    classes = class_accuracies(predictions, targets, model.heads.head.out_features)
    return {"test_acc": (predictions == targets).double().mean().item(), "test_classes": classes}
