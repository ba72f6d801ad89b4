"""image_files.py: the model sees what a person sees. Each EXIF orientation is turned upright,
each mode Pillow opens becomes the 8-bit RGB a viewer shows or is refused before training, each
folder and file is counted once however many links lead to it, and every file that cannot be
read is named in one sentence, before training where a check can find it."""

import colorsys
import errno
import io
import os
import shutil
import stat
import struct
import unicodedata
import warnings
import zlib

import numpy as np
import PIL
import pytest
import torch
import torchvision
from conftest import (
    dataloaders,
    exif_block,
    orientation_entry,
    refusal,
    run_script,
    stored_pixels,
    write_band_tree,
    write_image_tree,
)
from PIL import Image
from torchvision import transforms

import image_files
from errors import InputError
from image_files import (
    UnreadableImage,
    check_images,
    eight_bit_rgb,
    image_folders,
    load_rgb,
    resized_size,
)

RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)  # (H, W, RGB): what a viewer shows
GRAY = np.array([[0, 1, 64, 127], [128, 200, 254, 255]], np.uint8)  # (H, W) 8-bit levels
ALPHA = np.array([[0, 10, 100, 128], [200, 254, 255, 255]], np.uint8)


class Samples:
    """The part of an ImageFolder that check_images reads."""

    def __init__(self, *paths):
        self.samples = [(str(path), 0) for path in paths]


