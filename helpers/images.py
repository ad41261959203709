"""Reading and writing images and files safely: one place for the checks every script needs.

Every ordinary image is read, not refused: 8-bit and 16-bit, grayscale and colour, with or
without an alpha channel, palette images, JPEGs with an EXIF orientation (turned upright first).
`read_picture` keeps what a derained result needs to be written back in the input's own form
(grayscale stays grayscale, alpha passes through untouched, 16 bits stay 16 bits; `Picture`),
`read_rgb` gives the 8-bit RGB view that training data and the metrics use. Only a file that
cannot be decoded is refused: ImageError, whose message names the file and what to do. Writers
go through a temporary file in the same folder and an atomic rename, so an interrupted run never
leaves a half-written file. 16-bit PNGs are read and written with pypng (Pillow reads 16-bit
colour PNGs as 8-bit).
"""
import contextlib
import os
import re
import tempfile

import numpy as np
import png
from PIL import Image, ImageOps, UnidentifiedImageError

from helpers.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L"): colour -> grayscale


class ImageError(InputError):
    """An image that cannot be used; the message names the file and the remedy."""


def is_image_file(path):
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def natural_key(text):
    """Sort key comparing digit runs as numbers: "2.png" < "10.png", "rain-9" < "rain-10"."""
    text = str(text)
    parts = tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower())
                  for tok in re.split(r"(\d+)", text) if tok)
    # "rain-001" and "rain-1" compare equal above; the raw text keeps the order total.
    return parts, text


def output_names(paths):
    """The output stem of each input path, unique within the list: its own stem, or, when several
    inputs share a stem, '<parent folder>_<stem>' (then a numeric suffix if that still
    collides). Compared without case, so no two outputs can land on one file on a
    case-insensitive file system. derain.py, the final evaluation and helpers.metrics all name
    (and find) outputs this way."""
    from pathlib import Path
    paths = [Path(p) for p in paths]
    counts = {}
    for p in paths:
        counts[p.stem.casefold()] = counts.get(p.stem.casefold(), 0) + 1
    plain = {p.stem.casefold() for p in paths if counts[p.stem.casefold()] == 1}
    used, names = set(), []
    for p in paths:
        stem = p.stem
        name = stem if counts[stem.casefold()] == 1 else f"{p.parent.name or 'input'}_{stem}"
        base, k = name, 2
        while name.casefold() in used or (name != stem and name.casefold() in plain):
            name, k = f"{base}_{k}", k + 1
        used.add(name.casefold())
        names.append(name)
    return names


def check_image(path):
    """Fully decode `path`; return (width, height). Raises ImageError."""
    return read_picture(path).size


class Picture:
    """An image as read: its colour as float64 RGB (H, W, 3) in [0, 1] at full precision
    (grayscale replicated to three channels), its alpha channel as stored (or None), and its
    form: grayscale or colour, 8 or 16 bits. `restore` turns a derained RGB image back into that
    form; write_picture writes it as a PNG."""

    def __init__(self, rgb, alpha=None, gray=False, depth=8, path=""):
        self.rgb, self.alpha, self.gray, self.depth, self.path = rgb, alpha, gray, depth, path

    @property
    def size(self):
        return self.rgb.shape[1], self.rgb.shape[0]

    @property
    def peak(self):
        return 65535 if self.depth == 16 else 255

    def rgb_u8(self):
        """The 8-bit RGB view (H, W, 3) uint8: what the metrics and the training data use."""
        return to_uint8(self.rgb.transpose(2, 0, 1))

    def restore(self, rgb):
        """float RGB (H, W, 3) in [0, 1] (clipped here) -> an array in this picture's form:
        (H, W) or (H, W, 3), plus the original alpha as a last channel; uint8 or uint16."""
        rgb = np.clip(np.asarray(rgb, np.float64), 0, 1)
        out = rgb @ np.array(LUMA) if self.gray else rgb
        dtype = np.uint16 if self.depth == 16 else np.uint8
        out = np.rint(out * self.peak).astype(dtype)
        if self.alpha is not None:
            out = np.dstack([out, self.alpha.astype(dtype)])
        return out

    def describe(self):
        kind = "grayscale" if self.gray else "RGB"
        return f"{kind}{' + alpha' if self.alpha is not None else ''}, {self.depth}-bit"


