"""Real image folders, result files and flags: every problem is found before training and named
in one sentence."""

import io
import json
import multiprocessing
import shutil
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from conftest import ROOT, refusal_in_process, run_script, write_image_tree
from PIL import Image

import flags
import local_utilities
from flags import parse_args
from image_files import UnreadableImage, check_images, load_rgb, say_unreadable_image
from local_utilities import get_dataloaders
from run_record import append_record


def refusal(argv, capsys, usage=False):
    """Set up the data in-process as a script does; return the last line it printed on stderr
    before exiting with status 2: its only line, or the one under argparse's usage line."""
    with pytest.raises(SystemExit) as stopped:
        get_dataloaders(parse_args(argv))
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 or usage, lines
    return lines[-1]


def damaged_pixels(png):
    """The PNG with its compressed pixels scrambled and their checksum fixed: the header and the
    end marker stay whole."""
    start = png.index(b"IDAT")
    length = struct.unpack(">I", png[start - 4 : start])[0]
    data = bytearray(png[start + 4 : start + 4 + length])
    for index in range(10, length - 10, 7):
        data[index] ^= 0x5A
    checksum = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)))
    return png[: start + 4] + bytes(data) + checksum + png[start + 8 + length :]


class Samples:
    """The part of an ImageFolder that check_images reads."""

    def __init__(self, *paths):
        self.samples = [(str(path), 0) for path in paths]


# ---------------------------------------------------------------- image folders: what is data