def saved(image, tmp_path, name, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def loaded(path):
    """load_rgb(path) as a (H, W, 3) array, with every warning an error (`python -W error`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return np.asarray(load_rgb(path))


def as_rgb(gray):
    return np.repeat(np.asarray(gray, np.float64)[..., None], 3, axis=2)


def over_white(colour, alpha):
    """Straight (unpremultiplied) colour over a white background: c a + 255 (1 - a)."""
    alpha = np.asarray(alpha, np.float64)[..., None] / 255
    return np.asarray(colour, np.float64) * alpha + 255 * (1 - alpha)


# ---------------------------------------------------------------- image folders: what is data


def damaged_pixels(png):
    """The PNG with its compressed pixels scrambled and their checksum fixed: the header and the
    end marker stay whole."""
    start = png.index(b"IDAT")
    length = struct.unpack(">I", png[start - 4 : start])[0]
    data = bytearray(png[start + 4 : start + 4 + length])
    for index in range(10, length - 10, 7):
        data[index] ^= 0x5A
    checksum = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)))
    return png[: start + 4] + bytes(data) + checksum + png[start + 8 + length :]


def test_hidden_entries_are_not_data_and_each_split_is_counted(tmp_path, capsys):
    tree = write_image_tree(
        tmp_path / ".cache" / "images", classes=("cat", "dog"), per_class=3
    )  # a dot folder above
    shutil.copytree(
        tree / "train" / "cat", tree / "train" / ".ipynb_checkpoints"
    )  # copies of images: not a class
    (tree / "test" / ".ipynb_checkpoints").mkdir()
    (tree / "test" / ".ipynb_checkpoints" / "notes.txt").write_text(
        "not an image, in a hidden folder"
    )
    (tree / "train" / "cat" / "._0.png").write_bytes(
        b"\x00\x05\x16\x07 macOS metadata, not an image"
    )
    (tree / "train" / "cat" / ".hidden.png").write_bytes(b"not an image")
    (tree / "train" / "dog" / ".git").mkdir()
    (tree / "train" / "dog" / ".git" / "blob.png").write_bytes(b"not an image")
    (tree / "train" / "dog" / "readme.txt").write_text("not an image extension: skipped")
    (tree / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    train_loader, val_loader, test_loader, data = dataloaders(
        ["--quick", "--data-dir", str(tree), "--batch-size", "2"]
    )
    assert data.num_classes == 2 and test_loader.dataset.classes == ["cat", "dog"]
    assert (len(train_loader.dataset) + len(val_loader.dataset), len(test_loader.dataset)) == (6, 6)
    printed = capsys.readouterr().out
    assert "train/: 6 images in 2 classes {'cat': 3, 'dog': 3}" in printed
    assert "test/: 6 images in 2 classes {'cat': 3, 'dog': 3}" in printed


def test_an_empty_class_folder_is_named_with_what_to_do(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    for image in (tree / "test" / "dog").iterdir():
        image.unlink()
    (tree / "test" / "dog" / ".DS_Store").write_bytes(b"\x00")  # hidden: still empty
    line = refusal(["--quick", "--data-dir", str(tree)])
    assert line.startswith(
        f"error: --data-dir class folder {tree / 'test' / 'dog'} holds no images (.jpg, "
    )
    assert line.endswith("; add images to it, or delete that class from every split")


@pytest.mark.parametrize("classes", [("cat",), ()])
def test_fewer_than_two_class_folders_are_refused(tmp_path, capsys, classes):
    tree = write_image_tree(tmp_path / "images", classes=classes, per_class=2)
    for split in ("train", "test"):  # images lying in the split folder itself belong to no class
        (tree / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tree / split / "loose.png")
    assert refusal(["--quick", "--data-dir", str(tree)]) == (
        f"error: --data-dir {tree}/train/ has {len(classes)} class folder(s); a classifier needs "
        "at least two: train/<class>/<images>"
    )


def image_bytes(image_format):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


UNREADABLE = {  # file name: its bytes
    "notes.jpg": b"some text saved with an image's name\n",
    "empty.png": b"",
    "cut.png": image_bytes("PNG")[:3000],  # an interrupted copy: no IEND chunk
    "cut.jpg": image_bytes("JPEG")[:800],  # no end-of-image marker
}


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("name", UNREADABLE)
def test_an_unreadable_image_in_any_split_is_named_before_training(tmp_path, capsys, name, split):
    tree = write_image_tree(
        tmp_path / "images", splits=("train", "val", "test"), classes=("cat", "dog"), per_class=2
    )
    bad = tree / split / "dog" / name
    bad.write_bytes(UNREADABLE[name])
    line = refusal(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    assert line.startswith(f"error: cannot read the image {bad} (") and line.endswith(
        "); delete it or copy it again"
    )


@pytest.mark.parametrize(
    "limit", [6000, 4000]
)  # 10,000 pixels: Pillow warns over the limit, raises over twice it
def test_an_image_over_the_decompression_bomb_limit_is_named_with_what_to_do(
    tmp_path, capsys, monkeypatch, limit
):
    tree = write_image_tree(
        tmp_path / "images", classes=("cat", "dog"), per_class=2
    )  # 40x40 = 1,600 pixels each
    big = tree / "test" / "cat" / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    line = refusal(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    assert line.startswith(f"error: the image {big} is over Pillow's decompression-bomb limit (")
    assert line.endswith("); downscale it")


def test_files_that_decode_are_accepted_whatever_their_name_or_trailer(tmp_path):
    (tmp_path / "png_named.jpg").write_bytes(
        image_bytes("PNG")
    )  # the end marker follows the content, not the name
    (tmp_path / "motion_photo.jpg").write_bytes(
        image_bytes("JPEG") + b"\x00" * 4096 + b"MotionPhoto_Data"
    )
    (tmp_path / "photo.webp").write_bytes(image_bytes("WEBP"))
    paths = sorted(tmp_path.iterdir())
    check_images(Samples(*paths))  # no InputError
    assert [load_rgb(path).size for path in paths] == [(40, 40)] * 3


def test_damaged_pixel_data_passes_the_header_check_and_is_named_when_decoded(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(damaged_pixels(image_bytes("PNG")))
    check_images(Samples(bad))  # the header and the end marker are whole: only decoding finds it
    with pytest.raises(
        OSError, match=f"cannot read the image {bad} .*; delete it or copy it again"
    ):
        load_rgb(bad)


def tree_with_damaged_pixels(tmp_path):
    """Two classes of 4 PNGs; one of them scrambled inside its pixel data (damaged_pixels)."""
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=4)
    bad = tree / "train" / "cat" / "0.png"
    bad.write_bytes(damaged_pixels(bad.read_bytes()))
    return tree, bad


def test_damaged_pixel_data_found_in_the_training_process_is_said_in_one_sentence(tmp_path):
    tree, bad = tree_with_damaged_pixels(tmp_path)
    flags = ["--quick", "--data-dir", str(tree), "--batch-size", "2", "--num-workers", "0"]
    train_loader, val_loader, _, _ = dataloaders(flags)  # passes the check
    with pytest.raises(UnreadableImage) as raised:
        list(train_loader) + list(val_loader)  # the image lands in one of them
    assert str(raised.value).startswith(f"cannot read the image {bad} (")
    assert str(raised.value).endswith("); delete it or copy it again")


def test_an_unreadable_image_re_raised_with_a_workers_traceback_keeps_only_its_sentence():
    """What the DataLoader does with a worker's error: UnreadableImage(the whole traceback)."""
    sentence = "cannot read the image a.png (broken data stream); delete it or copy it again"
    text = (
        "Caught UnreadableImage in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "image_files.py", line 60, in load_rgb\n    raise UnreadableImage(\n'
        f"image_files.UnreadableImage: {sentence}\n"
    )
    assert str(UnreadableImage(text)) == sentence


def test_damaged_pixel_data_found_by_a_loader_worker_ends_the_run_with_one_sentence(tmp_path):
    tree, bad = tree_with_damaged_pixels(tmp_path)
    flags = ["--quick", "--data-dir", str(tree), "--batch-size", "2", "--num-workers", "2"]
    returncode, stdout, stderr, _ = run_script(
        "01_fabric_baseline.py", *flags, cwd=tmp_path, threads=1
    )
    assert "train/: 8 images in 2 classes" in stdout  # it passed the check before training
    (line,) = stderr.splitlines()  # no traceback
    assert returncode == 1 and line.startswith(f"error: cannot read the image {bad} (")
    assert line.endswith("); delete it or copy it again")


def test_16bit_grayscale_loads_as_the_same_pixels_saved_in_8bit(tmp_path):
    levels = np.array([[8000, 40000]] * 3, dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "16bit.png")
    Image.fromarray(levels.astype(np.int32)).save(
        tmp_path / "32bit.tif"
    )  # mode "I": 16-bit PNGs in older Pillow
    Image.fromarray(np.array([[31, 156]] * 3, dtype=np.uint8)).save(
        tmp_path / "8bit.png"
    )  # round(level / 257)
    assert (
        Image.open(tmp_path / "16bit.png").mode == "I;16"
        and Image.open(tmp_path / "32bit.tif").mode == "I"
    )
    eight_bit = np.asarray(load_rgb(tmp_path / "8bit.png"))
    assert eight_bit[0].tolist() == [[31, 31, 31], [156, 156, 156]]
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "16bit.png")), eight_bit)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "32bit.tif")), eight_bit)


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_is_turned_upright_as_a_viewer_shows_it(tmp_path, orientation):
    stored = Image.fromarray(stored_pixels(PICTURE, orientation))
    exif = exif_block(orientation_entry(orientation))
    for name in ("photo.png", "photo.webp"):  # lossless, so the pixels compare exactly
        path = saved(stored, tmp_path, name, exif=exif, lossless=True)
        assert np.array_equal(loaded(path), PICTURE), name


