"""Compare two methods image by image from the per-image scores derain.py writes (`--eval`:
OUT/scores.csv), pooling seeds: each image's score is the mean over a method's seeds, and the
difference A - B is averaged over the images both have, with its standard error over them and
the images A wins (the same comparison as `ablate.py --compare`, for outputs made outside a
study, e.g. on other data sets).

    python -m tools.paired OUT_A_SEED0+OUT_A_SEED1 OUT_B_SEED0+OUT_B_SEED1 [--exclude seen.txt]
    python -m tools.paired out/fourier/scores.csv out/pixels/scores.csv --labels fourier,pixels

Each side is one or more derain.py output folders (or their scores.csv), joined by '+', one a
seed. --exclude: a file of image stems to leave out, one a line (what
`python -m tools.shared_backgrounds` prints). Exits 1 if a scores file is missing or no image
is scored on both sides.
"""
import argparse
import csv
import statistics
import sys
from pathlib import Path

from ablate import COMPARED, compare, print_comparison


def read_side(spec, label, set_name, exclude):
    """Rows in ablate.compare's form from the scores.csv of each seed of one side."""
    rows = []
    for seed, part in enumerate(spec.split("+")):
        path = Path(part)
        path = path / "scores.csv" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no per-image scores; run derain.py with --eval "
                                    "into that folder first")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if "name" not in (reader.fieldnames or []) or "psnr_y" not in reader.fieldnames:
                raise ValueError(f"{path}: not a scores.csv of derain.py --eval (no name and "
                                 "psnr_y columns)")
            for r in reader:
                if r["name"] in exclude:
                    continue
                rows.append({"variant": label, "seed": str(seed), "pairs": "all",
                             "set": set_name, "sample_steps": "1", "image": r["name"],
                             **{m: r.get(m, "") for m in COMPARED}})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.paired", description=__doc__.split("\n\n")[0])
    p.add_argument("a", metavar="A", help="derain.py output folders (or scores.csv), '+'-joined")
    p.add_argument("b", metavar="B", help="the same for the second method")
    p.add_argument("--labels", default="A,B", help="names of the two methods (default A,B)")
    p.add_argument("--set", default="images", dest="set_name", help="the set's name, for the table")
    p.add_argument("--exclude", metavar="FILE", default=None,
                   help="image stems to leave out, one a line")
    a = p.parse_args(argv)
    labels = [s.strip() for s in a.labels.split(",")]
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        p.error("--labels takes two different names: A,B")
    try:
        exclude = set()
        if a.exclude:
            exclude = {line.strip() for line in Path(a.exclude).read_text().splitlines()
                       if line.strip()}
        rows = (read_side(a.a, labels[0], a.set_name, exclude)
                + read_side(a.b, labels[1], a.set_name, exclude))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = compare(rows, *labels)
    if not result or not result[0]["images"]:
        print(f"error: no image is scored on both sides ({a.a} and {a.b})", file=sys.stderr)
        return 1
    common = {r["image"] for r in rows if r["variant"] == labels[0]} & \
        {r["image"] for r in rows if r["variant"] == labels[1]}
    for label in labels:
        per = {}
        for r in rows:
            if r["variant"] == label and r["image"] in common:
                per.setdefault(r["image"], []).append(r)
        means = [statistics.mean(statistics.mean(float(x[m]) for x in per[i]) for i in per)
                 for m in COMPARED]
        print(f"{label}: {len(per)} images, PSNR-Y {means[0]:.2f} dB, SSIM-Y {means[1]:.4f}, "
              f"HF-err {means[2]:.3f} dB")
    print_comparison(result, *labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
