"""Write scikit-learn's handwritten digits as an image folder: real images, offline.

The data set ships inside scikit-learn (1,797 scans of 8x8 pixels, 16 grey levels, from the UCI
"Optical Recognition of Handwritten Digits" set), so it needs no download. This writes them as
8-bit grey PNGs in FOLDER/train/<digit>/ and FOLDER/test/<digit>/, a stratified 80/20 split fixed
by a seed, which every numbered script reads with --data-dir like any user's images:

    pip install scikit-learn
    python experiments/digits_image_folder.py data/digits
    python 04_fabric_bf16true.py --quick --data-dir data/digits --epochs 10
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_SHARE = 0.2
SPLIT_SEED = 0


def write_digits(folder: Path) -> dict[str, int]:
    """Write the PNGs; return the number of images per split. Levels 0..16 become 0..255."""
    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)  # (1797, 8, 8)
    indices = np.arange(len(pixels))
    train, test = train_test_split(
        indices, test_size=TEST_SHARE, stratify=digits.target, random_state=SPLIT_SEED
    )
    for split, chosen in (("train", train), ("test", test)):
        for index in chosen:
            class_folder = folder / split / str(digits.target[index])
            class_folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(class_folder / f"{index:04d}.png")
    return {"train": len(train), "test": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write train/ and test/")
    folder = parser.parse_args().folder
    if folder.exists() and any(folder.iterdir()):
        sys.exit(f"error: {folder} is not empty; name a new folder, or delete this one first")
    counts = write_digits(folder)
    print(f"Wrote {counts['train']} training and {counts['test']} test images to {folder}")


if __name__ == "__main__":
    main()