@pytest.mark.parametrize(
    "exif, turned",
    [
        (exif_block(orientation_entry(6))[:20], False),  # cut short: Pillow warns, reads no tag
        (exif_block(orientation_entry(6), byte_order=b")M"), False),  # Pillow raises SyntaxError
        (exif_block(orientation_entry(6), (0x0128, 2, 4, b"ab\0\0")), True),  # a SHORT tag as
    ],  # text: Pillow turns the pixels, then fails to rewrite the block (struct.error)
    ids=["cut short", "no byte order", "a tag of the wrong type"],
)
def test_a_damaged_exif_block_neither_warns_nor_stops_the_run(tmp_path, exif, turned):
    path = saved(Image.fromarray(stored_pixels(PICTURE, 6)), tmp_path, "photo.png", exif=exif)
    expected = stored_pixels(PICTURE, 6)
    if turned:
        expected = PICTURE
    check_images(Samples(path))  # no InputError, no warning
    assert np.array_equal(loaded(path), expected)


# ---------------------------------------------------------------- modes: what a viewer shows


def palette_image(alphas=None):
    """A 'P' image: GRAY's levels as palette indices into a palette of random colours."""
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    image = Image.fromarray(GRAY, "P")
    image.putpalette(palette.tobytes())
    colours = palette[GRAY]
    if alphas is None:
        return image, colours
    return image, over_white(colours, alphas[GRAY])


