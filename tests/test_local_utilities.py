"""local_utilities.py: the splits of generated data, CIFAR-10 and image folders; accuracy."""

from urllib.error import URLError

import pytest
import torch
from conftest import FixedLogits, write_image_tree

import local_utilities
from flags import parse_args
from local_utilities import compute_accuracy, get_dataloaders


def indices(subset):
    return set(subset.indices)


def test_quick_splits_have_the_reference_proportions_and_are_disjoint():
    train_loader, val_loader, test_loader, data = get_dataloaders(parse_args(["--quick"]))
    train, val = train_loader.dataset, val_loader.dataset
    assert (len(train), len(val), len(test_loader.dataset), data.num_classes) == (
        2250,
        250,
        500,
        10,
    )
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
    train_loader, val_loader, test_loader, data = get_dataloaders(args)
    assert data.num_classes == 3 and test_loader.dataset.classes == ["cat", "dog", "frog"]
    assert (len(train_loader.dataset), len(val_loader.dataset)) == (
        33,
        3,
    )  # a seeded 10% of 36 images
    assert not indices(train_loader.dataset) & indices(val_loader.dataset)
    assert (data.val_split, data.test_split) == ("a seeded 10% of train/ (3 of 36 images)", "test/")
    features, _ = next(iter(test_loader))
    assert features.shape[1:] == (3, 32, 32)  # --quick resizes to the small model's input


def test_image_folder_val_folder_is_used_when_present(tmp_path):
    tree = write_image_tree(tmp_path / "images", splits=("train", "val", "test"), per_class=2)
    _, val_loader, _, _ = get_dataloaders(
        parse_args(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    )
    assert len(val_loader.dataset) == 6 and str(val_loader.dataset.root) == str(tree / "val")


def test_accuracy_matches_a_hand_computed_case():
    features = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    targets = torch.tensor([0, 1, 1, 1, 0])  # predictions 0, 1, 0, 1, 0: four of five right
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, targets), batch_size=2
    )
    assert compute_accuracy(FixedLogits(), loader) == pytest.approx(0.8)


def test_missing_train_folder_is_named(tmp_path, capsys):
    (tmp_path / "test").mkdir()
    with pytest.raises(SystemExit, match="2"):
        get_dataloaders(parse_args(["--quick", "--data-dir", str(tmp_path)]))
    assert f"--data-dir {tmp_path} needs train/<class>/<images>" in capsys.readouterr().err


def test_splits_with_different_classes_are_refused(tmp_path, capsys):
    write_image_tree(tmp_path, splits=("train",), classes=("cat", "dog"), per_class=1)
    write_image_tree(tmp_path, splits=("test",), classes=("cat", "frog"), per_class=1)
    with pytest.raises(SystemExit, match="2"):
        get_dataloaders(parse_args(["--quick", "--data-dir", str(tmp_path)]))
    assert (
        "--data-dir splits disagree on the classes: train has ['cat', 'dog'], test has ['cat', 'frog']"
        in capsys.readouterr().err
    )


def test_cifar10_without_network_points_to_quick_and_data_dir(monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(local_utilities, "CIFAR10", no_network)
    with pytest.raises(SystemExit, match="2"):
        get_dataloaders(parse_args([]))
    error = capsys.readouterr().err
    assert "could not download CIFAR-10" in error and "--quick" in error and "--data-dir" in error


def test_synthetic_data_is_full_size_and_sized_by_max_steps():
    train_loader, val_loader, _, data = get_dataloaders(
        parse_args(["--synthetic", "--max-steps", "3", "--batch-size", "2"])
    )
    features, targets = next(iter(train_loader))
    assert len(train_loader) == 3 and features.shape == (2, 3, 224, 224) and data.num_classes == 10
