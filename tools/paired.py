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
once, its set's difference). With two seeds or more on both sides, a line a row gives each
seed's own difference, seed s of A against seed s of B (so list the seeds in the same order on
both sides). The sampler steps of each side come from the
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

from ablate import COMPARED, compare, compare_by_seed, per_image_scores, print_comparison
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
    # each side's scores over the images of the summary (the pooled row's, or the one set's);
    # sides of different step counts (e.g. 4 against 1) are compared all the same
    sides = {lab: per_image_scores(pooled if sets else rows, lab, match_steps=False)
             for lab in labels}
    for lab, (_, _, seen) in sides.items():
        mixed = [k for k, n in seen.items() if len(n) > 1]
        if mixed:
            print(f"error: the seeds of {lab} were sampled with different steps "
                  f"({sorted(seen[mixed[0]])}); compare one step count at a time", file=sys.stderr)
            return 1
    result = compare(rows, *labels, match_steps=False)
    if not result or not result[0]["images"]:
        print(f"error: no image is scored on both sides ({a.a} and {a.b})", file=sys.stderr)
        return 1
    (acc_a, _, _), (acc_b, _, _) = sides.values()
    (key,) = set(acc_a) & set(acc_b)  # one (pairs, set) in the summary
    common = sorted(set(acc_a[key]) & set(acc_b[key]))
    for label, (acc, _, seen) in sides.items():
        means = [statistics.mean(statistics.mean(acc[key][i][m]) for i in common)
                 for m in COMPARED]
        n_steps = next(iter(seen[key])) or "?"
        print(f"{label}: {len(common)} images, {n_steps} sampler step(s), PSNR-Y {means[0]:.2f} "
              f"dB, SSIM-Y {means[1]:.4f}, HF-err {means[2]:.3f} dB")
    print_comparison(result, *labels,
                     by_seed=compare_by_seed(rows, *labels, match_steps=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
