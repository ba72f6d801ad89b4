"""Image files as a person sees them: which files of a folder are data, their checks, 8-bit RGB."""

import collections
import functools
import hashlib
import itertools
import os
import re
import struct
import unicodedata
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import Resize
from torchvision.transforms.functional import _compute_resized_output_size

from errors import InputError
from processes import print_once

END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}  # the last bytes of a whole file
CONVERTED = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")  # Pillow's convert is right
TRANSPARENT = ("LA", "La", "PA", "RGBA", "RGBa")  # composited over white
SCALED = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 0..65535 (F: 0..1) scaled to 0..255
KNOWN_MODES = (*CONVERTED, *TRANSPARENT, *SCALED, "LAB")  # every mode of Pillow 13 (Image.MODES)
UNKNOWN_MODE = "has the pixel mode {}, which this loader does not know; save it as 8-bit RGB"
# torchvision ImageFolder's endings, and others every Pillow since 10.3 reads: JPEG's .jfif, GIF
# (its first frame), and AVIF where this Pillow has its plugin (Pillow 11.2 and later)
AVIF = tuple(ending for ending in (".avif",) if ending in Image.registered_extensions())
EXTENSIONS = (*IMG_EXTENSIONS, ".jfif", ".gif", *AVIF)
# what a person may think of as an image: what Pillow opens, and phone formats it does not
OPENED = [ending for ending, kind in Image.registered_extensions().items() if kind in Image.OPEN]
IMAGE_LIKE = (*OPENED, ".avif", ".heic", ".heif", ".jxl")
SPLIT_NAMES = {"val": ("val", "valid", "validation")}  # Roboflow exports valid/, Hugging Face


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

    Class names are the folders' names in Unicode NFC (`folder_of` maps them back to the names on
    disk). `loose` lists the image-like files (image_like) beside the class folders, `unused` those
    in them whose ending is not in EXTENSIONS, `unreadable` the OSErrors of folders not listed.
    """

    def find_classes(self, directory):
        entries = list(os.scandir(directory))
        folders = [entry.name for entry in entries if entry.is_dir() and entry.name[0] != "."]
        self.folder_of = folders_by_nfc_name(directory, folders)
        classes = sorted(self.folder_of)
        self.loose = [
            entry.path for entry in entries if not entry.is_dir() and image_like(entry.name)
        ]
        self.unused, self.unreadable = [], []
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(
        self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=True
    ):
        self.files, self.skipped, samples, walked = {}, {"folder": [], "file": []}, [], set()
        for name, index in class_to_idx.items():
            top = os.path.join(directory, self.folder_of[name])
            for root, folders, names in os.walk(
                top, onerror=self.unreadable.append, followlinks=True
            ):
                here = file_id(root)
                if here in walked:
                    self.skipped["folder"].append(root)
                    folders.clear()  # do not go down a loop again
                    continue
                walked.add(here)
                folders[:] = sorted(below for below in folders if below[0] != ".")
                for file in sorted(names):
                    path = os.path.join(root, file)
                    if file[0] == ".":
                        continue
                    if not file.lower().endswith(EXTENSIONS):
                        if image_like(file):
                            self.unused.append(path)
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
    once (what was skipped or not used is said), counted per class, and checked file by file
    (check_images, check_resized_sizes); copies of a split's files in a later split are said.
    val/ may be named valid/ or validation/ (split_folder); class names match in Unicode NFC.

    Errors: InputError for a missing split, too few or mismatched classes, an empty class
    folder, a folder that cannot be read, two validation folders, one class name in two Unicode
    forms, or a file check_images or check_resized_sizes refuses.
    """
    found, facts = {}, {}
    for name in ("train", "val", "test"):
        folder = split_folder(data_dir, name)
        if folder:
            check_listable(folder)
            found[name] = VisibleImageFolder(folder, transform, loader=load_rgb)
            check_listed(found[name])
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
                f"--data-dir class folder {Path(split.root, split.folder_of[empty[0]])} holds no "
                f"images ({', '.join(IMG_EXTENSIONS)}); add images to it, or delete that class "
                "from every split"
            )
        print_once(f"{name}/: {len(split)} images in {len(classes)} classes {counts}")
        for note in split_notes(name, split):
            print_once(note)
        facts[name] = check_images(split)
        check_resized_sizes(facts[name], transform)
    for first, second in itertools.combinations(found, 2):
        shared = found[first].files.keys() & found[second].files.keys()
        if shared:
            print_once(
                f"note: {len(shared)} file(s) of {second}/ are also in {first}/ (links to the same "
                f"file), such as {found[second].files[min(shared)]}; {second}/ is not unseen data"
            )
        note = copies_note(first, facts[first], second, facts[second])
        if note:
            print_once(note)
    return found