def lab_to_srgb(lab):
    """8-bit sRGB of CIELAB bytes as Pillow's LAB mode holds them (L* x 255/100; a*, b* as signed
    bytes), by the CIE formulas (CIE 15: D50 white) and Bruce Lindbloom's D50-adapted (Bradford)
    XYZ-to-sRGB matrix, then the sRGB curve (IEC 61966-2-1)."""
    lightness = lab[..., 0].astype(np.float64) * 100 / 255
    a, b = (lab[..., index].view(np.int8).astype(np.float64) for index in (1, 2))
    fy = (lightness + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], axis=-1)
    linear = np.where(f**3 > 216 / 24389, f**3, (116 * f - 16) / (24389 / 27))
    xyz = linear * np.array([0.96422, 1.0, 0.82521])  # the D50 white point
    matrix = np.array(
        [
            [3.1338561, -1.6168667, -0.4906146],
            [-0.9787684, 1.9161415, 0.0334540],
            [0.0719453, -0.2289914, 1.4052427],
        ]
    )
    rgb = np.clip(xyz @ matrix.T, 0, 1)
    return 255 * np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)


def ycbcr_to_rgb(ycbcr):
    """JFIF's YCbCr to RGB (ITU-T T.871, section 7: full range, 128 as zero chroma)."""
    y, cb, cr = (ycbcr[..., index].astype(np.float64) for index in range(3))
    red = y + 1.402 * (cr - 128)
    green = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    blue = y + 1.772 * (cb - 128)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255)


def with_associated_alpha(path):
    """Rewrite a TIFF's ExtraSamples tag from 2 (unassociated alpha) to 1 (associated,
    premultiplied), as some scientific and print tools write it."""
    entry = struct.pack("<HHIH", 338, 3, 1, 2)
    assert path.read_bytes().count(entry) == 1
    path.write_bytes(path.read_bytes().replace(entry, struct.pack("<HHIH", 338, 3, 1, 1)))
    return path


def case_1(tmp_path):
    bits = GRAY > 127
    return saved(Image.fromarray(bits), tmp_path, "1.png"), as_rgb(bits * 255)


def case_l(tmp_path):
    return saved(Image.fromarray(GRAY), tmp_path, "l.png"), as_rgb(GRAY)


def case_l_with_transparency(tmp_path):
    path = saved(Image.fromarray(GRAY), tmp_path, "l.png", transparency=64)
    return path, over_white(as_rgb(GRAY), np.where(GRAY == 64, 0, 255))


def case_p(tmp_path):
    image, colours = palette_image()
    return saved(image, tmp_path, "p.png"), colours


def case_p_with_transparency_table(tmp_path):
    alphas = RNG.integers(0, 256, 256, dtype=np.uint8)
    image, expected = palette_image(alphas)
    return saved(image, tmp_path, "p.png", transparency=alphas.tobytes()), expected


def case_p_gif_with_transparent_index(tmp_path):
    alphas = np.full(256, 255, np.uint8)
    alphas[200] = 0
    image, expected = palette_image(alphas)
    return saved(image, tmp_path, "p.gif", transparency=200), expected


def case_pa(tmp_path):
    image = Image.merge("PA", (Image.fromarray(GRAY), Image.fromarray(ALPHA)))
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    image.putpalette(palette.tobytes())
    return saved(image, tmp_path, "pa.tif"), over_white(palette[GRAY], ALPHA)


def case_la(tmp_path):
    image = Image.fromarray(np.stack([GRAY, ALPHA], axis=-1), "LA")
    return saved(image, tmp_path, "la.png"), over_white(as_rgb(GRAY), ALPHA)


def case_la_premultiplied(tmp_path):
    premultiplied = np.rint(GRAY * (ALPHA / 255)).astype(np.uint8)
    image = Image.fromarray(np.stack([premultiplied, ALPHA], axis=-1), "LA")
    path = with_associated_alpha(saved(image, tmp_path, "la.tif"))
    assert Image.open(path).mode == "La"
    return path, as_rgb(premultiplied.astype(np.float64) + 255 - ALPHA)  # c + (1 - a) 255


def case_rgb(tmp_path):
    return saved(Image.fromarray(PICTURE), tmp_path, "rgb.png"), PICTURE


def case_rgb_with_transparency(tmp_path):
    colour = tuple(PICTURE[1, 2].tolist())
    path = saved(Image.fromarray(PICTURE), tmp_path, "rgb.png", transparency=colour)
    return path, over_white(PICTURE, np.where((colour == PICTURE).all(-1), 0, 255))


def case_rgba(tmp_path):
    alpha = RNG.integers(0, 256, PICTURE.shape[:2], dtype=np.uint8)
    image = Image.fromarray(np.dstack([PICTURE, alpha]), "RGBA")
    return saved(image, tmp_path, "rgba.png"), over_white(PICTURE, alpha)