def test_hidden_entries_are_not_data_and_each_split_is_counted(tmp_path, capsys):
    tree = write_image_tree(
        tmp_path / ".cache" / "images", classes=("cat", "dog"), per_class=3
    )  # a dot folder above
    shutil.copytree(
        tree / "train" / "cat", tree / "train" / ".ipynb_checkpoints"
    )  # copies of images: not a class
    (tree / "test" / ".ipynb_checkpoints").mkdir()
    (tree / "test" / ".ipynb_checkpoints" / "notes.txt").write_text(
        "not an image, in a hidden folder"
    )
    (tree / "train" / "cat" / "._0.png").write_bytes(
        b"\x00\x05\x16\x07 macOS metadata, not an image"
    )
    (tree / "train" / "cat" / ".hidden.png").write_bytes(b"not an image")
    (tree / "train" / "dog" / ".git").mkdir()
    (tree / "train" / "dog" / ".git" / "blob.png").write_bytes(b"not an image")
    (tree / "train" / "dog" / "readme.txt").write_text("not an image extension: skipped")
    (tree / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    train_loader, val_loader, test_loader, data = get_dataloaders(
        parse_args(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    )
    assert data.num_classes == 2 and test_loader.dataset.classes == ["cat", "dog"]
    assert (len(train_loader.dataset) + len(val_loader.dataset), len(test_loader.dataset)) == (6, 6)
    printed = capsys.readouterr().out
    assert "train/: 6 images in 2 classes {'cat': 3, 'dog': 3}" in printed
    assert "test/: 6 images in 2 classes {'cat': 3, 'dog': 3}" in printed


def test_an_empty_class_folder_is_named_with_what_to_do(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    for image in (tree / "test" / "dog").iterdir():
        image.unlink()
    (tree / "test" / "dog" / ".DS_Store").write_bytes(b"\x00")  # hidden: still empty
    line = refusal(["--quick", "--data-dir", str(tree)], capsys)
    assert line.startswith(
        f"error: --data-dir class folder {tree / 'test' / 'dog'} holds no images (.jpg, "
    )
    assert line.endswith("; add images to it, or delete that class from every split")


@pytest.mark.parametrize("classes", [("cat",), ()])
def test_fewer_than_two_class_folders_are_refused(tmp_path, capsys, classes):
    tree = write_image_tree(tmp_path / "images", classes=classes, per_class=2)
    for split in ("train", "test"):  # images lying in the split folder itself belong to no class
        (tree / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tree / split / "loose.png")
    assert refusal(["--quick", "--data-dir", str(tree)], capsys) == (
        f"error: --data-dir {tree}/train/ has {len(classes)} class folder(s); a classifier needs "
        "at least two: train/<class>/<images>"
    )


# ---------------------------------------------------------------- image folders: unreadable files


def image_bytes(image_format):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


UNREADABLE = {  # file name: its bytes
    "notes.jpg": b"some text saved with an image's name\n",
    "empty.png": b"",
    "cut.png": image_bytes("PNG")[:3000],  # an interrupted copy: no IEND chunk
    "cut.jpg": image_bytes("JPEG")[:800],  # no end-of-image marker
}


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("name", UNREADABLE)
def test_an_unreadable_image_in_any_split_is_named_before_training(tmp_path, capsys, name, split):
    tree = write_image_tree(
        tmp_path / "images", splits=("train", "val", "test"), classes=("cat", "dog"), per_class=2
    )
    bad = tree / split / "dog" / name
    bad.write_bytes(UNREADABLE[name])
    line = refusal(["--quick", "--data-dir", str(tree), "--batch-size", "2"], capsys)
    assert line.startswith(f"error: cannot read the image {bad} (") and line.endswith(
        "); delete it or copy it again"
    )


@pytest.mark.parametrize(
    "limit", [6000, 4000]
)  # 10,000 pixels: Pillow warns over the limit, raises over twice it
def test_an_image_over_the_decompression_bomb_limit_is_named_with_what_to_do(
    tmp_path, capsys, monkeypatch, limit
):
    tree = write_image_tree(
        tmp_path / "images", classes=("cat", "dog"), per_class=2
    )  # 40x40 = 1,600 pixels each
    big = tree / "test" / "cat" / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    line = refusal(["--quick", "--data-dir", str(tree), "--batch-size", "2"], capsys)
    assert line.startswith(f"error: the image {big} is over Pillow's decompression-bomb limit (")
    assert line.endswith("); downscale it")


def test_files_that_decode_are_accepted_whatever_their_name_or_trailer(tmp_path):
    (tmp_path / "png_named.jpg").write_bytes(
        image_bytes("PNG")
    )  # the end marker follows the content, not the name
    (tmp_path / "motion_photo.jpg").write_bytes(
        image_bytes("JPEG") + b"\x00" * 4096 + b"MotionPhoto_Data"
    )
    (tmp_path / "photo.webp").write_bytes(image_bytes("WEBP"))
    paths = sorted(tmp_path.iterdir())
    check_images(Samples(*paths))  # no SystemExit
    assert [load_rgb(path).size for path in paths] == [(40, 40)] * 3


def test_damaged_pixel_data_passes_the_header_check_and_is_named_when_decoded(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(damaged_pixels(image_bytes("PNG")))
    check_images(Samples(bad))  # the header and the end marker are whole: only decoding finds it
    with pytest.raises(
        OSError, match=f"cannot read the image {bad} .*; delete it or copy it again"
    ):
        load_rgb(bad)


def tree_with_damaged_pixels(tmp_path):
    """Two classes of 4 PNGs; one of them scrambled inside its pixel data (damaged_pixels)."""
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=4)
    bad = tree / "train" / "cat" / "0.png"
    bad.write_bytes(damaged_pixels(bad.read_bytes()))
    return tree, bad


def test_damaged_pixel_data_found_in_the_training_process_is_said_in_one_sentence(
    tmp_path, capsys, monkeypatch
):
    tree, bad = tree_with_damaged_pixels(tmp_path)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # what --data-dir replaces
    flags = ["--quick", "--data-dir", str(tree), "--batch-size", "2", "--num-workers", "0"]
    train_loader, val_loader, _, _ = get_dataloaders(parse_args(flags))  # passes the check
    assert sys.excepthook is say_unreadable_image
    with pytest.raises(UnreadableImage) as raised:
        list(train_loader) + list(val_loader)  # the image lands in one of them
    capsys.readouterr()
    sys.excepthook(UnreadableImage, raised.value, raised.value.__traceback__)
    (line,) = capsys.readouterr().err.splitlines()  # no traceback
    assert line.startswith(f"error: cannot read the image {bad} (")
    assert line.endswith("); delete it or copy it again")


def test_damaged_pixel_data_found_by_a_loader_worker_ends_the_run_with_one_sentence(tmp_path):
    tree, bad = tree_with_damaged_pixels(tmp_path)
    flags = ["--quick", "--data-dir", str(tree), "--batch-size", "2", "--num-workers", "2"]
    returncode, stdout, stderr, _ = run_script(
        "01_fabric_baseline.py", *flags, cwd=tmp_path, threads=1
    )
    assert "train/: 8 images in 2 classes" in stdout  # it passed the check before training
    (line,) = stderr.splitlines()  # no traceback
    assert returncode == 1 and line.startswith(f"error: cannot read the image {bad} (")
    assert line.endswith("); delete it or copy it again")


# ---------------------------------------------------------------- 16-bit images, layouts, sizes


def test_16bit_grayscale_loads_as_the_same_pixels_saved_in_8bit(tmp_path):
    levels = np.array([[8000, 40000]] * 3, dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "16bit.png")
    Image.fromarray(levels.astype(np.int32)).save(
        tmp_path / "32bit.tif"
    )  # mode "I": 16-bit PNGs in older Pillow
    Image.fromarray(np.array([[31, 156]] * 3, dtype=np.uint8)).save(
        tmp_path / "8bit.png"
    )  # round(level / 257)
    assert (
        Image.open(tmp_path / "16bit.png").mode == "I;16"
        and Image.open(tmp_path / "32bit.tif").mode == "I"
    )
    eight_bit = np.asarray(load_rgb(tmp_path / "8bit.png"))
    assert eight_bit[0].tolist() == [[31, 31, 31], [156, 156, 156]]
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "16bit.png")), eight_bit)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "32bit.tif")), eight_bit)


