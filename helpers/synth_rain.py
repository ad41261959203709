"""Synthetic rain streaks, paired rain/clean sets, and the small default dataset built offline.

Why this exists: the repository must train and be tested without the real Rain14000/Rain100
downloads. `build_default` makes a small paired set from photos that ship inside installed
packages (scikit-image's bundled data, matplotlib's sample data), so nothing is fetched.

Usage
-----
    python -m tools.synth_rain                   # build data/synthetic (at once if complete)
    python -m tools.synth_rain --force           # rebuild it from scratch
    python -m tools.synth_rain photos/ a.jpg --out data/my_rain --variants 4 --seed 0 [--size 256]
                                                 # paired set from your own clean photos

    from helpers.synth_rain import add_rain, write_paired_set, build_default
    rainy = add_rain(clean_u8, np.random.default_rng(0))          # uint8 (H, W, 3) -> same
    info = build_default()                                        # {"train": ..., "val": ...}

Layout written (Rain14000 naming, clean and rainy in ONE folder):
    DIR/1.png  DIR/1_1.png ... DIR/1_K.png   DIR/2.png  DIR/2_1.png ...
The default set: data/synthetic/{train,val}/ as above plus data/synthetic/manifest.json,
written last, which marks the set complete.

The rain model, per layer: sparse random seed points (density) with random intensities, convolved
with an anti-aliased line kernel (length, angle from vertical) widened by a small disk (width),
then screen-blended onto the photo with a brightness factor; an optional haze term mixes in a
bright grey "veil" (contrast loss). A second, fainter, thinner and shorter layer imitates rain
further away. Everything random comes from the `rng` argument, so a seed reproduces an image.
"""
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, signal

try:  # POSIX only; on other systems concurrent builds are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

if __package__ in (None, ""):  # allow `python helpers/synth_rain.py` as well as `-m`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers.images import ImageError, is_image_file, read_rgb, write_rgb, write_text
else:
    from .images import ImageError, is_image_file, read_rgb, write_rgb, write_text

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SIZE = 256.0  # parameter ranges below are stated for a 256-px image and scaled from it

# Default ranges (at REFERENCE_SIZE). Chosen by eye against Rain100L/H and Rain14000: from light
# drizzle (a few % of pixels covered) to heavy rain (~40 %), streaks 1-2.5 px wide.
DENSITY_RANGE = (0.0008, 0.004)  # fraction of pixels that start a streak
LENGTH_RANGE = (10.0, 40.0)      # streak length, px
ANGLE_RANGE = (-30.0, 30.0)      # degrees from vertical
WIDTH_RANGE = (1.0, 2.5)         # streak width, px
BRIGHTNESS_RANGE = (0.5, 0.9)    # peak opacity of the streak layer in the screen blend
HAZE_RANGE = (0.0, 0.12)         # share of the bright veil mixed in (contrast loss)

CLEAN_RE = re.compile(r"^(\d+)\.png$")
RAIN_RE = re.compile(r"^(\d+)_(\d+)\.png$")


# --------------------------------------------------------------------------------------------
# rain synthesis
# --------------------------------------------------------------------------------------------

def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError("rng must be a numpy Generator (np.random.default_rng(seed)) or an int seed; "
                    f"got {type(rng).__name__}")


