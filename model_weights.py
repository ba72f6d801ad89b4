"""The models: torchvision's ViTs with their ImageNet weights (downloaded once, then checked),
and the small model of --quick."""

from pathlib import Path

import torch
import torchvision
from torchvision.models import VisionTransformer, WeightsEnum

from errors import InputError
from flags import TINY_VIT


def vit_tiny_32(**kwargs) -> VisionTransformer:
    """A 3-layer ViT for 32x32 images (about 0.1 M parameters); it has no pretrained weights."""
    return VisionTransformer(32, 8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128, **kwargs)


def get_model(name: str, weights: WeightsEnum | None = None, **kwargs) -> torch.nn.Module:
    """torchvision.models.get_model, which also builds the small model of --quick (TINY_VIT)."""
    if name == TINY_VIT:
        return vit_tiny_32(**kwargs)
    return torchvision.models.get_model(name, weights=weights, **kwargs)


def model_weights(
    model: str, weights: str | None, data_dir: Path | None = None
) -> WeightsEnum | None:
    """torchvision's `weights` of `model` ("IMAGENET1K_V1"), downloaded once to torch's hub
    cache and checked; None when `weights` is None (--quick and --synthetic start from random
    weights). `data_dir` (--data-dir) only shapes the advice when the download fails.

    Errors: InputError when the download fails, the cached file is damaged, or it holds NaN or
    inf; KeyboardInterrupt("interrupted while downloading ...") on Ctrl-C during the download.
    """
    if weights is None:
        return None
    found = torchvision.models.get_model_weights(model)[weights]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(found.url).name
    try:  # downloads the file if it is not cached; the meta device reads only its index
        torch.hub.load_state_dict_from_url(found.url, map_location="meta", weights_only=True)
    except KeyboardInterrupt:  # torch.hub downloads to a temporary file: nothing half-written
        raise KeyboardInterrupt(
            f"interrupted while downloading the {model} ImageNet weights"
        ) from None
    except Exception as error:
        if path.exists():  # a failed download leaves no file behind
            raise damaged(path, str(error).splitlines()[0]) from None
        reason = getattr(error, "reason", error)
        offline = "--quick"
        if data_dir is None:  # --synthetic refuses --data-dir
            offline += ", or measure speed and memory with --synthetic"
        raise InputError(
            f"could not download the {model} ImageNet weights ({reason}); connect to the "
            f"internet once (they are cached in {path.parent}), or train the small model from "
            f"scratch with {offline}"
        ) from None
    check_finite(path)
    return found


def check_finite(path: Path) -> None:
    """Raise InputError, naming the tensor and the file, if a weights file holds NaN or inf (or
    cannot be read). Memory-mapped: the tensors are read from the page cache, not copied."""
    try:
        state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:
        raise damaged(path, str(error).splitlines()[0]) from None
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(
                f"the weights file {path} holds NaN or inf in {name}; delete it and run again "
                "with internet access to download it anew"
            )


def damaged(path: Path, reason: str) -> InputError:
    """The error for a cached weights file that cannot be read."""
    return InputError(
        f"the cached weights file {path} is damaged ({reason}), perhaps by an interrupted "
        "download; delete it and run again with internet access"
    )
