"""Image files as a person sees them: which files of a folder are data, their checks, 8-bit RGB."""

import functools
import itertools
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import InputError
from processes import print_once

END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}  # the last bytes of a whole file
CONVERTED = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")  # Pillow's convert is right
TRANSPARENT = ("LA", "La", "PA", "RGBA", "RGBa")  # composited over white
SCALED = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 0..65535 (F: 0..1) scaled to 0..255
KNOWN_MODES = (*CONVERTED, *TRANSPARENT, *SCALED, "LAB")  # every mode of Pillow 13 (Image.MODES)
UNKNOWN_MODE = "has the pixel mode {}, which this loader does not know; save it as 8-bit RGB"


class UnreadableImage(OSError):
    """An image whose pixels fail to decode, found while training (maybe in a loader worker).

    Its text is always the one sentence a user reads: the DataLoader re-raises a worker's error
    as UnreadableImage(text holding the worker's whole traceback), from which the sentence is
    kept. The scripts exit with status 1 on it.
    """

    def __init__(self, message: str):
        sentences = re.findall(r"cannot read the image .*", message)
        if sentences:
            message = sentences[-1]
        super().__init__(message)


class UnusableImage(ValueError):
    """A mode or pixel values that this loader cannot turn into 8-bit RGB, and what to do."""


def load_rgb(path: str) -> Image.Image:
    """An image file as the 8-bit RGB picture a viewer shows: turned upright by its EXIF
    orientation tag first (turn_upright), then converted from its mode (eight_bit_rgb).

    Errors: UnreadableImage naming the file, when its pixel data fails to decode or holds values
    that check_images refuses.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # metadata
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # as check_images
            with Image.open(path) as image:
                image.load()  # a decoding error surfaces here, not inside the EXIF step
                turn_upright(image)
                return eight_bit_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(
            f"cannot read the image {path} ({error}); delete it or copy it again"
        ) from None


def turn_upright(image: Image.Image) -> None:
    """Turn loaded pixels as their EXIF orientation tag (EXIF 2.3, tag 274: values 2 to 8) tells
    a viewer to, with Pillow's ImageOps.exif_transpose; untagged images, and a tag in a damaged
    EXIF block, stay as stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (SyntaxError, TypeError, struct.error):  # a damaged block: unread (no turn), or not
        return  # rewritable without its tag once the pixels are turned (Pillow rewrites it)


def eight_bit_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a loaded image in any mode of KNOWN_MODES, as a viewer shows it.

    16- and 32-bit integers are scaled from 0..65535, floats from 0..1 (scaled_to_8_bits); alpha
    and transparency entries are composited over white; LAB (D50, as TIFF and Photoshop store it)
    goes to sRGB through LittleCMS without its lookup-table optimisation, which Pillow's convert
    uses and which is off by up to 34 levels of 255. The rest is Pillow's convert: CMYK by
    255 (1 - C)(1 - K) with no colour profile applied, YCbCr by the JPEG (full-range) formulas.
    Errors: UnusableImage for a mode outside KNOWN_MODES, or values scaled_to_8_bits refuses.
    """
    if image.mode in SCALED:
        image = scaled_to_8_bits(image)
    if image.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode in TRANSPARENT or "transparency" in image.info:
        white = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    if image.mode == "LAB":
        return ImageCms.applyTransform(image, lab_to_srgb())
    if image.mode not in CONVERTED:
        raise UnusableImage(UNKNOWN_MODE.format(image.mode))
    return image.convert("RGB")


@functools.cache
def lab_to_srgb() -> ImageCms.ImageCmsTransform:
    """LittleCMS's CIELAB (D50) to sRGB, unoptimised: within a level of the CIE formulas."""
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB", flags=ImageCms.Flags.NOOPTIMIZE)


def scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """Mode I;16* or I (read as 0..65535) or F (read as 0..1) as 8-bit L, rounded; LA where a
    transparency value is set (16-bit PNGs), that value transparent.

    Errors: UnusableImage naming the values found, for NaN, infinity or values out of range
    (negative or over 65535 in I, outside 0..1 in F).
    """
    values = np.asarray(image)
    top = 65535
    if image.mode == "F":
        top = 1.0
    if not np.isfinite(values).all():
        raise UnusableImage(
            "holds NaN or infinite values; replace them, or save it with 8 or 16 bits per channel"
        )
    low, high = values.min(), values.max()
    if low < 0 or high > top:
        raise UnusableImage(
            f"holds values from {low:g} to {high:g} (mode {image.mode}, read as 0 to {top:g}); "
            "scale them into that range, or save it with 8 or 16 bits per channel"
        )
    gray = Image.fromarray(np.rint(values * (255 / top)).astype(np.uint8))
    if "transparency" not in image.info:
        return gray
    alpha = np.where(values == image.info["transparency"], 0, 255).astype(np.uint8)
    return Image.merge("LA", (gray, Image.fromarray(alpha)))


def file_id(path: str) -> tuple[int, int] | str:
    """(device, inode) of what a path leads to, the same for every link to it; the path itself
    where it leads nowhere (a broken link, which check_images then names)."""
    try:
        info = os.stat(path)
    except OSError:
        return path
    return info.st_dev, info.st_ino