def check_images(dataset: ImageFolder) -> dict[str, tuple[tuple[int, int], bytes]]:
    """Check every image with check_image: name a bad file before training. Returns check_image's
    {path: (size, digest)} of each.

    Errors: InputError naming the first unreadable, truncated or oversized file, or one whose
    mode or pixel values this loader cannot turn into 8-bit RGB.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # metadata
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        facts = {}
        for path, _ in dataset.samples:
            try:
                facts[path] = check_image(path)
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
    return facts


def check_image(path: str) -> tuple[tuple[int, int], bytes]:
    """Raise if the file is no image Pillow can open, lacks its format's end marker (cut short),
    has a mode outside KNOWN_MODES, or holds F or I values that scaled_to_8_bits refuses; else
    return its (width, height) and a digest of its bytes: BLAKE2b of 16 bytes (hashlib), which two
    different files share with odds of about 2^-64 among 2^32 files (the birthday bound).

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
        file.seek(0)
        return image.size, hashlib.blake2b(file.read(), digest_size=16).digest()


def image_like(name: str) -> bool:
    """Whether a file name ends as an image a person may have meant as data (IMAGE_LIKE)."""
    return os.path.splitext(name)[1].lower() in IMAGE_LIKE


def folders_by_nfc_name(directory: str, folders: list[str]) -> dict[str, str]:
    """{class name in Unicode NFC: its folder's name on disk}. macOS writes accented names
    decomposed (NFD: e + U+0301 for é), Linux and Windows tools mostly composed (NFC): splits
    copied from both hold the same classes under names that differ in their bytes.

    Errors: InputError when two folders of one split have the same NFC name.
    """
    by_name = {}
    for folder in sorted(folders):
        name = unicodedata.normalize("NFC", folder)
        if name in by_name:
            raise InputError(
                f"--data-dir folders {os.path.join(directory, by_name[name])!a} and "
                f"{os.path.join(directory, folder)!a} are one name written in two Unicode forms "
                "(composed and decomposed); merge them into one folder"
            )
        by_name[name] = folder
    return by_name


def split_folder(data_dir: Path, split: str) -> Path | None:
    """The folder of a split: train/, test/, and for "val" val/, valid/ (Roboflow's exports) or
    validation/ (Hugging Face's); None when data_dir has none.

    Errors: InputError when data_dir has two of val/, valid/ and validation/.
    """
    present = [data_dir / name for name in SPLIT_NAMES.get(split, (split,))]
    present = [folder for folder in present if folder.is_dir()]
    if len(present) > 1:
        names = " and ".join(f"{folder.name}/" for folder in present)
        raise InputError(
            f"--data-dir {data_dir} has {names}, each a validation split; keep one of them"
        )
    if not present:
        return None
    if present[0].name != split:
        print_once(f"{present[0].name}/ is read as val/")
    return present[0]


def unreadable_folder(error: OSError) -> InputError:
    """The sentence for a folder of --data-dir that cannot be listed, its images left out."""
    return InputError(
        f"--data-dir folder {error.filename} cannot be read ({error.strerror}), so its images "
        f"would be left out; give read permission (chmod -R a+rX {error.filename}), or move it "
        "out of --data-dir"
    )


def check_listable(folder: Path) -> None:
    """Errors: InputError (unreadable_folder) when a split folder cannot be listed."""
    try:
        with os.scandir(folder):
            pass
    except OSError as error:
        raise unreadable_folder(error) from None


