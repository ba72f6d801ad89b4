"""model_weights.py: the small model of --quick, and the ImageNet weights' download and checks."""

from urllib.error import URLError

import pytest
import torch
import torchvision
from conftest import weights_for

from errors import InputError
from flags import parse_args
from model_weights import get_model, model_weights


def test_quick_model_is_small_and_every_builder_takes_the_new_head():
    quick = get_model("vit_tiny_32")
    quick.heads.head = torch.nn.Linear(quick.heads.head.in_features, 7)
    assert sum(p.numel() for p in quick.parameters()) < 500_000
    assert quick(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    full = get_model("vit_b_16")
    assert full.heads.head.in_features == 768 and full.image_size == 224


def cached_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights_url = torchvision.models.get_model_weights("vit_b_16")["IMAGENET1K_V1"].url
    return tmp_path / "hub" / "checkpoints" / weights_url.rsplit("/", 1)[-1]


def checkpoint_cut_short(path):
    torch.save({"weight": torch.zeros(10_000)}, path)
    path.write_bytes(path.read_bytes()[:20_000])
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["overwritten", "cut short"])
def test_a_damaged_cached_weights_file_is_named_with_what_to_do(tmp_path, monkeypatch, damage):
    cached = cached_weights_file(tmp_path, monkeypatch)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(
        b"<html>a captive portal's page</html>"
        if damage == "overwritten"
        else checkpoint_cut_short(tmp_path / "checkpoint.pth")
    )
    with pytest.raises(InputError) as refused:
        weights_for(["--model", "vit_b_16"])
    line = f"error: {refused.value}"
    assert line.startswith(f"error: the cached weights file {cached} is damaged (")
    assert line.endswith("; delete it and run again with internet access")


@pytest.mark.parametrize(
    "flags, suggested, not_suggested",
    [
        (["--data-dir", "{tmp_path}"], "--quick", "--synthetic"),  # --synthetic refuses --data-dir
        ([], "--synthetic", None),
    ],
)
def test_offline_weights_message_suggests_only_what_works_with_the_flags_given(
    tmp_path, monkeypatch, flags, suggested, not_suggested
):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    cached_weights_file(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    args = parse_args(["--model", "vit_b_16", *(flag.format(tmp_path=tmp_path) for flag in flags)])
    with pytest.raises(InputError) as refused:
        model_weights(args.model, args.weights, args.data_dir)
    line = f"error: {refused.value}"
    assert line.startswith(
        "error: could not download the vit_b_16 ImageNet weights (no route to host)"
    )
    assert suggested in line and (not_suggested is None or not_suggested not in line)


def test_weights_without_network_point_to_quick_and_synthetic(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InputError) as refused:
        weights_for(["--model", "vit_b_16"])
    error = str(refused.value)
    assert (
        "could not download the vit_b_16 ImageNet weights" in error
        and "--quick" in error
        and "--synthetic" in error
    )


def test_the_small_model_is_built_without_registering_it_with_torchvision():
    models = torchvision.models.list_models()
    assert get_model("vit_tiny_32", num_classes=3).heads.head.out_features == 3
    assert torchvision.models.list_models() == models and "vit_tiny_32" not in models


def test_weights_holding_nan_name_the_tensor_and_the_file(tmp_path, monkeypatch):
    cached = cached_weights_file(tmp_path, monkeypatch)
    cached.parent.mkdir(parents=True)
    weights = {
        "encoder.ln.weight": torch.ones(4),
        "heads.head.bias": torch.tensor([0.0, float("nan")]),
    }
    torch.save(weights, cached)
    with pytest.raises(InputError) as refused:
        weights_for(["--model", "vit_b_16"])
    assert str(refused.value) == (
        f"the weights file {cached} holds NaN or inf in heads.head.bias; delete it and run "
        "again with internet access to download it anew"
    )


def test_ctrl_c_during_the_weights_download_says_what_it_interrupted(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    cached_weights_file(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.hub, "download_url_to_file", interrupted)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        weights_for(["--model", "vit_b_16"])
    assert str(interrupted.value) == "interrupted while downloading the vit_b_16 ImageNet weights"
