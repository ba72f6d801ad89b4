"""Shared fixtures: the quick runs of every numbered script, and a generated image-folder tree."""

import contextlib
import io
import json
import os
import runpy
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# One thread per process: the quick runs go on beside the other tests, and on 2 cores several
# processes of 2 threads each spend their time waiting for each other.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
SCRIPTS = sorted(ROOT.glob("[0-9][0-9]*_*.py"))  # 00 to 05, and the lettered fixes
# one epoch of 70 steps: past 95% accuracy, and cheap; --track-updates names the changed weights
QUICK_FLAGS = ["--quick", "--epochs", "1", "--track-updates"]
# what the README's "Copy this into your project" lists: a script and every module it imports
COPY_THIS = [
    "04_fabric_bf16true.py",
    "errors.py",
    "flags.py",
    "hardware.py",
    "image_files.py",
    "local_utilities.py",
    "matmul_ceiling.py",
    "measurement.py",
    "model_weights.py",
    "nan_check.py",
    "processes.py",
    "run_record.py",
    "step_timer.py",
]
sys.path.insert(0, str(ROOT))

import measurement as measurement_module  # noqa: E402
from errors import InputError  # noqa: E402
from flags import parse_args  # noqa: E402
from local_utilities import get_dataloaders  # noqa: E402
from matmul_ceiling import Ceiling  # noqa: E402
from measurement import Measurement  # noqa: E402
from model_weights import model_weights  # noqa: E402

# The record a script appends to --results: every field and the types its value may have. The
# runner reads these (benchmark.RECORD_KEYS); the tests of records check against this.
RECORD_SCHEMA = {
    "script": str,
    "precision": str,
    "precision_requested": str,
    "device": str,
    "device_name": str,
    "world_size": int,
    "model": str,
    "data": str,
    "val_split": str,
    "test_split": str,
    "epochs": int,
    "batch_size": int,
    "warmup_steps": int,
    "learning_rate": float,
    "seed": int,
    "save": (str, type(None)),
    "matmul_precision": str,
    "steps": int,
    "train_images": int,
    "train_time_s": float,
    "first_step_s": (float, type(None)),
    "images_per_s": (float, type(None)),
    "seconds_per_step": (float, type(None)),
    "data_wait_share": (float, type(None)),
    "mfu": (float, type(None)),
    "flops_per_s": (float, type(None)),
    "flops_per_image": int,
    "peak_memory_gb": float,
    "memory_measure": str,
    "weight_dtype": str,
    "matmul_output_dtype": str,
    "train_acc": (float, type(None)),
    "val_acc": (float, type(None)),
    "test_acc": (float, type(None)),
    "balanced_test_acc": (float, type(None)),
    "per_class_test_acc": (list, type(None)),
    "test_class_counts": (list, type(None)),
    "imbalanced": (bool, type(None)),
    "diverged": bool,
    "diverged_at": (str, type(None)),
    "changed_share": (dict, type(None)),
    "matmul_ceilings": dict,
    "mfu_peak": dict,
    "versions": dict,
}


def schema_problems(record):
    """What is wrong with a record against RECORD_SCHEMA: fields missing or unknown, and values of
    the wrong type; an empty list for a well-formed record."""
    problems = [f"missing {key}" for key in RECORD_SCHEMA if key not in record]
    problems += [f"unknown {key}" for key in record if key not in RECORD_SCHEMA]
    for key, types in RECORD_SCHEMA.items():
        if key in record and not isinstance(record[key], types):
            problems.append(f"{key} is {record[key]!r}")
    return problems


# matmul ceilings as a CPU without bfloat16 units measures them: bfloat16 at a tenth of float32
SLOW_BF16_CEILINGS = {
    torch.float32: Ceiling(flops_per_s=1e10, size=1024),
    torch.bfloat16: Ceiling(flops_per_s=1e9, size=256),
    torch.float16: Ceiling(flops_per_s=1e9, size=256),
}


def measured(precision, device, batch_size=32, ceilings=None):
    """A Measurement of --quick's small model on generated data: 3 epochs of 5 steps, with these
    matmul ceilings (default SLOW_BF16_CEILINGS) in place of the probe's."""
    if ceilings is None:
        ceilings = SLOW_BF16_CEILINGS
    with mock.patch.object(measurement_module, "measure_ceilings", return_value=ceilings):
        return Measurement(
            precision,
            device,
            5,
            model="vit_tiny_32",
            epochs=3,
            batch_size=batch_size,
            warmup_steps=5,
            learning_rate=1e-3,
            seed=123,
            num_classes=10,
            source="generated",
            val_split="validation split",
            test_split="test split",
        )


def dataloaders(argv):
    """get_dataloaders for these flags, called as the scripts call it."""
    args = parse_args(argv)
    return get_dataloaders(
        args.data, args.model, args.batch_size, args.seed, args.max_steps, args.num_workers
    )


