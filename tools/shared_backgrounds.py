"""Which evaluation pairs share their clean background with a training image. Public deraining
sets reuse the same photos under different rain (SIRR19 and JORDER-E's samples reuse some of
Rain100L's backgrounds), so a set that looks unseen may hold images the model trained on.

    python -m tools.shared_backgrounds TARGET_DIR --train data/presets/rain100/train.csv
    python -m tools.shared_backgrounds ../shared/data/SIRR19/target --train TRAIN_DIR > seen.txt

TARGET_DIR: the clean images of the evaluation set. --train (repeatable): a folder of clean
images or a pairs CSV (its clean column). Two images match when their fingerprints (luma,
turned to landscape, resized to 96x64) differ by less than --tolerance in mean squared 8-bit
levels: a crop of a few pixels or a re-encoding stays far below it, two different photos are
hundreds to thousands apart. Prints the stem of each evaluation image that matches (the ones to
leave out; `python -m tools.paired --exclude` reads the list) and, on stderr, what it matched.
Exits 1 if an image cannot be read.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.errors import InputError
from helpers.images import read_rgb
from helpers.metrics import index_by_stem
from helpers.pairs import read_pairs

FINGERPRINT = (96, 64)


def fingerprint(path):
    """(64, 96) float32 luma of the image, portrait images turned to landscape first."""
    luma = Image.fromarray(read_rgb(path)).convert("L")
    if luma.height > luma.width:
        luma = luma.transpose(Image.Transpose.ROTATE_90)
    return np.asarray(luma.resize(FINGERPRINT, Image.Resampling.BILINEAR), np.float32)


def clean_paths(source):
    """The clean images of a folder (by name) or of a pairs CSV (helpers.pairs.read_pairs:
    its clean column, relative paths taken from the CSV's folder)."""
    source = Path(source)
    if source.is_dir():
        return sorted(index_by_stem(source)[0].values())
    return [clean for clean, _ in read_pairs(source)]


def shared(target_dir, train_sources, tolerance=30.0):
    """[(evaluation stem, training path, distance)] for the evaluation images whose background
    a training image shares, in stem order."""
    train = [(p, fingerprint(p)) for s in train_sources for p in clean_paths(s)]
    if not train:
        raise InputError("no training images found in " + ", ".join(map(str, train_sources)))
    stack = np.stack([f for _, f in train])
    out = []
    for stem, path in sorted(index_by_stem(target_dir)[0].items()):
        d = ((stack - fingerprint(path)) ** 2).mean(axis=(1, 2))
        k = int(d.argmin())
        if d[k] < tolerance:
            out.append((stem, train[k][0], float(d[k])))
    return out


def read_stems(path):
    """The image stems listed in a file, one a line (what main prints on stdout): the set
    that tools.paired and tools.error_bands --exclude leave out."""
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.shared_backgrounds",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("target_dir", metavar="TARGET_DIR", help="the evaluation set's clean images")
    p.add_argument("--train", action="append", required=True, metavar="DIR_OR_CSV",
                   help="training clean images: a folder or a pairs CSV (repeatable)")
    p.add_argument("--tolerance", type=float, default=30.0,
                   help="match below this mean squared difference of the fingerprints")
    a = p.parse_args(argv)
    try:
        if not Path(a.target_dir).is_dir():
            raise InputError(f"{a.target_dir}: no such folder")
        found = shared(a.target_dir, a.train, a.tolerance)
    except (OSError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for stem, train_path, dist in found:
        print(stem)
        print(f"{stem}: the background of {train_path} (distance {dist:.1f})", file=sys.stderr)
    print(f"{len(found)} of the images in {a.target_dir} share a training background",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
