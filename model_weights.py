"""The models: torchvision's ViTs with their ImageNet weights (downloaded once, then checked),
the small model of --quick, and the finetuned model that --save writes and predict.py loads."""

import os
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.models import VisionTransformer, WeightsEnum

from errors import InputError
from flags import IMAGENET_WEIGHTS, TINY_VIT
from nan_check import all_finite
from processes import print_once

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's
SAVED_KEYS = ("model", "model_name", "classes", "precision")  # what --save writes


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


def preprocessing(model: str) -> transforms.Compose:
    """How an 8-bit RGB picture becomes `model`'s input, as in training: for TINY_VIT a resize to
    32x32 and ImageNet's normalisation; else its ImageNet weights' own transforms() (resize,
    centre crop, normalisation)."""
    if model == TINY_VIT:
        return transforms.Compose(
            [
                transforms.Resize((32, 32)),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
    return torchvision.models.get_model_weights(model)[IMAGENET_WEIGHTS].transforms()


def class_names(dataset: Dataset, num_classes: int) -> list[str]:
    """The names of the classes in the order of the model's outputs: an image folder's or
    CIFAR-10's (`classes`, below any Subsets), else "0", "1", ... (generated data)."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):  # a Subset
        dataset = dataset.dataset
    return list(getattr(dataset, "classes", [str(label) for label in range(num_classes)]))


class ModelSaver:
    """--save FILE: the finetuned model in one file, with what predict.py needs to use it: the
    state dict ("model", in the dtype it trained in), "model_name" (for get_model and
    preprocessing), "classes" (the class names, in the order of the outputs) and "precision".

    `path` is None without --save; `every_epoch` (--save-every-epoch) saves after each epoch as
    well, so that a run stopped later keeps its finished epochs. `dataset` is the training set,
    for the class names. A Fabric script passes `fabric` to save with fabric.save; without it,
    torch.save writes the file. Either way the file is written beside its name and then
    renamed, so a run stopped while saving leaves the earlier file whole.
    """

    def __init__(
        self, path: Path | None, every_epoch: bool, model: str, precision: str, dataset: Dataset
    ):
        self.path, self.every_epoch = path, every_epoch
        self.model_name, self.precision, self.dataset = model, precision, dataset
        self.epochs = 0

    def after_epoch(self, model: torch.nn.Module, fabric=None) -> None:
        """With --save-every-epoch, save the model of the epoch just finished, unless its weights
        turned NaN or infinite (the file then keeps the last finite epoch)."""
        self.epochs += 1
        if self.every_epoch and all_finite(*model.parameters()):
            self.save(model, fabric, f"epoch {self.epochs}'s")

    def after_training(self, model: torch.nn.Module, fabric=None) -> None:
        """With --save, save the finetuned model (--save-every-epoch has saved it already)."""
        if self.path and not self.every_epoch:
            self.save(model, fabric, "the finetuned")

    def save(self, model: torch.nn.Module, fabric, which: str) -> None:
        """Write the file and say so ("Saved <which> model to ...").

        Errors: InputError when it cannot be written (a full disk), naming the file, which keeps
        what it held.
        """
        classes = class_names(self.dataset, model.heads.head.out_features)
        state = dict(model=model, model_name=self.model_name, classes=classes)
        state.update(precision=self.precision)
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            if fabric is not None:  # Lightning writes a temporary file and renames it, too
                fabric.save(self.path, state)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                unwrapped = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
                torch.save({**state, "model": unwrapped.state_dict()}, partial)
                os.replace(partial, self.path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise InputError(
                f"could not save the model to --save {self.path} ({error.strerror or error}); "
                "the file keeps what it held before, and this run's numbers are printed above"
            ) from None
        print_once(f"Saved {which} model to {self.path} (predict.py classifies with it)")


def load_saved_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """The model a script saved with --save, in float32 on the CPU in evaluation mode, and the
    file's other entries (ModelSaver: "model_name", "classes", "precision").

    Errors: InputError for a file that is missing or that --save did not write.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; give the file that --save wrote") from None
    except Exception:  # torch's own message advises weights_only=False, which runs any code
        raise InputError(
            f"{path} is no model file of --save (torch.load with weights_only=True cannot read "
            "it); give the file that --save wrote"
        ) from None
    missing = [key for key in SAVED_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise InputError(f"{path} is no model file of --save: it lacks {', '.join(missing)}")
    model = get_model(saved["model_name"], num_classes=len(saved["classes"]))
    model.load_state_dict(saved["model"])  # copied into the float32 weights
    return model.eval(), saved
