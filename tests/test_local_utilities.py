"""local_utilities in-process: data splits, accuracy, flags, timing and formats, MFU peaks and the errors of bad input."""

import math
from urllib.error import URLError

import pytest
import torch
import torchvision
from conftest import write_image_tree

import local_utilities
from local_utilities import (StepTimer, append_record, compute_accuracy, divergence_advice, get_dataloaders,
                             parse_args, peak_flops, print_setup, report, speed, watch_dtypes)


def indices(subset):
    return set(subset.indices)


def test_quick_splits_have_the_reference_proportions_and_are_disjoint():
    train_loader, val_loader, test_loader, num_classes = get_dataloaders(parse_args(["--quick"]))
    train, val = train_loader.dataset, val_loader.dataset
    assert (len(train), len(val), len(test_loader.dataset), num_classes) == (2250, 250, 500, 10)
    assert train.dataset is val.dataset and not indices(train) & indices(val)
    assert len(train_loader) == 2250 // 32  # drop_last on train only: evaluation keeps every sample
    assert sum(len(targets) for _, targets in val_loader) == 250


def test_training_order_is_a_shuffle_fixed_by_seed_and_epoch():
    sampler = get_dataloaders(parse_args(["--quick"]))[0].sampler
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == list(range(2250))


def test_cifar10_splits_are_45k_train_5k_val_from_the_end_10k_test(monkeypatch):
    class FakeCIFAR10(torch.utils.data.Dataset):
        def __init__(self, root, train, transform, download):
            self.length = 50_000 if train else 10_000

        def __len__(self):
            return self.length

    monkeypatch.setattr(local_utilities, "CIFAR10", FakeCIFAR10)
    train, val, test = local_utilities.cifar10_splits("data", transform=None)
    assert (len(train), len(val), len(test)) == (45_000, 5_000, 10_000)
    assert indices(val) == set(range(45_000, 50_000)) and not indices(train) & indices(val)


def test_image_folder_tree_loads_with_its_classes_and_splits_val_from_train(image_tree):
    args = parse_args(["--quick", "--data-dir", str(image_tree)])
    train_loader, val_loader, test_loader, num_classes = get_dataloaders(args)
    assert num_classes == 3 and test_loader.dataset.classes == ["cat", "dog", "frog"]
    assert (len(train_loader.dataset), len(val_loader.dataset)) == (33, 3)  # a seeded 10% of 36 images
    assert not indices(train_loader.dataset) & indices(val_loader.dataset)
    assert (args.val_split, args.test_split) == ("a seeded 10% of train/ (3 of 36 images)", "test/")
    features, _ = next(iter(test_loader))
    assert features.shape[1:] == (3, 32, 32)  # --quick resizes to the small model's input


