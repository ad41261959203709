"""Score any method's outputs as the deraining literature does (helpers/metrics.py): mean
PSNR-Y / SSIM-Y against clean targets, beside the do-nothing baseline.

    python -m tools.score PRED_DIR TARGET_DIR [--input RAIN_DIR] [--csv per_image.csv]
                          [--rgb] [--workers K]
    python -m tools.score runs/synthetic-fft/derained data/presets/synthetic/val.csv

TARGET_DIR is a folder of clean images (paired by name stem) or a pairs CSV (each rainy image's
output found by the name derain.py gives it; the rainy column is the baseline). Prints the
summary table and exits 1 if any image failed (reported by name on stderr), 0 otherwise.
"""
import argparse
import sys

from helpers.errors import InputError
from helpers.metrics import default_workers, format_summary, score_folders, write_scores_csv


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.score",
        description="Mean PSNR-Y / SSIM-Y (MATLAB BT.601 Y, Wang et al. 2004 SSIM) of the "
                    "predictions in PRED_DIR against the targets of the same name stem in "
                    "TARGET_DIR. Exits 1 if any image failed.")
    p.add_argument("pred_dir", metavar="PRED_DIR")
    p.add_argument("target_dir", metavar="TARGET_DIR",
                   help="folder of clean targets (paired by name stem), or a pairs CSV (paired "
                        "by the output names derain.py gives; the rainy column is the baseline)")
    p.add_argument("--input", metavar="RAIN_DIR", default=None,
                   help="rainy inputs: also report the do-nothing baseline (input vs target)")
    p.add_argument("--csv", metavar="PATH", default=None, help="write per-image scores here")
    p.add_argument("--rgb", action="store_true", help="also show PSNR over the RGB channels")
    p.add_argument("--workers", type=int, default=None, metavar="K",
                   help=f"worker processes (default {default_workers()})")
    args = p.parse_args(argv)
    try:
        result = score_folders(args.pred_dir, args.target_dir, args.input, workers=args.workers)
    except (OSError, InputError) as e:  # a missing folder, an unreadable pairs CSV
        print(f"error: {e}", file=sys.stderr)
        return 1
    for err in result.errors:
        print(f"error: {err}", file=sys.stderr)
    if args.csv:
        write_scores_csv(result.rows, args.csv)
    print(format_summary(result.summary, rgb=args.rgb))
    if args.csv:
        print(f"per-image scores: {args.csv}")
    if result.summary["n"] == 0:
        print("error: no image pairs were scored", file=sys.stderr)
        return 1
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