def streak_kernel(length, angle, width=1.0):
    """Float kernel of one rain streak: a line of `length` px at `angle` degrees from vertical
    (positive: the streak runs from top-left to bottom-right), `width` px wide. A pixel on the
    streak's axis has a value of about 1, so a seed of intensity v leaves a streak of about v."""
    length = max(float(length), 1.0)
    width = max(float(width), 1.0)
    theta = math.radians(angle)
    dy, dx = math.cos(theta), math.sin(theta)  # image coordinates, y grows downwards
    # Half extent: the line's half length plus the disk radius plus one pixel for the splat.
    r = int(math.ceil(length / 2 + width / 2)) + 1
    size = 2 * r + 1
    line = np.zeros((size, size), np.float64)
    # Sample the line densely and splat bilinearly: an anti-aliased line whose mass per unit
    # length is 1 at any angle (a nearest-pixel line would flicker with the angle).
    n = max(int(math.ceil(length * 4)), 2)
    t = np.linspace(-length / 2, length / 2, n)
    step = length / (n - 1)
    # Soft ends: real streaks fade at both ends (the drop enters and leaves the exposure).
    w = step * (1.0 - 0.6 * np.abs(2 * t / length) ** 4)
    y, x = r + t * dy, r + t * dx
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    for oy, ox, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                       (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(line, (y0 + oy, x0 + ox), w * wt)
    # Width: convolve with an anti-aliased disk of diameter `width` whose centre weight is 1,
    # so the axis value stays ~1 and the streak just gets wider.
    rd = int(math.ceil(width / 2))
    yy, xx = np.mgrid[-rd:rd + 1, -rd:rd + 1]
    disk = np.clip(width / 2 + 0.5 - np.hypot(yy, xx), 0.0, 1.0)
    kernel = ndimage.convolve(line, disk, mode="constant")
    # A bilinear splat of a diagonal line spreads each unit of mass over two pixels, which
    # makes diagonal streaks look dimmer than vertical ones; rescale so the axis peaks at ~1.
    peak = np.percentile(kernel[kernel > 0.05 * kernel.max()], 90)
    return kernel / max(peak, 1e-6)


def _streak_layer(shape, rng, density, length, angle, width):
    """One layer of streaks in [0, 1], shape (H, W)."""
    h, w = shape
    k = streak_kernel(length, angle, width)
    kh, kw = k.shape
    # Seeds live on a canvas padded by the kernel size so streaks entering from outside the
    # frame appear too; a 'valid' convolution crops back to exactly (H, W) with no border gap.
    ph, pw = h + kh - 1, w + kw - 1
    n = rng.binomial(ph * pw, min(max(density, 0.0), 1.0))
    seeds = np.zeros(ph * pw, np.float64)
    # Random intensities per drop: nearer/bigger drops catch more light.
    seeds[rng.integers(0, ph * pw, size=n)] = rng.uniform(0.35, 1.0, size=n)
    layer = signal.fftconvolve(seeds.reshape(ph, pw), k, mode="valid")
    # FFT round-off leaves tiny negatives; overlapping streaks saturate like real highlights.
    return np.clip(layer, 0.0, 1.0)


def add_rain(img_u8, rng, density=None, length=None, angle=None, width=None, brightness=None,
             haze=None, layers=None, return_params=False):
    """Add synthetic rain streaks to an 8-bit RGB image.

    img_u8: uint8 (H, W, 3). rng: numpy Generator (or an int seed); it is the only source of
    randomness, so the same generator state gives the same output.
    Each parameter left as None is drawn from its range (lengths and widths are given for a
    256-px image and scaled by min(H, W) / 256; density is divided by that scale squared so the
    covered fraction looks alike at any size):
        density     fraction of pixels that start a streak          [0.0008, 0.004] / s^2
        length      streak length in px                             [10, 40] * s
        angle       degrees from vertical, + = top-left to bottom-right   [-30, 30]
        width       streak width in px (>= 1)                       [1, 2.5] * s
        brightness  opacity of the streaks in the screen blend       [0.5, 0.9]
        haze        share of a bright grey veil mixed in (contrast loss)  [0, 0.12]
        layers      1 or 2; layer 2 is farther rain: denser, shorter, thinner, fainter,
                    at nearly the same angle. Default: 1 or 2 with equal chance.
    Returns uint8 (H, W, 3); with return_params=True returns (image, dict of the values used).
    """
    img = np.asarray(img_u8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"add_rain needs a uint8 (H, W, 3) RGB image; got dtype {img.dtype}, "
                         f"shape {img.shape}")
    rng = _as_rng(rng)
    h, w = img.shape[:2]
    s = min(h, w) / REFERENCE_SIZE
    # Draw every parameter in a fixed order whether or not it is given, so fixing one parameter
    # does not shift the random stream of the others (easier to compare settings).
    draws = rng.uniform(size=7)

    def pick(value, lo, hi, u):
        return float(value) if value is not None else float(lo + (hi - lo) * u)

    density = pick(density, DENSITY_RANGE[0] / s ** 2, DENSITY_RANGE[1] / s ** 2, draws[0])
    length = pick(length, LENGTH_RANGE[0] * s, LENGTH_RANGE[1] * s, draws[1])
    angle = pick(angle, *ANGLE_RANGE, draws[2])
    width = max(1.0, pick(width, WIDTH_RANGE[0] * s, WIDTH_RANGE[1] * s, draws[3]))
    brightness = pick(brightness, *BRIGHTNESS_RANGE, draws[4])
    haze = pick(haze, *HAZE_RANGE, draws[5])
    layers = int(layers) if layers is not None else (1 if draws[6] < 0.5 else 2)
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")

    specs = [dict(density=density, length=length, angle=angle, width=width,
                  brightness=brightness)]
    for _ in range(layers - 1):
        f = float(rng.uniform(0.4, 0.7))  # farther rain looks shorter, thinner and dimmer
        specs.append(dict(density=float(density * rng.uniform(1.0, 2.0)),
                          length=max(length * f, 2.0),
                          angle=float(angle + rng.normal(0.0, 3.0)),
                          width=max(width * f, 1.0),
                          brightness=float(brightness * rng.uniform(0.4, 0.7))))

    # Screen-combine the layers: 1 - prod(1 - b_k * S_k); stays in [0, 1] however many overlap.
    keep = np.ones((h, w), np.float64)
    for spec in specs:
        layer = _streak_layer((h, w), rng, spec["density"], spec["length"], spec["angle"],
                              spec["width"])
        keep *= 1.0 - spec["brightness"] * layer
    rain = (1.0 - keep)[..., None]

    x = img.astype(np.float64) / 255.0
    # Screen blend: streaks brighten, never darken, and cannot overflow white, like light
    # scattered by drops. The same value in R, G, B: rain is colourless.
    out = 1.0 - (1.0 - x) * (1.0 - rain)
    veil = float(rng.uniform(0.75, 0.95))  # drawn even when haze is 0: a stable random stream
    if haze > 0:
        out = out * (1.0 - haze) + haze * veil
    out_u8 = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if return_params:
        params = dict(density=density, length=length, angle=angle, width=width,
                      brightness=brightness, haze=haze, layers=layers, veil=veil, specs=specs)
        return out_u8, params
    return out_u8


# --------------------------------------------------------------------------------------------
# paired sets
# --------------------------------------------------------------------------------------------

def _resize(img, out_hw):
    oh, ow = out_hw
    if img.shape[:2] == (oh, ow):
        return img
    return np.asarray(Image.fromarray(img).resize((ow, oh), Image.LANCZOS), dtype=np.uint8)


def _resize_shorter(img, size):
    h, w = img.shape[:2]
    f = size / min(h, w)
    return _resize(img, (max(1, round(h * f)), max(1, round(w * f))))


def _load_source(src):
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
            raise ValueError(f"source arrays must be uint8 (H, W, 3); got {src.dtype} {src.shape}")
        return src
    return read_rgb(src)


def write_paired_set(sources, out_dir, variants, rng, size=None, start_id=1, rain_kwargs=None):
    """Write a paired set in Rain14000 naming into ONE folder: clean `ID.png` and rainy
    `ID_1.png` ... `ID_K.png` (K = variants), IDs start_id, start_id + 1, ... in source order.

    sources: image paths and/or uint8 (H, W, 3) arrays. size: None keeps each image's size; an
    int resizes so the shorter side is `size` (aspect kept). rain_kwargs: fixed add_rain
    parameters (e.g. {"haze": 0}); the others are drawn from `rng` for every variant.
    Rainy files `ID_k.png` with k > variants left by an earlier run for these IDs are removed,
    or a pairing script would pair them with the new clean image.
    Returns a list of {"id", "clean", "rain": [paths]}.
    """
    rng = _as_rng(rng)
    variants = int(variants)
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rain_kwargs = dict(rain_kwargs or {})
    records = []
    for i, src in enumerate(sources):
        idx = start_id + i
        img = _load_source(src)
        if size is not None:
            img = _resize_shorter(img, int(size))
        clean_path = out_dir / f"{idx}.png"
        write_rgb(clean_path, img)
        rain_paths = []
        for k in range(1, variants + 1):
            p = out_dir / f"{idx}_{k}.png"
            write_rgb(p, add_rain(img, rng, **rain_kwargs))
            rain_paths.append(p)
        for stale in out_dir.glob(f"{idx}_*.png"):
            m = RAIN_RE.match(stale.name)
            if m and int(m.group(1)) == idx and int(m.group(2)) > variants:
                stale.unlink()
        records.append({"id": idx, "clean": clean_path, "rain": rain_paths})
    return records


# --------------------------------------------------------------------------------------------
# the embedded default dataset
# --------------------------------------------------------------------------------------------

def _skimage(name, index=None):
    def load():
        import skimage.data
        img = getattr(skimage.data, name)()
        return img[index] if index is not None else img
    return load


def _mpl_sample(filename):
    def load():
        from matplotlib import cbook
        return read_rgb(cbook.get_sample_data(filename, asfileobj=False))
    return load


# Photographs that ship inside the wheels (checked with the network disabled). Left out on
# purpose: brick/grass/gravel/page (textures, text), retina/immunohistochemistry/hubble (not
# everyday scenes), logo/colorwheel (graphics), cells3d/kidney/... (need a pooch download).
PHOTO_LOADERS = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _skimage("stereo_motorcycle", 0),
    "motorcycle_right": _skimage("stereo_motorcycle", 1),
    "chelsea": _skimage("chelsea"),
    "grace_hopper": _mpl_sample("grace_hopper.jpg"),
    "camera": _skimage("camera"),  # grayscale photos, replicated to RGB
    "coins": _skimage("coins"),
}
# Separate photos for validation, so validation never sees a scene the model trained on
# (the two motorcycle views are the same scene, so both stay in train).
TRAIN_SOURCES = ("astronaut", "coffee", "rocket", "motorcycle_left", "motorcycle_right")
VAL_SOURCES = ("chelsea", "grace_hopper", "camera", "coins")