def test_train_and_val_without_test_trains_and_says_which_folder_is_which(odd_folder_run):
    returncode, stdout, stderr, records = odd_folder_run["run"]
    assert returncode == 0, stderr
    split = "a seeded 10% of each class of train/ (4 of 32 images)"
    assert f"Validation: {split} | test: val/" in stdout
    assert "Used for training: 28 images {'bottom': 14, 'top': 14}" in stdout
    assert "Used for validation: 4 images {'bottom': 2, 'top': 2}" in stdout
    assert (records[-1]["val_split"], records[-1]["test_split"]) == (split, "val/")


def test_a_results_link_to_a_read_only_file_stays_a_link_and_the_file_keeps_its_mode(
    odd_folder_run,
):
    link, target = odd_folder_run["link"], odd_folder_run["target"]
    assert odd_folder_run["run"][0] == 0 and link.is_symlink() and link.resolve() == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o444  # appended to, not replaced
    assert target.stat().st_ino == odd_folder_run["inode"]
    records = odd_folder_run["run"][3]
    assert [record["script"] for record in records] == ["an earlier run", "04_fabric_bf16true.py"]


@pytest.mark.parametrize(
    "cats, dogs, validation, largest", [(3, 2, 2, 3), (2, 1, 1, 2)]
)  # from each class, 10% of train/ rounded up is validation, never a class's last image
def test_a_training_split_smaller_than_a_batch_names_the_largest_batch_size_that_works(
    tmp_path, capsys, cats, dogs, validation, largest
):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=cats)
    for image in sorted((tree / "train" / "dog").iterdir())[dogs:]:
        image.unlink()
    flags = ["--quick", "--data-dir", str(tree)]
    assert refusal(flags, capsys) == (
        f"error: the training split of {tree}/train/ (validation: a seeded 10% of each class of "
        f"train/ ({validation} of {cats + dogs} images)) has {largest} images, fewer than one "
        f"batch of 32 x 1 device(s); add images, or use --batch-size {largest} or less"
    )
    assert (
        len(get_dataloaders(parse_args([*flags, "--batch-size", str(largest)]))[0]) == 1
    )  # and that size works


def test_a_batch_larger_than_the_generated_training_split_is_refused_with_its_size(capsys):
    assert refusal(["--quick", "--batch-size", "4096"], capsys) == (
        "error: the training split has 2250 images, fewer than one batch of 4096 x 1 device(s); "
        "add images, or use --batch-size 2250 or less"
    )


def test_a_training_split_with_fewer_images_than_devices_does_not_suggest_batch_size_0(
    tmp_path, capsys, monkeypatch
):
    tree = write_image_tree(
        tmp_path / "images", classes=("cat", "dog"), per_class=2
    )  # 2 training images, 2 validation
    monkeypatch.setattr(local_utilities, "world_size", lambda: 3)
    line = refusal(["--quick", "--data-dir", str(tree)], capsys)
    assert line.endswith("has 2 images, fewer than one batch of 32 x 3 device(s); add images")