def refusal(argv):
    """The sentence ("error: ...") with which setting up the data for these flags stops, as a
    script prints it (InputError)."""
    with pytest.raises(InputError) as refused:
        dataloaders(argv)
    return f"error: {refused.value}"


def weights_for(argv):
    """model_weights for these flags, called as the scripts call it."""
    args = parse_args(argv)
    return model_weights(args.model, args.weights, args.data_dir)


def run_script(script, *flags, cwd, threads=None, environment=None):
    """Run a numbered script as a user would: (exit code, stdout, stderr, its results records)."""
    results = Path(cwd) / f"{Path(script).stem}.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(environment or {}))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.run(
        [sys.executable, str(ROOT / script), *flags, "--results", str(results)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    records = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    return process.returncode, process.stdout, process.stderr, records


def refusal_in_process(script, *flags):
    """Run a script in this process, as `python SCRIPT FLAGS` does, until it stops before training:
    (exit status, stderr); its SIGTERM handler is put back afterwards. For refusals only: a process
    start (importing Lightning) costs about 5 s, this costs nothing."""
    argv, stderr, on_sigterm = sys.argv, io.StringIO(), signal.getsignal(signal.SIGTERM)
    sys.argv = [str(ROOT / script), *flags]
    try:
        with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, on_sigterm)
    code = stop.value.code  # sys.exit("message") prints the message and exits with status 1
    return (
        (1, stderr.getvalue() + code + "\n") if isinstance(code, str) else (code, stderr.getvalue())
    )


def run_in_process(script):
    """Run a script in this process as `python SCRIPT` with sys.argv as it is: its exit status.
    Its SIGTERM handler is put back afterwards."""
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
    return stop.value.code


BACKGROUND = {}  # name: the Future of a run that pytest_collection_finish started


def pytest_collection_finish(session):
    """Start the runs that session fixtures need as soon as the tests are collected, two at a
    time, beside the tests that come first, which mostly leave the second core idle: the quick
    runs (04c, the longest, first) and the run on an odd image folder."""
    needed = {name for item in session.items for name in item.fixturenames}
    pool = ThreadPoolExecutor(max_workers=2)
    if "quick_runs" in needed:
        workdir = Path(tempfile.mkdtemp(prefix="quick_runs_"))
        logs = {"TORCH_LOGS": "graph_breaks,recompiles"}  # only 04c compiles: only it logs
        names = sorted((script.name for script in SCRIPTS), key=lambda name: "compile" not in name)
        for name in names:
            BACKGROUND[name] = pool.submit(
                run_script, name, *QUICK_FLAGS, cwd=workdir, threads=1, environment=logs
            )
    if "odd_folder_run" in needed:
        BACKGROUND["odd folder"] = pool.submit(run_on_an_odd_folder)
    pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def quick_runs():
    """Every numbered script's short --quick run, on one thread each, dynamo logging graph breaks
    and recompilations to stderr: {file name: (exit code, stdout, stderr, records)}."""
    return {script.name: BACKGROUND[script.name].result() for script in SCRIPTS}


def write_image_tree(root, splits=("train", "test"), classes=("cat", "dog", "frog"), per_class=12):
    """PNG files under root/<split>/<class>/, each class its own colour under noise, so that a
    model can learn them."""
    generator = torch.Generator().manual_seed(0)
    colours = {name: torch.rand(3, 1, 1, generator=generator) for name in classes}
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                pixels = (colours[name] + 0.1 * torch.randn(3, 40, 40, generator=generator)).clamp(
                    0, 1
                )
                image = Image.fromarray((pixels.permute(1, 2, 0) * 255).to(torch.uint8).numpy())
                image.save(root / split / name / f"{index}.png")
    return root


@pytest.fixture
def image_tree(tmp_path):
    return write_image_tree(tmp_path / "images")


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits say class 0 for even features and class 1 for odd ones, with
    a ViT's 2-class head."""

    def __init__(self):
        super().__init__()
        self.heads = torch.nn.Sequential()
        self.heads.head = torch.nn.Linear(1, 2)

    def forward(self, features):
        odd = features.remainder(2)
        return torch.stack([1 - odd, odd], dim=1)


# ------------------------------------------------- pictures as phones and instruments store them


SIDES = {  # EXIF 2.3, tag 274 (Orientation): the picture's sides where the stored 0th row and
    1: ("top", "left"),  # 0th column lie; a viewer turns the stored pixels to put them there
    2: ("top", "right"),
    3: ("bottom", "right"),
    4: ("bottom", "left"),
    5: ("left", "top"),
    6: ("right", "top"),
    7: ("right", "bottom"),
    8: ("left", "bottom"),
}