MANIFEST_VERSION = 2
DEFAULT_SETTINGS = {
    "train": {"sources": list(TRAIN_SOURCES), "crops_per_source": 12, "variants": 5,
              "sizes": [128, 160, 192], "zooms": [1.0, 1.75, 2.5]},
    "val": {"sources": list(VAL_SOURCES), "crops_per_source": 3, "variants": 1,
            "sizes": [128, 160], "zooms": [1.5, 2.5]},
}


def load_photo(name):
    """A bundled colour photo as uint8 (H, W, 3); grayscale/alpha are converted to RGB."""
    img = np.asarray(PHOTO_LOADERS[name]())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * (255.0 if img.max() <= 1 else 1.0)),
                      0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _random_crops(img, rng, count, sizes, zooms):
    """`count` square crops: output side from `sizes`; the crop covers side*zoom source pixels
    (capped by the photo) and is resized down, so the set holds a couple of scales."""
    h, w = img.shape[:2]
    crops = []
    for _ in range(count):
        out = int(rng.choice(sizes))
        side = int(min(round(out * float(rng.choice(zooms))), h, w))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crops.append(_resize(img[y:y + side, x:x + side], (out, out)))
    return crops


def _resolve_root(root):
    # A relative root is taken from the repository root, so the default set lands in the same
    # place whatever the working directory of the script that asks for it.
    root = Path(root)
    return root if root.is_absolute() else REPO / root


