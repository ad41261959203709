"""How much rain each method's outputs keep, and how good the rest of them is
(helpers.metrics.rain_left): the Y-channel error split along the rain layer (rainy - clean).

    python -m tools.rain_left PRED_DIR [PRED_DIR ...] --target PAIRS_CSV
    python -m tools.rain_left runs/a/derained runs/b/derained --target CLEAN_DIR --input RAIN_DIR

Paired as tools.score pairs them (a pairs CSV: each rainy image's output by the name derain.py
gives it; folders: by name stem). Prints, per folder, the mean PSNR-Y, the mean fraction of the
rain left and the mean PSNR-Y of the error orthogonal to the rain; exits 1 if any image failed
(named on stderr).
"""
import argparse
import sys

import numpy as np

from helpers.errors import InputError
from helpers.images import ImageError, read_rgb
from helpers.metrics import pair_tasks, psnr_y, rain_left
from tools.folders import score_folders


def score_dir(pred_dir, target, input_dir=None):
    """-> (rows, errors): one dict a scored image (name, psnr_y, rain_left, rest_psnr_y)."""
    tasks, errors = pair_tasks(pred_dir, target, input_dir)
    rows = []
    for name, pred_path, target_path, rain_path in tasks:
        if rain_path is None:
            errors.append(f"{pred_path}: no rainy image to measure the rain against (give "
                          "--input RAIN_DIR, or a pairs CSV as --target)")
            continue
        try:
            pred, clean, rain = (read_rgb(p) for p in (pred_path, target_path, rain_path))
            rows.append({"name": name, "psnr_y": psnr_y(pred, clean),
                         **rain_left(pred, clean, rain)})
        except (ImageError, InputError) as e:  # an unreadable file names itself; sizes:
            errors.append(f"{pred_path} (target {target_path}, rainy {rain_path}): {e}")
    return rows, errors


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.rain_left",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("pred_dirs", nargs="+", metavar="PRED_DIR")
    p.add_argument("--target", required=True, metavar="PAIRS_CSV_OR_CLEAN_DIR")
    p.add_argument("--input", default=None, metavar="RAIN_DIR",
                   help="the rainy inputs, when --target is a folder of clean images")
    a = p.parse_args(argv)
    scored, failed = score_folders(a.pred_dirs, lambda d: score_dir(d, a.target, a.input))
    if scored is None:
        return 1
    print(f"{'outputs':<40} {'images':>6} {'PSNR-Y':>7} {'rain left':>9} {'rest PSNR-Y':>11}")
    for d, rows in zip(a.pred_dirs, scored):
        if not rows:
            print(f"error: {d}: no image pairs were scored", file=sys.stderr)
            failed = True
            continue
        mean = {k: float(np.mean([r[k] for r in rows]))
                for k in ("psnr_y", "rain_left", "rest_psnr_y")}
        print(f"{d:<40} {len(rows):>6} {mean['psnr_y']:>7.2f} {mean['rain_left']:>9.3f} "
              f"{mean['rest_psnr_y']:>11.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
