"""Reading and writing images and files safely: one place for the checks every script needs.

A bad file never crashes a script with a bare traceback: `read_rgb` raises ImageError whose
message names the file, says what is wrong and what to do. Writers go through a temporary file in
the same folder and an atomic rename, so an interrupted run never leaves a half-written file.
"""
import contextlib
import os
import re
import tempfile

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
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


def check_image(path):
    """Open the header and fully decode `path`; return (width, height). Raises ImageError."""
    img = _open(path)
    return img.size


def _open(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()  # decodes everything: a truncated file fails here, not later in training
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot be read as an image ({e}); re-export or remove it") from e
    mode = img.mode
    if mode in ("L", "LA", "1"):
        raise ImageError(f"{path}: grayscale image (mode {mode}); the model needs 8-bit RGB, "
                         "convert it first (e.g. PIL: Image.open(f).convert('RGB').save(f))")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        raise ImageError(f"{path}: image has an alpha channel (mode {mode}); flatten it to 8-bit "
                         "RGB first (e.g. PIL: Image.open(f).convert('RGB').save(f))")
    if mode.startswith("I") or mode == "F" or mode.endswith("16") or mode in ("RGB;16", "RGBA;16"):
        raise ImageError(f"{path}: 16-bit or float image (mode {mode}); convert it to 8-bit RGB "
                         "first")
    if mode not in ("RGB", "P"):
        raise ImageError(f"{path}: unsupported colour mode {mode}; convert it to 8-bit RGB first")
    return img


def read_rgb(path):
    """Read an 8-bit RGB image as a uint8 array (H, W, 3). Raises ImageError for a missing,
    corrupt, truncated, grayscale, RGBA or 16-bit file."""
    img = _open(path)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


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
