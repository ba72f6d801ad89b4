"""experiments/fashion_mnist_image_folder.py on a small fake of the package's four idx files."""

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WRITER = ROOT / "experiments" / "fashion_mnist_image_folder.py"
CLASS_FOLDERS = [
    "Ankle boot",
    "Bag",
    "Coat",
    "Dress",
    "Pullover",
    "Sandal",
    "Shirt",
    "Sneaker",
    "T-shirt_top",
    "Trouser",
]


def write_idx(source: Path, prefix: str, per_class: int) -> np.ndarray:
    """Write PREFIX-images-idx3-ubyte.gz and PREFIX-labels-idx1-ubyte.gz as Zalando ships them
    (big-endian header: magic 2051 or 2049, counts, then one byte per pixel or label); labels
    0..9 in turn, image i filled with the value i. Return the images, (N, 4, 4) uint8."""
    labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
    images = np.broadcast_to(
        np.arange(len(labels), dtype=np.uint8)[:, None, None], (len(labels), 4, 4)
    )
    with gzip.open(source / f"{prefix}-images-idx3-ubyte.gz", "wb") as file:
        file.write(struct.pack(">iiii", 2051, len(images), 4, 4) + images.tobytes())
    with gzip.open(source / f"{prefix}-labels-idx1-ubyte.gz", "wb") as file:
        file.write(struct.pack(">ii", 2049, len(labels)) + labels.tobytes())
    return images


def run_writer(*arguments):
    return subprocess.run(
        [sys.executable, str(WRITER), *map(str, arguments)], capture_output=True, text=True
    )


def test_writes_a_balanced_training_subset_and_the_whole_test_set(tmp_path):
    source = tmp_path / "package"
    source.mkdir()
    train_images = write_idx(source, "train", per_class=3)
    write_idx(source, "t10k", per_class=2)
    folder = tmp_path / "fashion"
    process = run_writer(folder, "--source", source, "--per-class", 2)
    assert process.returncode == 0, process.stderr
    assert process.stdout == f"Wrote 20 training and 20 test images to {folder}\n"
    for split in ("train", "test"):
        assert sorted(path.name for path in (folder / split).iterdir()) == CLASS_FOLDERS
        for class_folder in (folder / split).iterdir():
            assert len(list(class_folder.glob("*.png"))) == 2
    # the file name is the image's index in the idx file; its pixels must be that image's
    for png in (folder / "train" / "T-shirt_top").glob("*.png"):
        index = int(png.stem)
        assert index % 10 == 0  # label 0 is "T-shirt/top"
        assert np.array_equal(np.asarray(Image.open(png)), train_images[index])


def test_missing_package_says_how_to_install_it(tmp_path):
    process = run_writer(tmp_path / "fashion", "--source", tmp_path)
    assert process.returncode == 1
    assert process.stderr == (
        f"error: {tmp_path / 'train-images-idx3-ubyte.gz'} is missing; install Fashion-MNIST with "
        "`sudo apt-get install dataset-fashion-mnist`, or name its folder with --source\n"
    )
    assert not (tmp_path / "fashion").exists()
