"""local_utilities.py: the splits of generated data, CIFAR-10 and image folders, a training split
too small for a batch; accuracy. (--num-workers' default: test_flags.py.)"""

from urllib.error import URLError

import pytest
import torch
from conftest import FixedLogits, dataloaders, refusal, write_image_tree

import local_utilities
from local_utilities import accuracy_and_classes, class_accuracies, compute_accuracy, imbalanced


def indices(subset):
    return set(subset.indices)


def test_quick_splits_have_the_reference_proportions_and_are_disjoint():
    train_loader, val_loader, test_loader, data = dataloaders(["--quick"])
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
    sampler = dataloaders(["--quick"])[0].sampler
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
    flags = ["--quick", "--data-dir", str(image_tree), "--batch-size", "4"]
    train_loader, val_loader, test_loader, data = dataloaders(flags)
    assert data.num_classes == 3 and test_loader.dataset.classes == ["cat", "dog", "frog"]
    assert (len(train_loader.dataset), len(val_loader.dataset)) == (30, 6)  # 2 of each 12
    assert not indices(train_loader.dataset) & indices(val_loader.dataset)
    assert (data.val_split, data.test_split) == (
        "a seeded 10% of each class of train/ (6 of 36 images)",
        "test/",
    )
    features, _ = next(iter(test_loader))
    assert features.shape[1:] == (3, 32, 32)  # --quick resizes to the small model's input


def used_classes(subset):
    """{class name: images} of a Subset of an ImageFolder."""
    names = [subset.dataset.classes[subset.dataset.targets[index]] for index in subset.indices]
    return {name: names.count(name) for name in subset.dataset.classes}


def test_validation_drawn_from_train_leaves_every_class_a_training_image_and_says_the_counts(
    tmp_path, capsys
):
    classes = [f"c{index:02d}" for index in range(25)]  # 25 classes of 2 images each
    tree = write_image_tree(tmp_path / "images", classes=classes, per_class=2)
    train, val, _, data = dataloaders(["--quick", "--data-dir", str(tree), "--batch-size", "5"])
    every_class_once = dict.fromkeys(classes, 1)
    assert used_classes(train.dataset) == used_classes(val.dataset) == every_class_once
    assert data.val_split == "a seeded 10% of each class of train/ (25 of 50 images)"
    printed = capsys.readouterr().out
    assert f"Used for training: 25 images {every_class_once}" in printed
    assert f"Used for validation: 25 images {every_class_once}" in printed


def test_a_class_with_one_training_image_keeps_it_and_the_run_says_so(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog", "frog"), per_class=25)
    for image in sorted((tree / "train" / "frog").iterdir())[1:]:
        image.unlink()
    train, val, _, _ = dataloaders(["--quick", "--data-dir", str(tree), "--batch-size", "4"])
    assert used_classes(train.dataset) == {"cat": 22, "dog": 22, "frog": 1}  # 25 - ceil(2.5)
    assert used_classes(val.dataset) == {"cat": 3, "dog": 3, "frog": 0}
    assert (
        "No validation image of frog: one image in train/ each, kept to train"
        in capsys.readouterr().out
    )


def test_train_with_one_image_per_class_and_no_val_folder_is_refused(tmp_path):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=1)
    assert refusal(["--quick", "--data-dir", str(tree), "--batch-size", "1"]) == (
        f"error: --data-dir {tree / 'train'} has one image per class, none to spare for "
        "validation; add images, or give both val/ and test/"
    )


def test_every_seed_validates_on_the_same_images(image_tree):
    validation = [
        dataloaders(["--quick", "--data-dir", str(image_tree), "--batch-size", "4", *seed])[
            1
        ].dataset.indices
        for seed in ([], ["--seed", "7"])
    ]
    assert validation[0] == validation[1]


def test_image_folder_val_folder_is_used_when_present(tmp_path):
    tree = write_image_tree(tmp_path / "images", splits=("train", "val", "test"), per_class=2)
    _, val_loader, _, _ = dataloaders(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    assert len(val_loader.dataset) == 6 and str(val_loader.dataset.root) == str(tree / "val")


def test_accuracy_matches_a_hand_computed_case():
    features = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    targets = torch.tensor([0, 1, 1, 1, 0])  # predictions 0, 1, 0, 1, 0: four of five right
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, targets), batch_size=2
    )
    assert compute_accuracy(FixedLogits(), loader) == pytest.approx(0.8)


def test_missing_train_folder_is_named(tmp_path):
    (tmp_path / "test").mkdir()
    assert f"--data-dir {tmp_path} needs train/<class>/<images>" in refusal(
        ["--quick", "--data-dir", str(tmp_path)]
    )


def test_splits_with_different_classes_are_refused(tmp_path):
    write_image_tree(tmp_path, splits=("train",), classes=("cat", "dog"), per_class=1)
    write_image_tree(tmp_path, splits=("test",), classes=("cat", "frog"), per_class=1)
    assert (
        "--data-dir splits disagree on the classes: train has ['cat', 'dog'], test has "
        "['cat', 'frog']" in refusal(["--quick", "--data-dir", str(tmp_path)])
    )


