"""Classify image files with a model that a script saved with --save.

    python 04_fabric_bf16true.py --data-dir my_images --save model.pt
    python predict.py model.pt photo.jpg more_photos/

prints one line per image (a folder's images are found below it, hidden files left out): the
path, the class the model gives it, and the model's probability for that class. The images go
through the loading and the preprocessing of training (image_files.load_rgb, and
model_weights.preprocessing for the saved model's name); the model runs in float32 on the CPU.
"""

import argparse
import sys
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import InputError
from image_files import UnreadableImage, load_rgb
from model_weights import load_saved_model, preprocessing

BATCH_SIZE = 32  # images classified together


def image_paths(paths: list[Path]) -> list[Path]:
    """The image files among `paths` and below the folders among them, sorted per folder.

    Errors: InputError for a path that does not exist, or when no image file is found.
    """
    found = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                hidden = any(name[0] == "." for name in file.relative_to(path).parts)
                if file.is_file() and not hidden and file.suffix.lower() in IMG_EXTENSIONS:
                    found.append(file)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path} does not exist; give image files or folders of them")
    if not found:
        names = " ".join(sorted(IMG_EXTENSIONS))
        raise InputError(f"no image file ({names}) in {' '.join(map(str, paths))}")
    return found


@torch.inference_mode()
def classify(model: torch.nn.Module, transform, paths: list[Path]) -> list[tuple[int, float]]:
    """(class index, probability) for each image file, in BATCH_SIZE batches.

    Errors: UnreadableImage naming a file whose pixels fail to decode.
    """
    answers = []
    for start in range(0, len(paths), BATCH_SIZE):
        images = [transform(load_rgb(str(path))) for path in paths[start : start + BATCH_SIZE]]
        probabilities = model(torch.stack(images)).softmax(dim=1)
        best, indices = probabilities.max(dim=1)
        answers += list(zip(indices.tolist(), best.tolist(), strict=True))
    return answers


def main(argv: list[str] | None = None) -> int:
    """Print each image's class; returns the exit status, 0. Errors: InputError, UnreadableImage."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("model_file", type=Path, help="the file a script wrote with --save")
    parser.add_argument("images", type=Path, nargs="+", help="image files, or folders of them")
    args = parser.parse_args(argv)
    model, saved = load_saved_model(args.model_file)
    paths = image_paths(args.images)
    answers = classify(model, preprocessing(saved["model_name"]), paths)
    for path, (index, probability) in zip(paths, answers, strict=True):
        print(f"{path}: {saved['classes'][index]} ({probability:.1%})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except UnreadableImage as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
