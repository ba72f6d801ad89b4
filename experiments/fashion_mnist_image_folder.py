"""Write Fashion-MNIST as an image folder: 70,000 real images, offline, from a Debian package.

Debian's package dataset-fashion-mnist installs Zalando's four gzipped idx files (60,000 training
and 10,000 test images, 28x28 grey, 10 classes) in /usr/share/datasets/fashion-mnist/. This
gunzips them into a temporary folder, reads them with torchvision's FashionMNIST (never
downloading), and writes 8-bit grey PNGs in FOLDER/train/<class>/ and FOLDER/test/<class>/: a
class-balanced training subset drawn with a fixed seed (default 1,000 per class) and the full test
set. Every numbered script reads it with --data-dir like any user's images:

    sudo apt-get install dataset-fashion-mnist
    python experiments/fashion_mnist_image_folder.py data/fashion-mnist
    python 04_fabric_bf16true.py --quick --data-dir data/fashion-mnist --epochs 2
"""

import argparse
import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import FashionMNIST

PACKAGE_FOLDER = Path("/usr/share/datasets/fashion-mnist")  # from `dpkg -L dataset-fashion-mnist`
SUBSET_SEED = 0


def folder_name(label: str) -> str:
    """A class name as a folder name: "T-shirt/top" becomes "T-shirt_top", spaces stay."""
    return label.replace("/", "_")


def balanced_subset(targets: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` images of every class, drawn without replacement, in index order.

    targets: (N,) integer labels. Errors: ValueError when a class has fewer than `per_class`.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in targets.unique().tolist():
        indices = (targets == label).nonzero().flatten()
        if len(indices) < per_class:
            raise ValueError(f"class {label} has {len(indices)} images, fewer than {per_class}")
        order = torch.randperm(len(indices), generator=generator)
        chosen.append(indices[order[:per_class]])
    return torch.cat(chosen).sort().values


def write_fashion_mnist(
    folder: Path, source: Path, per_class: int, seed: int = SUBSET_SEED
) -> dict[str, int]:
    """Write the PNGs from the gzipped idx files in `source`; return the images per split."""
    counts = {}
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "FashionMNIST" / "raw"  # where torchvision's FashionMNIST looks
        raw.mkdir(parents=True)
        for name, _md5 in FashionMNIST.resources:
            with gzip.open(source / name) as packed, open(raw / Path(name).stem, "wb") as plain:
                shutil.copyfileobj(packed, plain)
        for split in ("train", "test"):
            data = FashionMNIST(root, train=split == "train", download=False)
            chosen = torch.arange(len(data.targets))
            if split == "train":
                chosen = balanced_subset(data.targets, per_class, seed)
            for index in chosen.tolist():
                label = data.classes[data.targets[index]]
                class_folder = folder / split / folder_name(label)
                class_folder.mkdir(parents=True, exist_ok=True)
                pixels = data.data[index].numpy()  # (28, 28) uint8
                Image.fromarray(pixels, mode="L").save(class_folder / f"{index:05d}.png")
            counts[split] = len(chosen)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write train/ and test/")
    parser.add_argument(
        "--per-class",
        type=int,
        default=1000,
        help="training images per class (default 1000: 10,000 of the 60,000)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=PACKAGE_FOLDER,
        help=f"folder of the four .gz files (default {PACKAGE_FOLDER})",
    )
    args = parser.parse_args()
    missing = [name for name, _md5 in FashionMNIST.resources if not (args.source / name).is_file()]
    if missing:
        sys.exit(
            f"error: {args.source / missing[0]} is missing; install Fashion-MNIST with "
            "`sudo apt-get install dataset-fashion-mnist`, or name its folder with --source"
        )
    if args.folder.exists() and any(args.folder.iterdir()):
        sys.exit(f"error: {args.folder} is not empty; name a new folder, or delete this one first")
    counts = write_fashion_mnist(args.folder, args.source, args.per_class)
    print(f"Wrote {counts['train']} training and {counts['test']} test images to {args.folder}")


if __name__ == "__main__":
    main()