def _expected_files(folder, split):
    for idx in range(1, split["clean"] + 1):
        yield folder / f"{idx}.png"
        for k in range(1, split["variants"] + 1):
            yield folder / f"{idx}_{k}.png"


def _complete(root, seed):
    """The manifest's summary when root holds a complete default set for `seed`, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (manifest.get("version") != MANIFEST_VERSION or manifest.get("seed") != seed
            or manifest.get("settings") != DEFAULT_SETTINGS):
        return None
    for name in ("train", "val"):
        split = manifest["splits"][name]
        if not all(p.is_file() for p in _expected_files(root / name, split)):
            return None
    return manifest


def _summary(root, manifest, built, seconds):
    out = {"root": str(root), "built": built, "seconds": round(seconds, 3)}
    for name in ("train", "val"):
        split = manifest["splits"][name]
        out[name] = str(root / name)
        out[f"{name}_clean"] = split["clean"]
        out[f"{name}_pairs"] = split["pairs"]
        out[f"{name}_sources"] = list(split["sources"])
    return out


def _clear_split(folder):
    # Only files this module writes (and temporaries of an interrupted write) are removed.
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() and (CLEAN_RE.match(p.name) or RAIN_RE.match(p.name)
                            or (p.name.startswith(".") and ".tmp" in p.name)):
            p.unlink()


class _Lock:
    """An exclusive lock file, so two processes asking for the default set at once do not
    write into the same folders; the second waits and then finds the set complete."""

    def __init__(self, path):
        self.path = path
        self.f = None

    def __enter__(self):
        if fcntl is not None:
            self.f = open(self.path, "a")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


def build_default(root="data/synthetic", seed=0, force=False):
    """Build the embedded default paired set from bundled photos (no downloads).

    root/train: crops of TRAIN_SOURCES, root/val: crops of VAL_SOURCES (disjoint photos), both in
    Rain14000 naming (ID.png, ID_k.png); root/manifest.json is written last and marks the set
    complete. A relative root is taken from the repository root. If the set is complete for this
    seed and these settings, returns at once without writing, unless force.
    Returns {"root", "train", "val", "train_clean", "train_pairs", "val_clean", "val_pairs",
    "train_sources", "val_sources", "built", "seconds"}.
    """
    t0 = time.perf_counter()
    root = _resolve_root(root)
    seed = int(seed)
    if not force:
        manifest = _complete(root, seed)
        if manifest is not None:
            return _summary(root, manifest, False, time.perf_counter() - t0)
    root.mkdir(parents=True, exist_ok=True)
    with _Lock(root / ".build.lock"):
        if not force:  # another process may have finished it while we waited for the lock
            manifest = _complete(root, seed)
            if manifest is not None:
                return _summary(root, manifest, False, time.perf_counter() - t0)
        # Drop the manifest first: an interrupted rebuild must never look complete.
        (root / "manifest.json").unlink(missing_ok=True)
        # Independent streams per split: changing the train recipe leaves val unchanged.
        ss_train, ss_val = np.random.SeedSequence(seed).spawn(2)
        splits = {}
        for name, ss in (("train", ss_train), ("val", ss_val)):
            cfg = DEFAULT_SETTINGS[name]
            folder = root / name
            _clear_split(folder)
            folder.mkdir(parents=True, exist_ok=True)
            crop_rng, rain_rng = (np.random.default_rng(s) for s in ss.spawn(2))
            crops, origin = [], {}
            for src in cfg["sources"]:
                photo = load_photo(src)
                for c in _random_crops(photo, crop_rng, cfg["crops_per_source"], cfg["sizes"],
                                       cfg["zooms"]):
                    crops.append(c)
                    origin[str(len(crops))] = src
            write_paired_set(crops, folder, cfg["variants"], rain_rng)
            splits[name] = {"folder": name, "sources": list(cfg["sources"]),
                            "clean": len(crops), "variants": cfg["variants"],
                            "pairs": len(crops) * cfg["variants"], "origin": origin}
        seconds = time.perf_counter() - t0
        manifest = {"version": MANIFEST_VERSION, "seed": seed, "settings": DEFAULT_SETTINGS,
                    "layout": "Rain14000 naming in one folder: ID.png clean, ID_k.png rainy",
                    "splits": splits, "build_seconds": round(seconds, 3)}
        write_text(root / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return _summary(root, manifest, True, seconds)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def collect_images(items):
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q)))
        elif p.exists():
            paths.append(p)
        else:
            raise ImageError(f"{p}: file or folder not found")
    if not paths:
        raise ImageError(f"no images found in {', '.join(map(str, items))} "
                         f"(extensions: .png .jpg .jpeg .bmp .tif .tiff .webp)")
    return paths