def check_listed(split: VisibleImageFolder) -> None:
    """Errors: InputError (unreadable_folder) naming the first folder below the class folders that
    os.walk could not list (it would skip it in silence)."""
    if split.unreadable:
        raise unreadable_folder(split.unreadable[0])


def split_notes(name: str, split: VisibleImageFolder) -> list[str]:
    """Lines about a split's folders: class names matched in Unicode NFC, and image-like files
    that are not data (beside the class folders, or with an ending this loader does not read)."""
    notes = []
    decomposed = [folder for folder in split.folder_of.values() if not is_nfc(folder)]
    if decomposed:
        notes.append(
            f"{name}/: {len(decomposed)} class folder name(s) such as {decomposed[0]!a} are "
            "written decomposed (Unicode NFD, as macOS writes them); matched to the other splits "
            "in their composed form (NFC)"
        )
    reasons = []
    if split.loose:
        reasons.append(
            f"{len(split.loose)} beside the class folders, such as {split.loose[0]} (move them "
            "into their class folder)"
        )
    if split.unused:
        endings = collections.Counter(os.path.splitext(path)[1].lower() for path in split.unused)
        listed = ", ".join(f"{count} {ending}" for ending, count in endings.most_common())
        reasons.append(
            f"{listed} files, such as {split.unused[0]}, an ending this loader does not read "
            f"(it reads {' '.join(EXTENSIONS)}; convert them to PNG or JPEG)"
        )
    if reasons:
        unused = len(split.loose) + len(split.unused)
        notes.append(f"{name}/: {unused} image file(s) not used: {'; '.join(reasons)}")
    return notes


def is_nfc(name: str) -> bool:
    return unicodedata.normalize("NFC", name) == name


def resized_size(size: tuple[int, int], transform) -> tuple[int, int]:
    """(width, height) of an image of this (width, height) after the transform's resize, computed
    as torchvision's Resize does (its _compute_resized_output_size): a single size is the short
    side's, the long side keeping the aspect ratio; the size itself where the transform has no
    resize. Finds the resize of a Compose and of the weights' preset (resize_size)."""
    steps = getattr(transform, "transforms", [transform])
    for step in steps:
        target, max_size = getattr(step, "resize_size", None), None
        if isinstance(step, Resize):
            target, max_size = step.size, step.max_size
        if target is None:
            continue
        if isinstance(target, int):
            target = [target]
        height, width = _compute_resized_output_size((size[1], size[0]), list(target), max_size)
        return width, height
    return size


def check_resized_sizes(facts: dict[str, tuple[tuple[int, int], bytes]], transform) -> None:
    """Refuse an image whose resize to the model's input (resized_size) would be over Pillow's
    decompression-bomb limit, Image.MAX_IMAGE_PIXELS (89,478,485 pixels, 268 MB as 8-bit RGB,
    the size Pillow itself takes for an attack): a strip of 2x40,000 pixels resizes on its short
    side to 256x5,120,000 (3.9 GB) and runs out of memory.

    Errors: InputError naming the first such file, its size and its size after resizing.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:  # the user lifted Pillow's limit
        return
    for path, (size, _) in facts.items():
        width, height = resized_size(size, transform)
        if width * height > limit:
            raise InputError(
                f"the image {path} is {size[0]}x{size[1]} pixels, which the model's preprocessing "
                f"resizes to {width}x{height} before cropping, over Pillow's decompression-bomb "
                f"limit of {limit:,} pixels; crop it nearer to square, or delete it"
            )


def copies_note(first: str, first_facts: dict, second: str, second_facts: dict) -> str | None:
    """A line saying how many files of the second split are byte-for-byte copies of files of the
    first (same digest, a different file: links are said apart); None when there are none."""
    originals = {digest: path for path, (_, digest) in first_facts.items()}
    copies = []
    for path, (_, digest) in second_facts.items():
        original = originals.get(digest)
        if original is not None and file_id(original) != file_id(path):
            copies.append((path, original))
    if not copies:
        return None
    path, original = copies[0]
    return (
        f"note: {len(copies)} file(s) of {second}/ are byte-for-byte copies of files in {first}/, "
        f"such as {path} (a copy of {original}); {second}/ is not unseen data: delete the copies "
        f"from one of them"
    )