class VisibleImageFolder(ImageFolder):
    """torchvision's ImageFolder without hidden entries ('.name', macOS '._name.png'), walking
    each folder and counting each file once: a link back to a folder already walked (a loop such
    as `again -> .`) or a second path to a file already found is listed in `skipped`. `files`
    maps each file's file_id to its path. An empty class folder passes, for image_folders to name.
    """

    def find_classes(self, directory):
        entries = os.scandir(directory)
        classes = sorted(entry.name for entry in entries if entry.is_dir() and entry.name[0] != ".")
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(
        self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=True
    ):
        self.files, self.skipped, samples, walked = {}, {"folder": [], "file": []}, [], set()
        for name, index in class_to_idx.items():
            for root, folders, names in os.walk(os.path.join(directory, name), followlinks=True):
                here = file_id(root)
                if here in walked:
                    self.skipped["folder"].append(root)
                    folders.clear()  # do not go down a loop again
                    continue
                walked.add(here)
                folders[:] = sorted(below for below in folders if below[0] != ".")
                for file in sorted(names):
                    path = os.path.join(root, file)
                    if file[0] == "." or not file.lower().endswith(IMG_EXTENSIONS):
                        continue
                    identity = file_id(path)
                    if identity in self.files:
                        self.skipped["file"].append(path)
                        continue
                    self.files[identity] = path
                    samples.append((path, index))
        return samples


def image_folders(data_dir: Path, transform) -> dict[str, VisibleImageFolder]:
    """{"train": ..., and "val" and/or "test": ...}: the split folders of data_dir, each walked
    once (what was skipped is said), counted per class, and checked file by file (check_images).

    Errors: InputError for a missing split, too few or mismatched classes, an empty class
    folder, or a file check_images refuses.
    """
    found = {}
    for name in ("train", "val", "test"):
        if (data_dir / name).is_dir():
            found[name] = VisibleImageFolder(data_dir / name, transform, loader=load_rgb)
    if "train" not in found or len(found) < 2:
        raise InputError(
            f"--data-dir {data_dir} needs train/<class>/<images> beside test/ or val/; "
            f"it has {list(found) or 'neither'}"
        )
    classes = found["train"].classes
    if len(classes) < 2:  # images put straight into train/ get this sentence too
        raise InputError(
            f"--data-dir {data_dir}/train/ has {len(classes)} class folder(s); a classifier needs "
            "at least two: train/<class>/<images>"
        )
    for name, split in found.items():
        if split.classes != classes:
            raise InputError(
                f"--data-dir splits disagree on the classes: train has {classes}, {name} has "
                f"{split.classes}; give every split the same class folders"
            )
        skipped = [
            f"{len(paths)} {kind}(s) such as {paths[0]}"
            for kind, paths in split.skipped.items()
            if paths
        ]
        if skipped:
            print_once(
                f"{name}/: skipped {' and '.join(skipped)}, reached a second time through links "
                "(each counts once)"
            )
        counts = dict(
            zip(classes, np.bincount(split.targets, minlength=len(classes)).tolist(), strict=True)
        )
        empty = [folder for folder, count in counts.items() if count == 0]
        if empty:
            raise InputError(
                f"--data-dir class folder {data_dir / name / empty[0]} holds no "
                f"images ({', '.join(IMG_EXTENSIONS)}); add images to it, or delete that class "
                "from every split"
            )
        print_once(f"{name}/: {len(split)} images in {len(classes)} classes {counts}")
        check_images(split)
    for first, second in itertools.combinations(found, 2):
        shared = found[first].files.keys() & found[second].files.keys()
        if shared:
            print_once(
                f"note: {len(shared)} file(s) of {second}/ are also in {first}/ (links to the same "
                f"file), such as {found[second].files[min(shared)]}; {second}/ is not unseen data"
            )
    return found


def check_images(dataset: ImageFolder) -> None:
    """Check every image with check_image: name a bad file before training.

    Errors: InputError naming the first unreadable, truncated or oversized file, or one whose
    mode or pixel values this loader cannot turn into 8-bit RGB.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # metadata
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for path, _ in dataset.samples:
            try:
                check_image(path)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
                raise InputError(
                    f"the image {path} is over Pillow's decompression-bomb limit ({error}); "
                    "downscale it"
                ) from None
            except UnusableImage as error:
                raise InputError(f"the image {path} {error}") from None
            except (OSError, ValueError, SyntaxError) as error:
                reason = str(error).split(" <_io.")[0]  # Pillow names the file object, not the path
                raise InputError(
                    f"cannot read the image {path} ({reason}); delete it or copy it again"
                ) from None


def check_image(path: str) -> None:
    """Raise if the file is no image Pillow can open, lacks its format's end marker (cut short),
    has a mode outside KNOWN_MODES, or holds F or I values that scaled_to_8_bits refuses.

    The format comes from the content, not the name. Image.open reads only the header; the pixels
    are decoded for modes F and I only.
    """
    with open(path, "rb") as file, Image.open(file) as image:
        ending = END_MARKERS.get(image.format, b"")
        if ending not in file.read():  # a JPEG's thumbnail, with its own end marker, comes before
            raise OSError("truncated: it lacks the end marker of its format")
        if image.mode not in KNOWN_MODES:
            raise UnusableImage(UNKNOWN_MODE.format(image.mode))
        if image.mode in ("F", "I"):
            scaled_to_8_bits(image)