def test_a_single_image_in_train_is_refused_for_its_empty_class_not_with_batch_size_0(
    tmp_path, capsys
):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=1)
    (tree / "train" / "dog" / "0.png").unlink()
    line = refusal(["--quick", "--data-dir", str(tree)], capsys)
    assert line.startswith(
        f"error: --data-dir class folder {tree / 'train' / 'dog'} holds no images"
    )
    assert "--batch-size" not in line


# ---------------------------------------------------------------- result files


def test_a_results_folder_that_does_not_exist_is_created_and_said(tmp_path, capsys):
    results = tmp_path / "new" / "deeper" / "results.jsonl"
    parse_args(["--quick", "--results", str(results)])  # accepted: the folder can be made
    assert not results.parent.exists()  # parsing the flags writes nothing
    append_record(results, {"script": "a"})
    assert results.read_text() == '{"script": "a"}\n'
    assert f"Creating the folder {results.parent} for --results" in capsys.readouterr().out


@pytest.mark.parametrize(
    "where, message",
    [
        ("", "--results {path} is a folder; name a file in it"),
        (
            "somefile.txt/results.jsonl",
            "--results {path} cannot be written: {tmp_path}/somefile.txt is not a writable folder",
        ),  # a file where a folder would have to be: no run can ever write it
    ],
)
def test_a_results_path_that_can_never_be_written_is_refused_before_training(
    tmp_path, capsys, where, message
):
    (tmp_path / "somefile.txt").write_text("a file\n")
    path = tmp_path / where
    assert refusal(["--quick", "--results", str(path)], capsys, usage=True).endswith(
        "error: " + message.format(path=path, tmp_path=tmp_path)
    )


def test_a_results_file_without_write_permission_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    results = tmp_path / "results.jsonl"
    results.write_text("")
    monkeypatch.setattr(
        flags.os, "access", lambda path, mode: False
    )  # what a user who is not root meets
    assert refusal(["--quick", "--results", str(results)], capsys, usage=True).endswith(
        f"error: --results {results} cannot be written: {results} is not a writable file"
    )


def append_fifty(path, writer):
    for index in range(50):
        append_record(
            path, {"writer": writer, "index": index, "padding": "x" * 10_000}
        )  # more than one write buffer


def test_concurrent_appends_keep_every_record_whole(tmp_path):
    path = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=append_fifty, args=(path, writer)) for writer in range(8)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]  # fails on a torn line
    assert len(records) == 400 and {(record["writer"], record["index"]) for record in records} == {
        (writer, index) for writer in range(8) for index in range(50)
    }
    assert list(tmp_path.iterdir()) == [path]  # no lock file left beside it


# ---------------------------------------------------------------- memory, accelerators


PEAK_WITHOUT_CLEAR_REFS = """
import sys
from pathlib import Path
import torch
import measurement
measurement.CLEAR_REFS = Path("/no/such/clear_refs")  # a system that cannot reset the peak RSS
cpu = torch.device("cpu")
baseline = measurement.reset_peak_memory(cpu)
block = torch.ones(100_000_000)  # 400 MB, every page written
del block
peak = measurement.peak_memory(cpu, baseline)[0]
print(baseline, peak, measurement.process_memory_bytes("VmHWM") / 1e9)
"""


def test_peak_memory_without_clear_refs_is_the_true_peak_in_gb():
    output = subprocess.run(
        [sys.executable, "-c", PEAK_WITHOUT_CLEAR_REFS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    baseline, reported, true_peak = output[0], float(output[1]), float(output[2])
    assert (
        baseline == "None" and true_peak > 0.4
    )  # the fallback: no baseline; the peak includes the 400 MB block
    assert abs(reported - true_peak) <= 0.2 * true_peak


@pytest.mark.parametrize(
    "script, accelerator", [("00_pytorch_baseline.py", "cuda"), ("02_fabric_16mixed.py", "mps")]
)
def test_a_missing_accelerator_is_refused_in_one_sentence_by_every_kind_of_script(
    tmp_path, script, accelerator
):
    if {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}[accelerator]:
        pytest.skip(f"this machine has {accelerator}")
    returncode, stderr = refusal_in_process(script, "--quick", "--accelerator", accelerator)
    assert returncode == 2 and stderr.splitlines()[-1] == (
        f"{script}: error: --accelerator {accelerator} was asked for, but this machine has none; "
        "use --accelerator cpu or auto"
    )
