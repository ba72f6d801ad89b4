"""local_utilities in-process: data splits, accuracy, flags and the errors that bad input gets."""

from argparse import Namespace
from urllib.error import URLError

import pytest
import torch
from conftest import write_image_tree

import local_utilities
from local_utilities import compute_accuracy, get_dataloaders, parse_args, precision_in_effect, write_record


def indices(subset):
    return set(subset.indices)


def test_quick_splits_have_the_reference_proportions_and_are_disjoint():
    train_loader, val_loader, test_loader, num_classes = get_dataloaders(parse_args(["--quick"]))
    train, val = train_loader.dataset, val_loader.dataset
    assert (len(train), len(val), len(test_loader.dataset), num_classes) == (2250, 250, 500, 10)
    assert train.dataset is val.dataset and not indices(train) & indices(val)
    assert len(train_loader) == 2250 // 32  # drop_last on train only: evaluation keeps every sample
    assert sum(len(targets) for _, targets in val_loader) == 250


def test_cifar10_splits_are_45k_train_5k_val_from_the_end_10k_test(monkeypatch):
    class FakeCIFAR10(torch.utils.data.Dataset):
        def __init__(self, root, train, transform, download):
            self.length = 50_000 if train else 10_000

        def __len__(self):
            return self.length

    monkeypatch.setattr(local_utilities, "CIFAR10", FakeCIFAR10)
    train, val, test, num_classes = local_utilities.cifar10_splits("data", transform=None)
    assert (len(train), len(val), len(test), num_classes) == (45_000, 5_000, 10_000, 10)
    assert indices(val) == set(range(45_000, 50_000)) and not indices(train) & indices(val)


def test_image_folder_tree_loads_with_its_classes_and_splits_val_from_train(image_tree):
    args = parse_args(["--quick", "--data-dir", str(image_tree)])
    train_loader, val_loader, test_loader, num_classes = get_dataloaders(args)
    assert num_classes == 3 and test_loader.dataset.classes == ["cat", "dog", "frog"]
    assert (len(train_loader.dataset), len(val_loader.dataset)) == (33, 3)  # a seeded 10% of 36 images
    assert not indices(train_loader.dataset) & indices(val_loader.dataset)
    features, _ = next(iter(test_loader))
    assert features.shape[1:] == (3, 32, 32)  # --quick resizes to the small model's input


def test_image_folder_val_folder_is_used_when_present(tmp_path):
    tree = write_image_tree(tmp_path / "images", splits=("train", "val", "test"), per_class=2)
    _, val_loader, _, _ = get_dataloaders(parse_args(["--quick", "--data-dir", str(tree)]))
    assert len(val_loader.dataset) == 6 and str(val_loader.dataset.root) == str(tree / "val")


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits say class 0 for even features and class 1 for odd ones."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, features):
        odd = features.remainder(2)
        return torch.stack([1 - odd, odd], dim=1)


def test_accuracy_matches_a_hand_computed_case():
    features = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    targets = torch.tensor([0, 1, 1, 1, 0])  # predictions 0, 1, 0, 1, 0: four of five right
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features, targets), batch_size=2)
    assert compute_accuracy(FixedLogits(), loader) == pytest.approx(0.8)


def test_precision_in_effect_is_named_from_the_dtypes():
    assert precision_in_effect(torch.float32, torch.float32) == "32-true"
    assert precision_in_effect(torch.float32, torch.float16) == "16-mixed"
    assert precision_in_effect(torch.float32, torch.bfloat16) == "bf16-mixed"
    assert precision_in_effect(torch.bfloat16, torch.bfloat16) == "bf16-true"
    assert precision_in_effect(torch.float16, torch.float16) == "16-true"


def test_results_are_appended_one_json_line_per_run(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, {"script": "a"})
    write_record(path, {"script": "b"})
    assert path.read_text() == '{"script": "a"}\n{"script": "b"}\n' and list(tmp_path.iterdir()) == [path]



def test_missing_train_folder_is_named(tmp_path, capsys):
    (tmp_path / "test").mkdir()
    with pytest.raises(SystemExit, match="1"):
        get_dataloaders(parse_args(["--quick", "--data-dir", str(tmp_path)]))
    assert f"--data-dir {tmp_path} has no train/ folder" in capsys.readouterr().err


def test_empty_split_is_named(tmp_path, capsys):
    write_image_tree(tmp_path, splits=("train",), per_class=1)
    (tmp_path / "test").mkdir()
    with pytest.raises(SystemExit, match="1"):
        get_dataloaders(parse_args(["--quick", "--data-dir", str(tmp_path)]))
    assert f"--data-dir split {tmp_path / 'test'} holds no usable images" in capsys.readouterr().err


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


def test_weights_without_network_point_to_synthetic_and_quick(monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(local_utilities.torchvision.models, "get_model", no_network)
    with pytest.raises(SystemExit, match="1"):
        local_utilities.build_model(parse_args(["--model", "vit_b_16"]), num_classes=10)
    assert "could not download the vit_b_16 ImageNet weights" in capsys.readouterr().err


def test_bf16_on_a_gpu_without_native_bf16_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(SystemExit, match="1"):
        local_utilities.TrainingMonitor(parse_args(["--quick"]), "bf16-true", "cuda")
    assert "bf16-true needs native bfloat16, which Tesla T4 lacks" in capsys.readouterr().err


def test_max_steps_means_one_epoch_and_refuses_epochs(capsys):
    assert parse_args(["--max-steps", "7"]).epochs == 1
    with pytest.raises(SystemExit, match="2"):
        parse_args(["--max-steps", "7", "--epochs", "3"])
    assert "--max-steps trains one epoch" in capsys.readouterr().err


def test_synthetic_data_is_full_size_and_sized_by_max_steps():
    train_loader, val_loader, _, num_classes = get_dataloaders(parse_args(["--synthetic", "--max-steps", "3",
                                                                           "--batch-size", "2"]))
    features, targets = next(iter(train_loader))
    assert len(train_loader) == 3 and features.shape == (2, 3, 224, 224) and num_classes == 10


def test_quick_model_is_small_and_full_model_has_the_new_head():
    quick = local_utilities.build_model(parse_args(["--quick"]), num_classes=7)
    assert sum(p.numel() for p in quick.parameters()) < 500_000 and quick.heads.head.out_features == 7
    full = local_utilities.build_model(Namespace(model="vit_b_16", quick=False, synthetic=True), num_classes=7)
    assert full.heads.head.out_features == 7 and full.image_size == 224
