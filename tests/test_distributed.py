"""Several processes on the CPU (gloo): one report, global counts, exact sharded accuracy, a
joint stop, and one copy of an error sentence."""

import re
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_script
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from local_utilities import compute_accuracy
from nan_check import all_finite

TWO_CPU_PROCESSES = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
QUICK_STEPS = ["--quick", "--max-steps", "4"]


def test_two_process_run_stops_together_reports_once_and_records_global_counts(tmp_path):
    """16-true diverges at step 2 on both processes: one report, one record, one error line."""
    flags = [*QUICK_STEPS, *TWO_CPU_PROCESSES]
    returncode, stdout, stderr, records = run_script(
        "03_fabric_16true.py", *flags, cwd=tmp_path, threads=1
    )
    assert returncode == 3, stderr
    assert len(records) == 1 and records[0]["world_size"] == 2 and records[0]["diverged"]
    assert records[0]["train_images"] == 2 * 1 * 32  # both processes' images: 1 step of 32 each
    assert len(re.findall(r"^Training time", stdout, re.MULTILINE)) == 1
    assert "x 2 process(es)" in stdout and "the most of any of the 2 processes" in stdout
    assert stderr.count("error: training diverged") == 1


def test_an_input_error_found_by_every_process_is_printed_once(tmp_path, image_tree):
    for image in (image_tree / "test" / "dog").iterdir():
        image.unlink()  # an empty class folder: both processes find it
    flags = ["--quick", "--data-dir", str(image_tree), *TWO_CPU_PROCESSES]
    returncode, _, stderr, records = run_script(
        "01_fabric_baseline.py", *flags, cwd=tmp_path, threads=1
    )
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert returncode == 2 and records == []
    assert len(errors) == 1 and errors[0].startswith("error: --data-dir class folder")


def in_two_processes(function, tmp_path, *args):
    """Run function(rank, *args) in two gloo processes; fail if either fails."""
    mp.start_processes(
        start_process,
        args=(function, str(tmp_path / "store"), *args),
        nprocs=2,
        join=True,
        start_method="fork",
    )  # fork: the children need not import torch again


def start_process(rank, function, store_path, *args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        function(rank, *args)
    finally:
        dist.destroy_process_group()


def linear_classifier():
    """A 3 -> 4 linear classifier, its layer where a torchvision ViT keeps its head
    (compute_accuracy counts the classes there)."""
    return torch.nn.Sequential(
        OrderedDict(heads=torch.nn.Sequential(OrderedDict(head=torch.nn.Linear(3, 4))))
    )


def check_sharded_accuracy(rank, features, targets, expected):
    dataset = torch.utils.data.TensorDataset(features, targets)
    sampler = UnrepeatedDistributedSampler(
        dataset, shuffle=False
    )  # what get_dataloaders gives each process
    assert len(sampler) == (4 if rank == 0 else 3)  # 7 samples: no padding, none dropped
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler)
    torch.manual_seed(0)
    assert compute_accuracy(linear_classifier(), loader) == expected


def test_sharded_accuracy_equals_single_process_accuracy_on_an_uneven_split(tmp_path):
    features, targets = (
        torch.randn(7, 3, generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 1, 2, 3, 0, 1, 2]),
    )
    torch.manual_seed(0)
    single = compute_accuracy(
        linear_classifier(),
        torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(features, targets), batch_size=2
        ),
    )
    assert 0 < single < 1  # some right, some wrong: a dropped or doubled sample would change it
    in_two_processes(check_sharded_accuracy, tmp_path, features, targets, single)


def check_one_nan_stops_all(rank):
    loss = torch.tensor(float("nan") if rank == 1 else 1.0)
    assert all_finite(loss) is False  # rank 0's loss is finite, but it must stop with rank 1


def test_a_nan_on_one_process_stops_every_process(tmp_path):
    in_two_processes(check_one_nan_stops_all, tmp_path)