def _is_16bit_png(path):
    with open(path, "rb") as f:
        head = f.read(33)
    return head[:8] == PNG_SIGNATURE and len(head) >= 25 and head[24] == 16


def _read_png16(path):
    """A 16-bit PNG through pypng: (values (H, W, planes) uint16, greyscale, alpha)."""
    try:
        w, h, rows, info = png.Reader(filename=path).asDirect()
        data = np.vstack([np.asarray(r, np.uint16) for r in rows])
    except (png.Error, OSError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: cannot be read as a 16-bit PNG ({e}); re-export or remove "
                         "it") from e
    return data.reshape(h, w, info["planes"]), info["greyscale"], info["alpha"]


def read_picture(path):
    """Read any ordinary image -> Picture. Raises ImageError naming a missing or undecodable
    file (or one of a kind that has no colour image in it, e.g. floating-point data)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    if _is_16bit_png(path):
        data, gray, alpha = _read_png16(path)
        colour = data[..., :1 if gray else 3].astype(np.float64) / 65535
        return Picture(np.repeat(colour, 3, axis=2) if gray else colour,
                       data[..., -1] if alpha else None, bool(gray), 16, path)
    try:
        img = Image.open(path)
        img.load()  # decodes everything: a truncated file fails here, not later in training
        img = ImageOps.exif_transpose(img)  # a photo's EXIF orientation: upright first
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot be read as an image ({e}); re-export or remove it") from e
    mode = img.mode
    if mode == "P":  # a palette: its colours (and transparency, when it has some)
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    mode = img.mode
    arr = np.asarray(img)
    if mode in ("I;16", "I;16B", "I;16L", "I") and arr.dtype != np.float32:
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"{path}: {mode} image with values outside 0..65535; convert it "
                             "to an 8- or 16-bit image first")
        g = arr.astype(np.float64) / 65535
        return Picture(np.repeat(g[..., None], 3, axis=2), None, True, 16, path)
    if mode == "L":
        g = arr.astype(np.float64) / 255
        return Picture(np.repeat(g[..., None], 3, axis=2), None, True, 8, path)
    if mode == "LA":
        g = arr[..., 0].astype(np.float64) / 255
        return Picture(np.repeat(g[..., None], 3, axis=2), arr[..., 1].copy(), True, 8, path)
    if mode == "RGB":
        return Picture(arr.astype(np.float64) / 255, None, False, 8, path)
    if mode == "RGBA":
        return Picture(arr[..., :3].astype(np.float64) / 255, arr[..., 3].copy(), False, 8, path)
    raise ImageError(f"{path}: unsupported image mode {mode} (e.g. floating-point data); "
                     "convert it to an 8- or 16-bit RGB or grayscale image first")


def read_rgb(path):
    """Read any ordinary image as 8-bit RGB, uint8 (H, W, 3): grayscale replicated, alpha left
    out, 16 bits rounded to 8, EXIF orientation applied. Raises ImageError for a missing,
    corrupt or truncated file."""
    return read_picture(path).rgb_u8()


def write_picture(path, values):
    """Write what Picture.restore returned as a PNG, atomically: (H, W) or (H, W, 1..4 channels)
    uint8 or uint16 (16-bit through pypng, 8-bit through Pillow)."""
    values = np.asarray(values)
    planes = 1 if values.ndim == 2 else values.shape[2]
    with atomic_path(path) as tmp:
        if values.dtype == np.uint16:
            h, w = values.shape[:2]
            writer = png.Writer(w, h, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16)
            with open(tmp, "wb") as f:
                writer.write(f, values.reshape(h, w * planes).tolist())
        else:
            Image.fromarray(values.astype(np.uint8)).save(tmp, format="PNG")


def to_uint8(img):
    """float (3, H, W) in [0, 1] (numpy or torch) -> uint8 (H, W, 3), rounded and clipped."""
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy()
    return np.clip(np.rint(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(
        np.uint8).transpose(1, 2, 0)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it normal permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_rgb(path, img_u8):
    """Write a uint8 (H, W, 3) image atomically; the format follows the extension."""
    with atomic_path(path) as tmp:
        fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
        Image.fromarray(img_u8).save(tmp, format=fmt)


def write_text(path, text):
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
