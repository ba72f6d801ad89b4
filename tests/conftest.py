"""Shared fixtures: the quick runs of every numbered script, and a generated image-folder tree."""

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("[0-9][0-9]*_*.py"))  # 00 to 05, and the lettered fixes
COMPILED = ["04c_fabric_bf16true_compile.py"]  # compiling costs a minute: tested on its own
QUICK_SCRIPTS = [script for script in SCRIPTS if script.name not in COMPILED]
QUICK_FLAGS = ["--quick", "--epochs", "2"]  # 2 epochs of 70 steps: past 90% accuracy, and cheap
sys.path.insert(0, str(ROOT))


def run_script(script, *flags, cwd, threads=None):
    """Run a numbered script as a user would: (exit code, stdout, stderr, its results records)."""
    results = Path(cwd) / f"{Path(script).stem}.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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
    (exit status, stderr). For refusals only: a process start (importing Lightning) costs about
    5 s, this costs nothing."""
    argv, stderr = sys.argv, io.StringIO()
    sys.argv = [str(ROOT / script), *flags]
    try:
        with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = argv
    code = stop.value.code  # sys.exit("message") prints the message and exits with status 1
    return (
        (1, stderr.getvalue() + code + "\n") if isinstance(code, str) else (code, stderr.getvalue())
    )


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """Every numbered script's short --quick run but the compiled one's, two at a time on one
    thread each: {file name: (exit code, stdout, stderr, records)}."""
    workdir = tmp_path_factory.mktemp("quick_runs")

    def run(script):
        return run_script(script.name, *QUICK_FLAGS, cwd=workdir, threads=1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(run, QUICK_SCRIPTS)
        return dict(zip((script.name for script in QUICK_SCRIPTS), runs, strict=True))


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