def stored_pixels(upright, orientation):
    """The pixels a camera stores for an upright (H, W, 3) picture, beside this orientation tag."""
    row, column = SIDES[orientation]
    pixels = upright
    if "right" in (row, column):
        pixels = pixels[:, ::-1]
    if "bottom" in (row, column):
        pixels = pixels[::-1]
    if row in ("left", "right"):  # the stored rows run along the picture's columns
        pixels = pixels.transpose(1, 0, 2)
    return np.ascontiguousarray(pixels)


def exif_block(*entries, byte_order=b"MM"):
    """An EXIF block as a JPEG, PNG or WebP file holds it: a big-endian TIFF header and one IFD of
    (tag, type, count, 4 value bytes) entries."""
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(">HHI", tag, kind, count) + value
    return b"Exif\0\0" + byte_order + b"\0*" + struct.pack(">I", 8) + ifd + bytes(4)


def orientation_entry(value):
    return (0x0112, 3, 1, struct.pack(">HH", value, 0))  # type 3: SHORT


def band_picture(label, generator):
    """(32, 48) gray picture of class 0 ('top') or 1 ('bottom'): a dark band across the top or
    bottom third, under noise; only where the band sits tells the classes apart."""
    pixels = 200 + 20 * torch.randn(32, 48, generator=generator)
    rows = slice(0, 11) if label == 0 else slice(21, 32)
    pixels[rows] -= 150
    return pixels.clamp(0, 255).to(torch.uint8).numpy()


def write_band_tree(root, count=16, copy=None):
    """train/: phone-style JPEGs, stored turned by orientations 2 to 8 in turn and tagged to be
    turned back; val/: float TIFFs (0..1); test/: 8-bit PNGs. Each upright picture also goes to
    copy/ (when given) as an 8-bit PNG."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val", "test"):
        for label, name in enumerate(("top", "bottom")):
            for folder in (root, copy):
                if folder:
                    (folder / split / name).mkdir(parents=True)
            for index in range(count):
                upright = band_picture(label, generator)
                path = root / split / name / str(index)
                if copy:
                    Image.fromarray(upright).save(copy / split / name / f"{index}.png")
                if split == "train":
                    orientation = 2 + index % 7
                    stored = stored_pixels(upright[..., None], orientation)[..., 0]
                    exif = exif_block(orientation_entry(orientation))
                    Image.fromarray(stored).save(f"{path}.jpg", quality=95, exif=exif)
                elif split == "val":
                    Image.fromarray(upright.astype(np.float32) / 255).save(f"{path}.tif")
                else:
                    Image.fromarray(upright).save(f"{path}.png")
    return root


def write_odd_folder(root):
    """Band pictures (band_picture) as users' folders hold them. train/: per class 8 phone JPEGs
    stored turned and tagged with EXIF orientations 2 to 8 (then 2), and 8 float TIFFs (0..1);
    val/: per class 6 16-bit grey PNGs (level x 257). No test/: val/ is the test set."""
    generator = torch.Generator().manual_seed(1)
    for label, name in enumerate(("top", "bottom")):
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True)
        for index in range(8):
            orientation = 2 + index % 7
            stored = stored_pixels(band_picture(label, generator)[..., None], orientation)[..., 0]
            exif = exif_block(orientation_entry(orientation))
            Image.fromarray(stored).save(root / "train" / name / f"{index}.jpg", exif=exif)
            tiff = Image.fromarray(band_picture(label, generator).astype(np.float32) / 255)
            tiff.save(root / "train" / name / f"{index}.tif")
        for index in range(6):
            levels = band_picture(label, generator).astype(np.uint16) * 257
            Image.fromarray(levels).save(root / "val" / name / f"{index}.png")
    return root


def run_on_an_odd_folder():
    """The one training run on a user's kind of image folder (write_odd_folder), from a project
    folder that holds only COPY_THIS, with two loader workers, its --results a link to a read-only
    file that holds an earlier record: {"run": (exit code, stdout, stderr, records), "project",
    "link", "target", "inode"}."""
    workdir = Path(tempfile.mkdtemp(prefix="odd_folder_"))
    project = workdir / "my_project"
    project.mkdir()
    for name in COPY_THIS:
        shutil.copy(ROOT / name, project / name)
    target = workdir / "kept" / "results.jsonl"
    target.parent.mkdir()
    target.write_text('{"script": "an earlier run"}\n')
    target.chmod(0o444)
    link = workdir / "04_fabric_bf16true.jsonl"  # the --results path that run_script passes
    link.symlink_to(target)
    inode = target.stat().st_ino
    tree = write_odd_folder(workdir / "images")
    flags = ["--quick", "--data-dir", str(tree), "--batch-size", "4", "--epochs", "2"]
    run = run_script(project / COPY_THIS[0], *flags, "--num-workers", "2", cwd=workdir, threads=1)
    return dict(run=run, project=project, link=link, target=target, inode=inode)


@pytest.fixture(scope="session")
def odd_folder_run():
    """run_on_an_odd_folder's result, started when the tests were collected."""
    return BACKGROUND["odd folder"].result()