def test_image_folder_val_folder_is_used_when_present(tmp_path):
    tree = write_image_tree(tmp_path / "images", splits=("train", "val", "test"), per_class=2)
    _, val_loader, _, _ = get_dataloaders(parse_args(["--quick", "--data-dir", str(tree), "--batch-size", "2"]))
    assert len(val_loader.dataset) == 6 and str(val_loader.dataset.root) == str(tree / "val")


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits say class 0 for even features and class 1 for odd ones; a ViT-like 2-class head."""

    def __init__(self):
        super().__init__()
        self.heads = torch.nn.Sequential()
        self.heads.head = torch.nn.Linear(1, 2)

    def forward(self, features):
        odd = features.remainder(2)
        return torch.stack([1 - odd, odd], dim=1)


def test_accuracy_matches_a_hand_computed_case():
    features = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    targets = torch.tensor([0, 1, 1, 1, 0])  # predictions 0, 1, 0, 1, 0: four of five right
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features, targets), batch_size=2)
    assert compute_accuracy(FixedLogits(), loader) == pytest.approx(0.8)


@pytest.mark.parametrize("weights, autocast, in_effect", [
    (torch.float32, None, "32-true"), (torch.float32, torch.float16, "16-mixed"),
    (torch.float32, torch.bfloat16, "bf16-mixed"), (torch.bfloat16, None, "bf16-true"), (torch.float16, None, "16-true")])
def test_precision_in_effect_is_named_from_the_dtypes_of_the_first_forward_pass(capsys, weights, autocast, in_effect):
    model = FixedLogits().to(weights)
    dtypes = watch_dtypes(model, in_effect, torch.device("cuda"))  # the device only names it
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        model.heads.head(torch.ones(3, 1, dtype=weights))
    assert dtypes["in_effect"] == in_effect and dtypes["weight"] == weights
    assert f"Precision in effect: {in_effect} | weights {str(weights)[6:]}" in capsys.readouterr().out


def test_results_are_appended_one_json_line_per_run(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"script": "a"})
    append_record(path, {"script": "b"})
    assert path.read_text() == '{"script": "a"}\n{"script": "b"}\n'


def test_missing_train_folder_is_named(tmp_path, capsys):
    (tmp_path / "test").mkdir()
    with pytest.raises(SystemExit, match="1"):
        get_dataloaders(parse_args(["--quick", "--data-dir", str(tmp_path)]))
    assert f"--data-dir {tmp_path} needs train/<class>/<images>" in capsys.readouterr().err


def test_splits_with_different_classes_are_refused(tmp_path, capsys):
    write_image_tree(tmp_path, splits=("train",), classes=("cat", "dog"), per_class=1)
    write_image_tree(tmp_path, splits=("test",), classes=("cat", "frog"), per_class=1)
    with pytest.raises(SystemExit, match="1"):
        get_dataloaders(parse_args(["--quick", "--data-dir", str(tmp_path)]))
    assert "--data-dir splits disagree on the classes: train has ['cat', 'dog'], test has ['cat', 'frog']" in capsys.readouterr().err


def test_cifar10_without_network_points_to_quick_and_data_dir(monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(local_utilities, "CIFAR10", no_network)
    with pytest.raises(SystemExit, match="1"):
        get_dataloaders(parse_args([]))
    error = capsys.readouterr().err
    assert "could not download CIFAR-10" in error and "--quick" in error and "--data-dir" in error


def test_weights_without_network_point_to_quick_and_synthetic(monkeypatch, tmp_path, capsys):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(SystemExit, match="1"):
        local_utilities.pretrained_weights(parse_args(["--model", "vit_b_16"]))
    error = capsys.readouterr().err
    assert "could not download the vit_b_16 ImageNet weights" in error and "--quick" in error and "--synthetic" in error


def test_bf16_on_a_gpu_without_native_bf16_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(SystemExit, match="1"):
        print_setup(parse_args(["--quick"]), "bf16-true", torch.device("cuda"))
    assert "bf16-true needs native bfloat16, which Tesla T4 lacks" in capsys.readouterr().err


@pytest.mark.parametrize("flags, precision, noted", [
    ("fpu sse2 avx avx2 fma", "bf16-true", True),  # AVX2 only: bfloat16 is emulated
    ("fpu sse2 avx avx2 fma", "16-mixed", True),  # runs as bf16-mixed on a CPU
    ("fpu sse2 avx avx2 fma", "16-true", True),
    ("fpu sse2 avx avx2 fma", "32-true", False),
    ("avx2 avx512f avx512_bf16", "bf16-true", False),  # AMD Zen 4, Intel Cooper Lake and newer
    ("avx2 amx_tile amx_bf16", "bf16-mixed", False),  # Intel Sapphire Rapids
    ("avx2 amx_tile amx_bf16", "16-true", True),  # no float16 matrix units on it
    ("fp asimd fphp asimdhp bf16", "bf16-true", False),  # Arm with the BF16 extension
])
def test_cpu_without_16bit_matrix_units_gets_a_note_at_start(monkeypatch, capsys, flags, precision, noted):
    monkeypatch.setattr(local_utilities, "CPUINFO", f"model name\t: Some CPU\nflags\t\t: {flags}\n")
    print_setup(parse_args(["--quick"]), precision, torch.device("cpu"))
    out = capsys.readouterr().out
    assert ("Note: this CPU has no" in out and f"so {precision} is emulated and slower than 32-true here" in out) == noted


def test_max_steps_means_one_epoch_and_refuses_epochs(capsys):
    assert parse_args(["--max-steps", "7"]).epochs == 1
    for flags in (["--max-steps", "7", "--epochs", "3"], ["--max-steps", "7", "--epochs=3"]):
        with pytest.raises(SystemExit, match="2"):
            parse_args(flags)
        assert "--max-steps trains one epoch" in capsys.readouterr().err


def test_synthetic_data_is_full_size_and_sized_by_max_steps():
    train_loader, val_loader, _, num_classes = get_dataloaders(parse_args(["--synthetic", "--max-steps", "3",
                                                                           "--batch-size", "2"]))
    features, targets = next(iter(train_loader))
    assert len(train_loader) == 3 and features.shape == (2, 3, 224, 224) and num_classes == 10


def test_quick_model_is_small_and_every_builder_takes_the_new_head():
    quick = torchvision.models.get_model(local_utilities.TINY_VIT)
    quick.heads.head = torch.nn.Linear(quick.heads.head.in_features, 7)
    assert sum(p.numel() for p in quick.parameters()) < 500_000 and quick(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    full = torchvision.models.get_model("vit_b_16")
    assert full.heads.head.in_features == 768 and full.image_size == 224


@pytest.mark.parametrize("images_per_s, seconds_per_step, text", [
    (1391.46, 0.023, "1391.5 img/s"),
    (5.94, 1.35, "5.94 img/s (1.35 s/step)"),
    (0.0213, 375.6, "0.0213 img/s (375.60 s/step)"),  # never "0.0 img/s"
])
def test_speeds_keep_three_significant_digits_and_slow_steps_show_seconds(images_per_s, seconds_per_step, text):
    assert speed(images_per_s, seconds_per_step) == text


def test_time_left_leaves_the_slow_warmup_out_and_carries_seconds_into_minutes():
    timer = StepTimer(total_steps=12, warmup_steps=2, images_per_step=32)
    timer.add(40.0, data_wait=0.0)  # warm-up: first-call kernels and allocations
    assert timer.progress() == "0.800 img/s (40.00 s/step) | 07:20 left"  # still warming up: 11 steps at the last one's 40 s
    timer.add(20.0, data_wait=0.0)
    timer.add(5.98, data_wait=0.5)
    assert timer.progress() == "5.35 img/s (5.98 s/step) | 00:54 left"  # 9 steps at the steady 5.98 s: 53.8 s
    timer.add(6.02, data_wait=0.5)
    assert timer.progress().endswith("| 00:48 left") and timer.steady_steps == 2 and timer.data_wait == 1.0
    timer = StepTimer(total_steps=2, warmup_steps=0, images_per_step=1)
    timer.add(59.6, 0.0)
    assert timer.progress().endswith("| 01:00 left")  # never "00:60"


def test_report_measures_the_steady_state_with_lightnings_throughput_and_the_chips_peak(monkeypatch, capsys):
    monkeypatch.setattr(local_utilities, "peak_flops", lambda device, dtype, matmul_precision: 1e10)
    timer = StepTimer(total_steps=15, warmup_steps=5, images_per_step=4)
    for step_time in [1.0] * 5 + [0.5] * 10:
        timer.add(step_time, data_wait=0.05)
    args = parse_args(["--quick", "--batch-size", "4"])
    args.val_split, args.test_split = "val", "test"
    model = torchvision.models.get_model(local_utilities.TINY_VIT, num_classes=10)
    record = report(args, "32-true", torch.device("cpu"), timer=timer, train_time=9.0, memory_baseline=None,
                    dtypes={"matmul": torch.float32}, accuracies=dict(train_acc=1, val_acc=1, test_acc=1),
                    diverged_at=None, model=model)
    assert record["images_per_s"] == pytest.approx(8.0) and record["seconds_per_step"] == pytest.approx(0.5)
    assert record["data_wait_share"] == pytest.approx(0.1) and record["flops_per_image"] > 1e6
    assert record["mfu"] == pytest.approx(8.0 * record["flops_per_image"] / 1e10)
    assert "Steady state: 8.00 img/s over 10 steps, 10.0% of their time waiting for data | MFU: " in capsys.readouterr().out


@pytest.mark.parametrize("name, dtype, matmul_precision, flops", [
    ("NVIDIA H200", torch.bfloat16, "medium", 989e12),  # Lightning 2.6 finds no peak for this name
    ("NVIDIA H200", torch.float16, "medium", 989e12),
    ("NVIDIA H200", torch.float32, "medium", 494e12),  # TF32
    ("NVIDIA H200", torch.float32, "highest", 67e12),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, "high", 989e12),  # the H100 SXM
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, "medium", 312e12),  # from Lightning's table
])
def test_mfu_peak_is_the_dense_datasheet_figure(monkeypatch, name, dtype, matmul_precision, flops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda"), dtype, matmul_precision) == flops


def test_no_mfu_peak_on_a_cpu():
    assert peak_flops(torch.device("cpu"), torch.bfloat16, "medium") is None


def test_divergence_advice_follows_the_weights_dtype():
    assert "03b_fabric_16true_adam_eps.py" in divergence_advice({"weight": torch.float16})
    for dtype in (torch.float32, torch.bfloat16):
        advice = divergence_advice({"weight": dtype})
        assert advice.startswith("lower --learning-rate") and "bf16-true" not in advice


@pytest.mark.parametrize("flags, message", [
    (["--learning-rate", "inf"], "--learning-rate: must be a positive finite number, got inf"),
    (["--learning-rate", "nan"], "--learning-rate: must be a positive finite number, got nan"),
    (["--learning-rate", "0"], "--learning-rate: must be a positive finite number, got 0.0"),
    (["--quick", "--model", "vit_b_16"], "--quick trains its own small model (vit_tiny_32); drop --model"),
    (["--accelerator", "cuda"], "--accelerator cuda was asked for, but this machine has none"),
    (["--epoch", "2"], "unrecognized arguments: --epoch 2"),  # no abbreviations: --epoch is not --epochs
])
def test_flag_values_and_combinations_that_cannot_work_are_refused(capsys, flags, message):
    with pytest.raises(SystemExit, match="2"):
        parse_args(flags)
    assert message in capsys.readouterr().err
    assert math.isfinite(parse_args(["--learning-rate", "1e-3"]).learning_rate)
