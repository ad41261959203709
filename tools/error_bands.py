"""Where in frequency a PSNR gap comes from: the Y-channel MSE of each method's outputs split
over radial frequency bands (helpers.metrics.error_by_band, exact by Parseval), and for each
method after the first, how many dB each band costs it against the first.

    python -m tools.error_bands TARGET PRED_A PRED_B [PRED_C ...] [--bands 8] [--labels a,b,c]
    python -m tools.error_bands data/presets/rain100/val_Rain100L.csv out/pixel_L out/fourier_L

TARGET is a folder of clean images (paired by name stem) or a pairs CSV (each rainy image's
output found by the name derain.py gives it), as for tools/score.py. Only the images that every
method has are compared. For a band k, "dB vs A" is PSNR-Y(B) - PSNR-Y(B with band k's error
replaced by A's), the mean over images: negative where B's error in that band is larger than
A's, i.e. the dB that band loses B against A. The per-band figures add up to about the paired
PSNR-Y gap (exactly in MSE, not in dB, as PSNR is a log). --exclude FILE leaves out the image
stems it lists, one a line (what `python -m tools.shared_backgrounds` prints). Exits 1 if any
image failed (reported by name on stderr).
"""
import argparse
import sys

import numpy as np

from helpers.errors import InputError
from helpers.images import ImageError, read_rgb
from helpers.metrics import PEAK, SPECTRAL_BANDS, error_by_band, pair_tasks
from tools.folders import score_folders
from tools.shared_backgrounds import read_stems


def band_errors(pred_dir, target, bands):
    """{name: (bands,) MSE split} for the predictions in pred_dir, and the error messages."""
    tasks, errors = pair_tasks(pred_dir, target)
    out = {}
    for name, pred_path, target_path, _ in tasks:
        try:
            out[name] = error_by_band(read_rgb(pred_path), read_rgb(target_path), bands)
        except ImageError as e:  # already names the file
            errors.append(str(e))
        except InputError as e:  # metrics' size check: name the two files
            errors.append(f"{pred_path} against {target_path}: {e}")
    return out, errors


def psnr_of(mse):
    """PSNR-Y of an array of MSEs (metrics.psnr_from_mse takes one; here an identical image
    gets a large finite value instead of inf, so that means stay finite)."""
    return 10 * np.log10(PEAK ** 2 / np.maximum(mse, 1e-12))


def compare(per_method, bands):
    """per_method: a list of {name: (bands,) MSE split}, the same names in each. Returns
    {"names", "mse": (methods, bands) mean MSE per band, "psnr": (methods,) mean PSNR-Y,
    "cost_db": (methods, bands) the mean dB each band costs a method against the first (row 0
    is zeros), "gap_db": (methods,) the mean paired PSNR-Y difference against the first}."""
    names = sorted(set.intersection(*(set(m) for m in per_method)))
    e = np.stack([[m[n] for n in names] for m in per_method])  # (methods, images, bands)
    total = e.sum(-1)                                             # (methods, images)
    psnr = psnr_of(total)
    cost = np.zeros((len(per_method), bands))
    for i in range(1, len(per_method)):
        for k in range(bands):
            swapped = total[i] - e[i, :, k] + e[0, :, k]
            cost[i, k] = np.mean(psnr_of(swapped) - psnr[i])
    return {"names": names, "mse": e.mean(1), "psnr": psnr.mean(1), "cost_db": cost,
            "gap_db": (psnr - psnr[0]).mean(1)}


def format_table(result, labels, bands):
    edges = np.linspace(0, 0.5, bands + 1)
    head = f"{'band (cycles/px)':<18}" + "".join(f"{'MSE ' + lab:>16}" for lab in labels)
    head += "".join(f"{'dB vs ' + labels[0] + ' ' + lab:>22}" for lab in labels[1:])
    lines = [head]
    for k in range(bands):
        hi = "0.5+" if k == bands - 1 else f"{edges[k + 1]:.4g}"
        row = f"{f'{edges[k]:.4g}-{hi}':<18}"
        row += "".join(f"{result['mse'][i, k]:>16.3f}" for i in range(len(labels)))
        row += "".join(f"{-result['cost_db'][i, k]:>+22.3f}" for i in range(1, len(labels)))
        lines.append(row)
    lines.append(f"{'all (PSNR-Y)':<18}" + "".join(f"{p:>16.3f}" for p in result["psnr"])
                 + "".join(f"{g:>+22.3f}" for g in result["gap_db"][1:]))
    lines.append(f"{len(result['names'])} images; 'dB vs': a band's share of the paired PSNR-Y "
                 f"difference (negative: the band loses dB to {labels[0]})")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.error_bands",
        description="Split each method's Y-channel MSE over radial frequency bands and say how "
                    "many dB of PSNR-Y each band costs it against the first method.")
    p.add_argument("target", metavar="TARGET", help="folder of clean images, or a pairs CSV")
    p.add_argument("preds", metavar="PRED_DIR", nargs="+", help="one folder of outputs a method")
    p.add_argument("--bands", type=int, default=SPECTRAL_BANDS,
                   help=f"rings of equal width from 0 to 0.5 cycles/px (default {SPECTRAL_BANDS})")
    p.add_argument("--labels", default=None, help="comma-separated names of the methods")
    p.add_argument("--exclude", metavar="FILE", default=None,
                   help="image stems to leave out, one a line")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [f"m{i}" for i in range(len(args.preds))]
    if len(labels) != len(args.preds):
        p.error(f"--labels names {len(labels)} methods but {len(args.preds)} folders are given")
    if args.bands < 1:
        p.error("--bands must be at least 1")
    try:
        exclude = read_stems(args.exclude) if args.exclude else set()
    except OSError as e:
        print(f"error: --exclude: {e}", file=sys.stderr)
        return 1
    per_method, failed = score_folders(args.preds,
                                       lambda d: band_errors(d, args.target, args.bands))
    if per_method is None:
        return 1
    per_method = [{n: e for n, e in errs.items() if n not in exclude} for errs in per_method]
    if not set.intersection(*(set(m) for m in per_method)):
        print("error: no image is scored for every method", file=sys.stderr)
        return 1
    result = compare(per_method, args.bands)
    print(format_table(result, labels, args.bands))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
