"""The ImageNet weights (downloaded once, then checked) and the small model of --quick."""

from pathlib import Path

import torch
import torchvision
from torchvision.models import VisionTransformer, WeightsEnum

from flags import TINY_VIT
from processes import fail


def vit_tiny_32(weights: None = None, **kwargs) -> VisionTransformer:
    """A 3-layer ViT for 32x32 images (about 0.1 M parameters); it has no pretrained weights."""
    return VisionTransformer(32, 8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128, **kwargs)


def register_tiny_vit() -> None:
    """Let torchvision.models.get_model(TINY_VIT) build the small model, like the real ViTs.

    torchvision has no public way to add a builder: register_model lives in its private _api
    module. A second registration would raise, so it happens once.
    """
    if TINY_VIT not in torchvision.models.list_models():
        from torchvision.models._api import register_model

        register_model(TINY_VIT)(vit_tiny_32)


def model_weights(args) -> WeightsEnum | None:
    """The ImageNet weights of args.model, downloaded once to torch's hub cache and checked.

    None for --quick and --synthetic, which start from random weights; --quick's small model is
    registered with torchvision here. Errors: exits with one sentence when the download fails, the
    cached file is damaged, or it holds NaN or inf.
    """
    if args.model == TINY_VIT:
        register_tiny_vit()
    if args.weights is None:
        return None
    weights = torchvision.models.get_model_weights(args.model)[args.weights]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:  # downloads the file if it is not cached; the meta device reads only its index
        torch.hub.load_state_dict_from_url(weights.url, map_location="meta", weights_only=True)
    except KeyboardInterrupt:  # torch.hub downloads to a temporary file: nothing half-written
        fail(f"interrupted while downloading the {args.model} ImageNet weights", status=130)
    except Exception as error:
        if not path.exists():  # a failed download leaves no file behind
            reason = getattr(error, "reason", error)
            offline = "--quick"
            if not args.data_dir:  # --synthetic refuses --data-dir
                offline += ", or measure speed and memory with --synthetic"
            fail(
                f"could not download the {args.model} ImageNet weights ({reason}); connect to the "
                f"internet once (they are cached in {path.parent}), or train the small model from "
                f"scratch with {offline}"
            )
        damaged(path, str(error).splitlines()[0])
    check_finite(path)
    return weights


def check_finite(path: Path) -> None:
    """Stop, naming the tensor and the file, if a weights file holds NaN or inf.

    Memory-mapped: the tensors are read from the page cache, not copied.
    """
    try:
        state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:
        damaged(path, str(error).splitlines()[0])
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            fail(
                f"the weights file {path} holds NaN or inf in {name}; delete it and run again "
                "with internet access to download it anew"
            )


def damaged(path: Path, reason: str) -> None:
    fail(
        f"the cached weights file {path} is damaged ({reason}), perhaps by an interrupted "
        "download; delete it and run again with internet access"
    )