def test_cifar10_without_network_points_to_quick_and_data_dir(monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(local_utilities, "CIFAR10", no_network)
    error = refusal([])
    assert "could not download CIFAR-10" in error and "--quick" in error and "--data-dir" in error


def test_synthetic_data_is_full_size_and_sized_by_max_steps():
    train_loader, val_loader, _, data = dataloaders(
        ["--synthetic", "--max-steps", "3", "--batch-size", "2"]
    )
    features, targets = next(iter(train_loader))
    assert len(train_loader) == 3 and features.shape == (2, 3, 224, 224) and data.num_classes == 10


def test_ctrl_c_during_the_cifar10_download_says_what_it_interrupted(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(local_utilities, "CIFAR10", interrupted)
    with pytest.raises(KeyboardInterrupt, match="^interrupted while downloading CIFAR-10 to data$"):
        dataloaders([])


def test_max_steps_beyond_one_epoch_says_how_many_steps_will_run(image_tree, capsys):
    flags = ["--quick", "--data-dir", str(image_tree), "--batch-size", "4", "--max-steps", "40"]
    train_loader = dataloaders(flags)[0]
    assert len(train_loader) == 7  # 30 training images (2 of each class's 12 validate)
    out = capsys.readouterr().out
    assert "Training 7 of the 40 steps asked for: one epoch of this data has 7 batches" in out


def test_max_steps_within_an_epoch_draws_that_many_batches_at_random():
    train_loader = dataloaders(["--quick", "--max-steps", "3"])[0]
    assert len(train_loader) == 3 and len(train_loader.dataset) == 3 * 32
    assert sorted(train_loader.dataset.indices) != list(range(3 * 32))  # not the first 96


def test_train_and_val_without_test_trains_and_says_which_folder_is_which(odd_folder_run):
    returncode, stdout, stderr, records = odd_folder_run["run"]
    assert returncode == 0, stderr
    split = "a seeded 10% of each class of train/ (4 of 32 images)"
    assert f"Validation: {split} | test: val/" in stdout
    assert "Used for training: 28 images {'bottom': 14, 'top': 14}" in stdout
    assert "Used for validation: 4 images {'bottom': 2, 'top': 2}" in stdout
    assert (records[-1]["val_split"], records[-1]["test_split"]) == (split, "val/")


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
    assert refusal(flags) == (
        f"error: the training split of {tree}/train/ (validation: a seeded 10% of each class of "
        f"train/ ({validation} of {cats + dogs} images)) has {largest} images, fewer than one "
        f"batch of 32 x 1 device(s); add images, or use --batch-size {largest} or less"
    )
    assert len(dataloaders([*flags, "--batch-size", str(largest)])[0]) == 1  # and that size works


def test_a_batch_larger_than_the_generated_training_split_is_refused_with_its_size(capsys):
    assert refusal(["--quick", "--batch-size", "4096"]) == (
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
    line = refusal(["--quick", "--data-dir", str(tree)])
    assert line.endswith("has 2 images, fewer than one batch of 32 x 3 device(s); add images")


def test_a_single_image_in_train_is_refused_for_its_empty_class_not_with_batch_size_0(
    tmp_path, capsys
):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=1)
    (tree / "train" / "dog" / "0.png").unlink()
    line = refusal(["--quick", "--data-dir", str(tree)])
    assert line.startswith(
        f"error: --data-dir class folder {tree / 'train' / 'dog'} holds no images"
    )
    assert "--batch-size" not in line


def test_always_answering_the_large_class_scores_high_accuracy_and_half_balanced_accuracy():
    targets = torch.tensor([0] * 100 + [1] * 10)  # 10:1
    found = class_accuracies(torch.zeros(110, dtype=torch.long), targets, num_classes=2)
    assert found == {
        "class_counts": [100, 10],
        "imbalanced": True,
        "per_class_acc": [1.0, 0.0],
        "balanced_acc": 0.5,  # accuracy: 100 / 110 = 90.9%
    }


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_is_scikit_learns_and_leaves_out_absent_classes():
    from sklearn.metrics import balanced_accuracy_score

    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (500,), generator=generator)  # class 4 of 5 never occurs
    predictions = torch.where(
        torch.rand(500, generator=generator) < 0.6, targets, torch.randint(0, 5, (500,))
    )
    found = class_accuracies(predictions, targets, num_classes=5)
    assert found["per_class_acc"][4] is None
    for label in range(4):
        members = targets == label
        recall = (predictions[members] == label).float().mean().item()
        assert found["per_class_acc"][label] == pytest.approx(recall)
    expected = balanced_accuracy_score(targets.numpy(), predictions.numpy())
    assert found["balanced_acc"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "counts, expected",
    [([4, 1], True), ([3, 1], False), ([40, 10, 10], True), ([0, 5, 5], False), ([7], False)],
)
def test_classes_are_imbalanced_from_a_largest_to_smallest_ratio_of_4(counts, expected):
    assert imbalanced(counts) is expected


def test_test_accuracy_and_its_classes_come_from_one_pass_and_agree_with_compute_accuracy():
    # 12 images of class 0 and 2 of class 1; FixedLogits answers 0 for even features, 1 for odd
    features = torch.tensor([0.0] * 11 + [1.0] + [1.0, 0.0])
    targets = torch.tensor([0] * 12 + [1, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features, targets), 4)
    found = accuracy_and_classes(FixedLogits(), loader)
    assert found["test_acc"] == pytest.approx(12 / 14)
    assert found["test_acc"] == pytest.approx(compute_accuracy(FixedLogits(), loader))
    classes = found["test_classes"]
    assert classes["class_counts"] == [12, 2] and classes["imbalanced"] is True  # 6:1
    assert classes["per_class_acc"] == pytest.approx([11 / 12, 0.5])
    assert classes["balanced_acc"] == pytest.approx((11 / 12 + 0.5) / 2)
