"""Find (clean, rainy) image pairs under one or more folders and write them to a CSV.

Usage:
    python preprocess_csv.py ../shared/data --out data/pairs.csv
    python preprocess_csv.py ../shared/data/Rain100L ../shared/data/Rain100H --out pairs.csv \\
        --val-fraction 0.1 --seed 0          # writes pairs_train.csv and pairs_val.csv
    python preprocess_csv.py /data/Rain14000 --out rain14000.csv --absolute --workers 8
    python preprocess_csv.py /data/Rain100L --out pairs.csv --strict   # any bad file: exit 1

From Python (no subprocess), the library behind it (helpers/pairs.py, where the CSV columns,
the recognised layouts, the validation and the split are described):
    from helpers.pairs import find_pairs, validate_pairs, write_pairs_csv
    pairs = find_pairs("../shared/data/Rain100L")
    pairs, problems = validate_pairs(pairs, workers=2)
    write_pairs_csv(pairs, "data/rain100l.csv")
"""
import argparse
import os
import sys
from collections import Counter

from helpers.images import natural_key
from helpers.pairs import (default_workers, find_pairs, pair_sort_key, split_pairs,
                           validate_pairs, write_pairs_csv, write_split_csvs)


# ---------------------------------------------------------------- command line
def _parser():
    p = argparse.ArgumentParser(
        prog="preprocess_csv.py",
        description="Find (clean, rainy) image pairs under ROOT folders and write a CSV with "
                    "columns image_filepath,image_rain_filepath,clean_id,rain_id,dataset "
                    "(paths relative to the CSV's folder unless --absolute).",
        epilog="Layouts: Rain14000 naming (995.jpg + 995_1.jpg..., one folder or sibling "
               "folders); input/+target/, rainy/+norain/, rain/+norain/ with identical names; "
               "rain-001 <-> norain-001 in one folder. Exit codes: 0 written; 1 --strict and a "
               "problem was found (nothing written); 2 no pairs found or bad arguments.")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="dataset folder or a folder of them")
    p.add_argument("--out", required=True, help="CSV to write (e.g. data/pairs.csv)")
    p.add_argument("--absolute", action="store_true",
                   help="write absolute paths instead of paths relative to the CSV's folder")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="split by clean image (all rainy variants of one clean image on one "
                        "side): write OUT_train.csv and OUT_val.csv beside --out instead of OUT "
                        "(--out pairs.csv -> pairs_train.csv, pairs_val.csv); 0 < F < 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 without writing anything if any file is bad or unpaired")
    p.add_argument("--workers", type=int, default=default_workers(), metavar="K",
                   help="processes that decode images (default min(4, CPUs) = %(default)s)")
    p.add_argument("--no-check", action="store_true",
                   help="do not decode images (faster; bad files and size mismatches go unseen)")
    return p


def _log(msg):
    print(f"preprocess_csv: {msg}", file=sys.stderr)


def _summary_of(problems, dropped_pairs):
    if not problems:
        return "skipped 0"
    counts = Counter(q.kind for q in problems)
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    return f"skipped {len(problems)}: {detail} ({dropped_pairs} pairs dropped)"


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        _log(f"error: --val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
        return 2
    if args.workers < 1:
        _log(f"error: --workers must be at least 1, got {args.workers}")
        return 2

    pairs, problems = [], []
    for root in args.roots:
        try:
            pairs += find_pairs(root, problems)
        except FileNotFoundError as e:
            _log(f"error: {e}")
            return 2
    # Overlapping ROOTs (a folder and its parent) must not duplicate rows.
    unique = {}
    for p in pairs:
        unique.setdefault((os.path.abspath(p.clean), os.path.abspath(p.rain)), p)
    pairs = sorted(unique.values(), key=pair_sort_key)

    for dataset, n in sorted(Counter(p.dataset for p in pairs).items(),
                             key=lambda t: natural_key(t[0])):
        _log(f"found {n} pairs in {dataset}")
    notes = [q for q in problems if q.is_note]
    problems = [q for q in problems if not q.is_note]
    for q in notes:
        _log(f"note: {q.message}")
    for q in problems:
        _log(f"skipped: {q.message}")
    if not pairs:
        _log("error: no (clean, rainy) pairs found under " + ", ".join(args.roots)
             + "; see --help for the recognised layouts")
        return 2

    found = len(pairs)
    if not args.no_check:
        pairs, bad = validate_pairs(pairs, workers=args.workers)
        for q in bad:
            _log(f"skipped: {q.message}")
        problems += bad
    summary = _summary_of(problems, found - len(pairs))

    if args.strict and problems:
        _log(f"error: --strict: {len(problems)} problem(s) found, nothing written; {summary}")
        return 1
    if not pairs:
        _log(f"error: no usable pairs left; {summary}")
        return 2

    if args.val_fraction is None:
        write_pairs_csv(pairs, args.out, absolute=args.absolute)
        _log(f"wrote {len(pairs)} pairs to {args.out}; {summary}")
    else:
        train, val = split_pairs(pairs, args.val_fraction, args.seed)
        train_path, val_path = write_split_csvs(train, val, args.out, absolute=args.absolute)
        _log(f"wrote {len(train)} pairs to {train_path} and {len(val)} to {val_path} "
             f"(val fraction {args.val_fraction}, seed {args.seed}); {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
