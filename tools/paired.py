"""Compare two methods image by image from the per-image scores derain.py writes (`--eval`:
OUT/scores.csv), pooling seeds: each image's score is the mean over a method's seeds, and the
difference A - B is averaged over the images both have, with its standard error over them and
the images A wins (the same comparison as `ablate.py --compare`, for outputs made outside a
study, e.g. on other data sets).

    python -m tools.paired OUT_A_SEED0+OUT_A_SEED1 OUT_B_SEED0+OUT_B_SEED1 [--exclude seen.txt]
    python -m tools.paired out/fourier/scores.csv out/pixels/scores.csv --labels fourier,pixels
    python -m tools.paired 'out/{set}/f0+out/{set}/f1' 'out/{set}/p0+out/{set}/p1' \
        --sets SIRR19,JORDERE_small_test --exclude 'seen_{set}.txt'

Each side is one or more derain.py output folders (or their scores.csv), joined by '+', one a
seed. --exclude: a file of image stems to leave out, one a line (what
`python -m tools.shared_backgrounds` prints). --sets S1,S2: the same comparison on several sets,
'{set}' in A, B and --exclude standing for each, and pooled over all their images (each image
once, its set's difference). The sampler steps of each side come from the
settings.json derain.py writes beside scores.csv; for folders from before it did, give
--steps A[,B], or the table shows '?'. Exits 1 if a scores file is missing or no image is
scored on both sides.
"""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from ablate import COMPARED, compare, print_comparison
from tools.shared_backgrounds import read_stems


def side_steps(path, given):
    """The sampler steps that made the scores at `path`: `given` (--steps) if set, else
    settings.json's beside it, else 0 (unknown)."""
    if given:
        return given
    settings = path.parent / "settings.json"
    if not settings.is_file():
        return 0
    try:
        return int(json.loads(settings.read_text())["sample_steps"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{settings}: not a settings.json of derain.py --eval ({e!r}); delete "
                         "it and give --steps") from None


def read_side(spec, label, set_name, exclude, steps=0):
    """Rows in ablate.compare's form from the scores.csv of each seed of one side."""
    rows = []
    for seed, part in enumerate(spec.split("+")):
        path = Path(part)
        path = path / "scores.csv" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no per-image scores; run derain.py with --eval "
                                    "into that folder first")
        n_steps = side_steps(path, steps)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if "name" not in (reader.fieldnames or []) or "psnr_y" not in reader.fieldnames:
                raise ValueError(f"{path}: not a scores.csv of derain.py --eval (no name and "
                                 "psnr_y columns)")
            for r in reader:
                if r["name"] in exclude:
                    continue
                rows.append({"variant": label, "seed": str(seed), "pairs": "all",
                             "set": set_name, "sample_steps": str(n_steps), "image": r["name"],
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
    p.add_argument("--sets", default=None, metavar="S1,S2,...",
                   help="several sets at once: '{set}' in A, B and --exclude stands for each; "
                        "a row per set and a row 'pooled' over all their images")
    p.add_argument("--steps", default=None, metavar="A[,B]",
                   help="the sampler steps of each side, for folders without derain.py's "
                        "settings.json (default: read from it)")
    a = p.parse_args(argv)
    labels = [s.strip() for s in a.labels.split(",")]
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        p.error("--labels takes two different names: A,B")
    try:
        steps = [int(x) for x in (a.steps or "0").split(",")]
    except ValueError:
        steps = [0, 0, 0]
    steps = steps * 2 if len(steps) == 1 else steps
    if len(steps) != 2 or min(steps) < (1 if a.steps else 0):
        p.error(f"--steps takes one or two positive whole numbers (A or A,B), got {a.steps}")
    sets = [x.strip() for x in a.sets.split(",") if x.strip()] if a.sets else []
    if sets and not ("{set}" in a.a and "{set}" in a.b):
        p.error("--sets needs '{set}' in A and B (e.g. out/{set}/fourier), to stand for each set")
    rows, pooled = [], []
    try:
        for name in sets or [a.set_name]:
            sub = (lambda text: text.replace("{set}", name)) if sets else (lambda text: text)
            exclude = read_stems(sub(a.exclude)) if a.exclude else set()
            part = (read_side(sub(a.a), labels[0], name, exclude, steps[0])
                    + read_side(sub(a.b), labels[1], name, exclude, steps[1]))
            rows += part
            pooled += [{**r, "set": "pooled", "image": f"{name}/{r['image']}"} for r in part]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if sets:  # the pooled row, and the per-side means below, over every set's images
        rows += pooled
    summary_rows = pooled if sets else rows
    # compare() pairs rows of equal steps; sides sampled with different steps (e.g. 4 against
    # 1) are compared all the same, under A's steps, and the per-side lines say each one's
    side_steps_seen = {lab: sorted({int(r["sample_steps"]) for r in rows if r["variant"] == lab})
                       for lab in labels}
    if side_steps_seen[labels[0]] != side_steps_seen[labels[1]]:
        if len(side_steps_seen[labels[0]]) > 1 or len(side_steps_seen[labels[1]]) > 1:
            print(f"error: the seeds of one side were sampled with different steps "
                  f"({side_steps_seen}); compare one step count at a time", file=sys.stderr)
            return 1
        for r in rows + pooled:
            r["sample_steps"] = str(side_steps_seen[labels[0]][0])
    result = compare(rows, *labels)
    if not result or not result[0]["images"]:
        print(f"error: no image is scored on both sides ({a.a} and {a.b})", file=sys.stderr)
        return 1
    common = {r["image"] for r in summary_rows if r["variant"] == labels[0]} & \
        {r["image"] for r in summary_rows if r["variant"] == labels[1]}
    for label in labels:
        per = {}
        for r in summary_rows:
            if r["variant"] == label and r["image"] in common:
                per.setdefault(r["image"], []).append(r)
        means = [statistics.mean(statistics.mean(float(x[m]) for x in per[i]) for i in per)
                 for m in COMPARED]
        n_steps = ", ".join(str(k) if k else "?" for k in side_steps_seen[label])
        print(f"{label}: {len(per)} images, {n_steps} sampler step(s), PSNR-Y {means[0]:.2f} dB, "
              f"SSIM-Y {means[1]:.4f}, HF-err {means[2]:.3f} dB")
    print_comparison(result, *labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