def case_rgba_premultiplied(tmp_path):
    alpha = np.full(PICTURE.shape[:2], 128, np.uint8)
    premultiplied = np.rint(PICTURE * (128 / 255)).astype(np.uint8)
    image = Image.fromarray(np.dstack([premultiplied, alpha]), "RGBA")
    path = with_associated_alpha(saved(image, tmp_path, "rgba.tif"))
    return path, premultiplied.astype(np.float64) + 255 - 128


def case_cmyk(tmp_path):
    cmyk = RNG.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    ink = cmyk.astype(np.float64) / 255  # no colour profile: 255 (1 - C)(1 - K), as browsers do
    expected = 255 * (1 - ink[..., :3]) * (1 - ink[..., 3:])
    return saved(Image.fromarray(cmyk, "CMYK"), tmp_path, "cmyk.tif"), expected


def case_ycbcr(tmp_path):
    ycbcr = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    path = saved(Image.fromarray(ycbcr, "YCbCr"), tmp_path, "ycbcr.tif")
    return path, ycbcr_to_rgb(ycbcr)


def case_lab(tmp_path):
    lab = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # many colours outside sRGB: clipped
    path = saved(Image.fromarray(lab, "LAB"), tmp_path, "lab.tif")
    assert Image.open(path).mode == "LAB"
    return path, lab_to_srgb(lab)


def case_i16(tmp_path):
    levels = GRAY.astype(np.uint16) * 257 + np.array([[0, 128, 0, 100], [0, 0, 128, 0]], np.uint16)
    return saved(Image.fromarray(levels), tmp_path, "i16.png"), as_rgb(levels / 257)


def case_i16_with_transparency(tmp_path):
    levels = GRAY.astype(np.uint16) * 257
    path = saved(Image.fromarray(levels), tmp_path, "i16.png", transparency=64 * 257)
    return path, over_white(as_rgb(GRAY), np.where(GRAY == 64, 0, 255))


def case_i16b(tmp_path):
    levels = (GRAY.astype(np.uint16) * 257).astype(">u2")
    path = saved(Image.fromarray(levels), tmp_path, "i16b.tif")
    assert Image.open(path).mode == "I;16B"
    return path, as_rgb(GRAY)


def case_i(tmp_path):
    levels = GRAY.astype(np.int32) * 257
    return saved(Image.fromarray(levels), tmp_path, "i.tif"), as_rgb(GRAY)


def case_i_from_a_16bit_pgm(tmp_path):
    path = tmp_path / "i.pgm"  # a 12-bit camera's maximum, 4095: Pillow scales it to 65535
    levels = GRAY.astype(np.int64) * 4095 // 255
    path.write_bytes(b"P5 4 2 4095\n" + levels.astype(">u2").tobytes())
    return path, as_rgb(levels * 255 / 4095)


def case_f(tmp_path):
    values = GRAY.astype(np.float32) / 255
    return saved(Image.fromarray(values), tmp_path, "f.tif"), as_rgb(GRAY)


FILES = {  # mode: a file in it, and what a viewer shows; every mode Pillow 13 opens from a file
    "1": case_1,
    "L": case_l,
    "L with a transparent level": case_l_with_transparency,
    "P": case_p,
    "P with a transparency table (PNG)": case_p_with_transparency_table,
    "P with a transparent index (GIF)": case_p_gif_with_transparent_index,
    "PA": case_pa,
    "LA": case_la,
    "La (premultiplied)": case_la_premultiplied,
    "RGB": case_rgb,
    "RGB with a transparent colour": case_rgb_with_transparency,
    "RGBA": case_rgba,
    "RGBA from premultiplied (RGBa)": case_rgba_premultiplied,
    "CMYK": case_cmyk,
    "YCbCr": case_ycbcr,
    "LAB": case_lab,
    "I;16": case_i16,
    "I;16 with a transparent level": case_i16_with_transparency,
    "I;16B": case_i16b,
    "I": case_i,
    "I from a 16-bit PGM": case_i_from_a_16bit_pgm,
    "F": case_f,
}


PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13  # reads these TIFFs; 10.3 to 12.3 do not
TIFFS_OF_PILLOW_13 = ("La (premultiplied)", "YCbCr")


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            mode,
            marks=pytest.mark.skipif(
                mode in TIFFS_OF_PILLOW_13 and not PILLOW_13, reason="Pillow reads it from 13 on"
            ),
        )
        for mode in FILES
    ],
)
def test_each_mode_loads_as_the_8bit_rgb_a_viewer_shows(tmp_path, mode):
    path, expected = FILES[mode](tmp_path)
    check_images(Samples(path))  # accepted before training
    pixels = loaded(path)  # no warning, even as an error
    assert pixels.dtype == np.uint8 and pixels.shape == np.shape(expected)
    assert np.abs(pixels - np.asarray(expected, np.float64)).max() <= 1  # rounding


@pytest.mark.parametrize("mode", ["HSV", "I;16L", "I;16N", "RGBa"])
def test_modes_no_file_opens_in_convert_as_a_viewer_would_show_them(mode):
    if mode == "HSV":  # colorsys: the standard library's HSV, each channel 0..1
        image = Image.fromarray(RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8), "HSV")
        hsv = np.asarray(image) / 255
        expected = 255 * np.array([[colorsys.hsv_to_rgb(*pixel) for pixel in row] for row in hsv])
    elif mode == "RGBa":
        image = Image.fromarray(np.dstack([PICTURE // 2, np.full((3, 5), 128, np.uint8)]), "RGBa")
        expected = PICTURE // 2 + 255.0 - 128
    else:
        levels = (GRAY.astype(np.uint16) * 257).astype({"I;16L": "<u2", "I;16N": "=u2"}[mode])
        image = Image.frombytes(mode, (4, 2), levels.tobytes())
        expected = as_rgb(GRAY)
    image.load()
    assert image.mode == mode
    pixels = np.asarray(eight_bit_rgb(image))
    assert np.abs(pixels - expected).max() <= 1


# ---------------------------------------------------------------- modes: refused before training


@pytest.mark.parametrize(
    "values, found",
    [
        (
            np.array([[0.0, 255.0]], np.float32),
            "values from 0 to 255 (mode F, read as 0 to 1); scale",
        ),
        (np.array([[-0.5, 0.5]], np.float32), "values from -0.5 to 0.5 (mode F, read as 0 to 1);"),
        (np.array([[0.0, np.nan]], np.float32), "NaN or infinite values; replace them, or save it"),
        (np.array([[-3, 7]], np.int32), "values from -3 to 7 (mode I, read as 0 to 65535); scale"),
        (np.array([[0, 70000]], np.int32), "values from 0 to 70000 (mode I, read as 0 to 65535);"),
    ],
    ids=["F 0..255", "F negative", "F NaN", "I negative", "I over 65535"],
)
def test_values_a_mode_cannot_hold_are_refused_before_training_naming_the_range(
    tmp_path, capsys, values, found
):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    bad = saved(Image.fromarray(values), tree / "train" / "dog", "scan.tif")
    line = refusal(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    assert line.startswith(f"error: the image {bad} holds {found}")
    assert line.endswith("or save it with 8 or 16 bits per channel")


def test_a_mode_this_loader_does_not_know_is_refused_before_training(tmp_path, capsys, monkeypatch):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    bad = saved(Image.new("CMYK", (8, 8)), tree / "test" / "dog", "print.tif")
    monkeypatch.setattr(image_files, "KNOWN_MODES", ("RGB", "L"))  # a mode a later Pillow adds
    assert refusal(["--quick", "--data-dir", str(tree), "--batch-size", "2"]) == (
        f"error: the image {bad} has the pixel mode CMYK, which this loader does not know; save "
        "it as 8-bit RGB"
    )


# ---------------------------------------------------------------- links: each folder and file once


def test_a_link_looping_back_and_second_paths_to_a_file_count_once_and_are_said(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=10)
    cat = tree / "train" / "cat"
    (cat / "again").symlink_to(".")  # what a careless `ln -s` makes
    (cat / "same.png").symlink_to(cat / "0.png")
    os.link(cat / "1.png", cat / "hard.png")
    (tree / "test" / "dog" / "leak.png").symlink_to(tree / "train" / "dog" / "3.png")
    train, val, test, _ = dataloaders(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    folder = train.dataset.dataset
    assert len(folder) == 20 and len(set(folder.files.values())) == 20
    assert not set(train.dataset.indices) & set(val.dataset.indices)
    printed = capsys.readouterr().out
    assert "train/: 20 images in 2 classes {'cat': 10, 'dog': 10}" in printed
    assert (
        f"train/: skipped 1 folder(s) such as {cat / 'again'} and 2 file(s) such as "
        f"{cat / 'hard.png'}, reached a second time through links (each counts once)"
    ) in printed
    assert (
        f"note: 1 file(s) of test/ are also in train/ (links to the same file), such as "
        f"{tree / 'test' / 'dog' / 'leak.png'}; test/ is not unseen data"
    ) in printed
    assert len(test.dataset) == 21  # said, not dropped


# ---------------------------------------------------------------- the model sees what a person sees


def test_tagged_jpegs_and_float_tiffs_reach_the_model_as_their_upright_8bit_copies(tmp_path):
    tree = write_band_tree(tmp_path / "bands", count=7, copy=tmp_path / "copy")
    flags = ["--quick", "--batch-size", "1", "--num-workers", "0"]
    loaders = [dataloaders([*flags, "--data-dir", str(root)]) for root in (tree, tmp_path / "copy")]
    tensors = [
        [torch.stack([features for features, _ in loader.dataset]) for loader in found[:2]]
        for found in loaders
    ]
    (jpegs, tiffs), (upright_train, upright_val) = tensors  # normalised: 1 is about 58 levels
    assert (jpegs - upright_train).abs().mean(dim=(1, 2, 3)).max() < 0.05  # JPEG's loss only
    assert torch.equal(tiffs, upright_val)


def test_tagged_phone_jpegs_and_float_tiffs_train_as_their_upright_8bit_copies_do(odd_folder_run):
    returncode, stdout, stderr, records = odd_folder_run["run"]
    assert returncode == 0, stderr
    assert "Warning" not in stderr  # no Pillow warning per loader worker
    # before: trained on the stored pixels and black TIFFs; tested on white 16-bit PNGs: 50%
    assert (records[-1]["val_acc"], records[-1]["test_acc"]) == (1.0, 1.0), stdout


# ---------------------------------------------------------------- folders as users' tools leave it


def refuse_unreadable_folders_as_for_a_user(monkeypatch):
    """Tests run as root, whom permissions do not stop: there, os.scandir (which os.walk calls)
    refuses a folder without read permission as the kernel refuses any other user."""
    if os.geteuid() != 0:
        return
    scandir = os.scandir

    def scandir_as_a_user(path="."):
        if not os.stat(path).st_mode & stat.S_IRUSR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_as_a_user)


@pytest.mark.parametrize("unreadable", ["train/cat/holiday", "train/dog", "test"])
def test_a_folder_without_read_permission_is_refused_naming_it(tmp_path, monkeypatch, unreadable):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=4)
    (tree / "train" / "cat" / "holiday").mkdir()
    for index in range(8):  # before: 8 of 12 images of cat left out in silence
        saved(Image.fromarray(PICTURE), tree / "train" / "cat" / "holiday", f"{index}.png")
    folder = tree / unreadable
    refuse_unreadable_folders_as_for_a_user(monkeypatch)
    folder.chmod(0)
    try:
        with pytest.raises(InputError) as refused:
            image_folders(tree, None)
    finally:
        folder.chmod(0o755)
    assert str(refused.value) == (
        f"--data-dir folder {folder} cannot be read (Permission denied), so its images would be "
        f"left out; give read permission (chmod -R a+rX {folder}), or move it out of --data-dir"
    )


def test_an_image_too_thin_to_resize_is_refused_naming_it_and_its_resized_size(tmp_path):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    thin = saved(Image.new("L", (2, 40_000)), tree / "train" / "dog", "panorama.png")
    preset = torchvision.models.get_model_weights("vit_b_16")["IMAGENET1K_V1"].transforms()
    with pytest.raises(InputError) as refused:  # before: a MemoryError in the first batch
        image_folders(tree, preset)
    assert str(refused.value) == (
        f"the image {thin} is 2x40000 pixels, which the model's preprocessing resizes to "
        "256x5120000 before cropping, over Pillow's decompression-bomb limit of 89,478,485 "
        "pixels; crop it nearer to square, or delete it"
    )
    image_folders(tree, transforms.Resize((32, 32)))  # --quick resizes to 32x32: no problem


THIN_AND_WIDE = [(2, 3_000), (3_000, 2), (640, 480), (7, 7), (301, 1_000)]


@pytest.mark.parametrize(
    "resize, sizes",
    [
        (transforms.Resize(256), THIN_AND_WIDE),
        (transforms.Resize((20, 30)), THIN_AND_WIDE),
        (transforms.Resize(8, max_size=40), [(640, 480), (7, 7), (301, 1_000), (500, 900)]),
    ],
    ids=["short side", "height and width", "short side, long side at most"],
)
def test_resized_size_is_the_size_torchvision_resizes_to(resize, sizes):
    pipeline = transforms.Compose([resize, transforms.ToTensor()])
    for size in sizes:
        assert resized_size(size, pipeline) == resize(Image.new("L", size)).size, size


def test_class_folders_named_in_nfc_and_nfd_are_one_class_and_the_run_says_so(tmp_path, capsys):
    composed = unicodedata.normalize("NFC", "café")
    decomposed = unicodedata.normalize("NFD", "café")  # as macOS writes it
    tree = write_image_tree(tmp_path / "images", classes=("dog",), per_class=2)
    write_image_tree(tree, splits=("train",), classes=(composed,), per_class=2)
    write_image_tree(tree, splits=("test",), classes=(decomposed,), per_class=3)
    found = image_folders(tree, None)
    assert found["test"].classes == found["train"].classes == [composed, "dog"]
    assert found["test"].targets == [0, 0, 0, 1, 1]
    assert (
        "test/: 1 class folder name(s) such as 'cafe\\u0301' are written decomposed (Unicode NFD, "
        "as macOS writes them); matched to the other splits in their composed form (NFC)"
    ) in capsys.readouterr().out
    write_image_tree(tree, splits=("test",), classes=(composed,), per_class=1)
    with pytest.raises(InputError, match="are one name written in two Unicode forms"):
        image_folders(tree, None)


@pytest.mark.parametrize("name", ["valid", "validation"])
def test_valid_and_validation_folders_are_the_validation_split(tmp_path, capsys, name):
    tree = write_image_tree(tmp_path / "images", splits=("train", name), per_class=3)
    _, _, test, info = dataloaders(["--quick", "--data-dir", str(tree), "--batch-size", "2"])
    assert len(test.dataset) == 9 and info.test_split == f"{name}/"
    assert f"{name}/ is read as val/" in capsys.readouterr().out
    (tree / "val").mkdir()
    with pytest.raises(InputError, match=f"has val/ and {name}/, each a validation split"):
        image_folders(tree, None)


def test_image_files_that_are_not_used_are_counted_and_said(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    cat = tree / "train" / "cat"
    saved(Image.fromarray(PICTURE), cat, "photo.jfif", format="JPEG")  # read: JPEG
    saved(Image.fromarray(PICTURE), cat, "anim.gif")  # read: its first frame
    saved(Image.fromarray(PICTURE), cat, "icon.ico")  # Pillow opens it; not read
    (cat / "IMG_0001.heic").write_bytes(b"\0\0\0\x18ftypheic")  # iPhone's; Pillow needs a plugin
    (cat / "notes.txt").write_text("not an image, not said")
    saved(Image.fromarray(PICTURE), tree / "train", "loose.png")
    found = image_folders(tree, None)
    assert len(found["train"]) == 6
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "not used" in line)
    assert line.startswith(
        f"train/: 3 image file(s) not used: 1 beside the class folders, such as "
        f"{tree / 'train' / 'loose.png'} (move them into their class folder); 1 .heic, 1 .ico "
        f"files, such as {cat / 'IMG_0001.heic'}, an ending this loader does not read (it reads "
        ".jpg .jpeg .png"
    )


def test_byte_identical_copies_of_training_images_in_test_are_counted(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    for index in range(2):
        shutil.copy(
            tree / "train" / "cat" / f"{index}.png", tree / "test" / "dog" / f"c{index}.png"
        )
    (tree / "test" / "dog" / "link.png").symlink_to(tree / "train" / "dog" / "0.png")
    image_folders(tree, None)
    printed = capsys.readouterr().out
    assert (
        f"note: 2 file(s) of test/ are byte-for-byte copies of files in train/, such as "
        f"{tree / 'test' / 'dog' / 'c0.png'} (a copy of {tree / 'train' / 'cat' / '0.png'}); "
        "test/ is not unseen data: delete the copies from one of them"
    ) in printed
    assert "1 file(s) of test/ are also in train/ (links to the same file)" in printed
