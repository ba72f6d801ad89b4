"""Image files as a person sees them: which files of a folder are data, their checks, and 8-bit RGB."""

import os
import re
import sys
import warnings

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from processes import fail

END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}  # the last bytes of a whole file


class UnreadableImage(OSError):
    """An image whose pixels fail to decode, found while training (maybe in a loader worker)."""


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB. 16-bit images (microscopes, scanners) are scaled, not clipped.

    Errors: UnreadableImage naming the file, when its pixel data fails to decode.
    """
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I"):  # 16-bit: 0..65535 down to 0..255
                pixels = np.rint(np.asarray(image) / 257).clip(0, 255).astype(np.uint8)
                return Image.fromarray(pixels).convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(
            f"cannot read the image {path} ({error}); delete it or copy it again"
        ) from None


def say_unreadable_image(kind, error, trace) -> None:
    """sys.excepthook for --data-dir: a file that only decoding finds bad ends the run in one line.

    The DataLoader re-raises a worker's error with the worker's traceback in its text.
    """
    found = re.findall(r"cannot read the image .*", str(error))
    if not found:
        sys.__excepthook__(kind, error, trace)
        return
    print(f"error: {found[-1]}", file=sys.stderr)


class VisibleImageFolder(ImageFolder):
    """torchvision's ImageFolder without hidden entries ('.name', macOS '._name.png').

    An empty class folder passes here, to be named by image_folder_splits.
    """

    def find_classes(self, directory):
        entries = os.scandir(directory)
        classes = sorted(entry.name for entry in entries if entry.is_dir() and entry.name[0] != ".")
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(
        self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=True
    ):
        if not class_to_idx:
            return []

        def visible_image(path):  # hidden: a '.name' part below the split folder, not above it
            below = path[len(str(directory)) :]
            return path.lower().endswith(IMG_EXTENSIONS) and os.sep + "." not in below

        return super().make_dataset(directory, class_to_idx, None, visible_image, allow_empty=True)


def check_images(dataset: ImageFolder) -> None:
    """Open every image's header and find its format's end marker: name a bad file before training.

    Errors: exits with one sentence naming the first unreadable, truncated or oversized file.
    """
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # here and in loader workers
    for path, _ in dataset.samples:
        try:
            check_image(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            fail(
                f"the image {path} is over Pillow's decompression-bomb limit ({error}); downscale it"
            )
        except (OSError, ValueError, SyntaxError) as error:
            reason = str(error).split(" <_io.")[0]  # Pillow names the file object, not the path
            fail(f"cannot read the image {path} ({reason}); delete it or copy it again")


def check_image(path: str) -> None:
    """Raise if the file is no image Pillow can open, or lacks its format's end marker (cut short).

    The format comes from the content, not the name. Image.open reads only the header.
    """
    with open(path, "rb") as file:
        ending = END_MARKERS.get(Image.open(file).format, b"")
        if ending not in file.read():  # a JPEG's thumbnail, with its own end marker, comes before
            raise OSError("truncated: it lacks the end marker of its format")
