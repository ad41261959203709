"""How often the condition clip binds: the share of a set's normalised condition values (the
rainy window's spectrum, normalised by a checkpoint's statistics) beyond representations'
COND_CLIP, counted over every window derain.py would cut from each image.

    python -m tools.cond_clip --ckpt CKPT FOLDER [FOLDER ...] [--max-images 40]

One line a folder: the images counted, the share of values clipped (the mean over images and
the largest image's), and the largest normalised magnitude seen. For a pixel-state checkpoint
there is no clip (its condition is the image) and the tool says so. Exits 1 if an image could
not be read (named on stderr) or a folder holds none, 2 for a bad checkpoint.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from checkpoint import CheckpointError, load_derainer
from helpers.images import ImageError, is_image_file, natural_key, read_rgb
from helpers.tiling import OVERLAP, cut_windows, pad_to, window_boxes
from representations.base import COND_CLIP, FourierRepresentation


def condition_magnitudes(rep, rgb):
    """|normalised condition| of every window of one uint8 (H, W, 3) image, before the clip."""
    image = pad_to(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0, rep.crop)
    t = torch.from_numpy(np.ascontiguousarray(image))
    boxes = window_boxes(t.shape[1], t.shape[2], rep.crop, OVERLAP)
    windows = cut_windows(t, boxes, rep.crop)
    return rep.condition(rep.transform(windows), clip=False).abs()


def count_folder(rep, folder, max_images):
    """(images counted, mean share clipped, largest image's share, largest magnitude, errors)."""
    files = sorted((f for f in Path(folder).iterdir() if is_image_file(f)),
                   key=lambda f: natural_key(f.name))[:max_images]
    shares, peak, errors = [], 0.0, []
    for f in files:
        try:
            mag = condition_magnitudes(rep, read_rgb(f))
        except ImageError as e:
            errors.append(str(e))
            continue
        shares.append((mag > COND_CLIP).float().mean().item())
        peak = max(peak, mag.max().item())
    return len(shares), (float(np.mean(shares)) if shares else float("nan")), \
        (max(shares) if shares else float("nan")), peak, errors


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.cond_clip",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("folders", metavar="FOLDER", nargs="+", help="folders of rainy images")
    p.add_argument("--ckpt", required=True, help="a checkpoint (its statistics and window size)")
    p.add_argument("--max-images", type=int, default=40, help="the first N of each folder")
    a = p.parse_args(argv)
    if a.max_images < 1:
        p.error("--max-images must be at least 1")
    torch.set_num_threads(1)
    try:
        derainer, _ = load_derainer(a.ckpt)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = derainer.rep
    if not isinstance(rep, FourierRepresentation):
        print(f"{a.ckpt}: a {rep.name} checkpoint; its condition is the image, and COND_CLIP "
              "does not apply")
        return 0
    status = 0
    for folder in a.folders:
        try:
            n, mean, worst, peak, errors = count_folder(rep, folder, a.max_images)
        except OSError as e:
            print(f"error: {folder}: {e}", file=sys.stderr)
            status = 1
            continue
        for m in errors:
            print(f"error: {m}", file=sys.stderr)
        if errors or not n:
            status = 1
        if not n:
            print(f"error: {folder}: no readable image", file=sys.stderr)
            continue
        print(f"{folder}: {n} images, {100 * mean:.4f} % of condition values beyond "
              f"+-{COND_CLIP:g} (largest image {100 * worst:.4f} %), largest |value| {peak:.1f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
