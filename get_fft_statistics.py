"""FFT statistics of a pairs CSV: what the normalisation maps to [-1, 1]. This script measures
linear values (the default training, `signed_log=False` in launch()); get_fft_statistics_log.py
measures them after the signed log sign(x) log1p(|x|) (training with `--signed-log true`).

    python get_fft_statistics.py --csv pairs.csv --out stats.json [--representation realimag]
                                 [--crop 64] [--workers 4]

Writes, for the rain, diff and clean spectra, the per-channel max/min/mean/std of the
representation's own channels (realimag: real_R_max ... imag_B_std) and always, beside them,
the original system's table of magnitude and phase (mag_R_max ... phase_B_std,
number_of_images, number_of_pixels) under "original"; the settings they depend on; and
per-frequency statistics at the crop size in stats.npz. The training script computes them itself
when they are missing. See representations/statistics.py.
"""
import argparse
import os
import sys

import representations
from ddpm_conditional import launch
from helpers.errors import InputError
from representations.statistics import compute_statistics, save_statistics


def main(argv, log):
    """The command line of both scripts: log=False here (linear values, what the default
    training normalises), log=True in get_fft_statistics_log.py (after the signed log). The
    defaults are launch()'s, so the statistics match training unless told otherwise."""
    defaults = launch()
    name = "get_fft_statistics_log.py" if log else "get_fft_statistics.py"
    ap = argparse.ArgumentParser(prog=name, description=(
        "FFT statistics of a pairs CSV " + ("after" if log else "before") + " the signed log: "
        "per-channel max/min/mean/std for the rain, diff and clean spectra, and per-frequency "
        "statistics at the crop size."))
    ap.add_argument("--csv", required=True, help="pairs CSV from preprocess_csv.py")
    ap.add_argument("--out", required=True, help="output JSON (an .npz of the same stem beside it)")
    ap.add_argument("--representation", default=defaults["representation"],
                    choices=representations.names(statistics_only=True),
                    help="what the statistics describe (default: launch()'s, "
                         f"{defaults['representation']})")
    ap.add_argument("--target", default="diff", choices=representations.TARGETS,
                    help="accepted for symmetry with training; diff and clean are both measured")
    ap.add_argument("--crop", type=int, default=defaults["crop"], help="window size the model "
                    f"trains on (default: launch()'s, {defaults['crop']}); 0: whole images, no "
                    "per-frequency statistics")
    ap.add_argument("--block", type=int, default=defaults["block"],
                    help=f"blockdct only: the block size (default: launch()'s, "
                         f"{defaults['block']})")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--strict", action="store_true", help="exit non-zero if any pair fails")
    args = ap.parse_args(argv)
    try:
        cls = representations.get_class(args.representation)
        options = {k: getattr(args, k) for k in cls.options}
        stats, freq, errors = compute_statistics(args.csv, args.representation, args.crop, log,
                                                 args.workers, options)
    except InputError as e:  # unreadable CSV, no readable pair, unknown settings
        print(f"error: {e}")
        return 2
    for e in errors:
        print(f"skipped: {e}")
    if errors and args.strict:
        print(f"error: {len(errors)} pair(s) failed; nothing written (--strict)")
        return 1
    save_statistics(stats, freq, args.out)
    first = representations.make_transform(args.representation, args.crop, log,
                                           **options).channel_names[0]
    print(f"wrote {args.out}: {stats['rain']['number_of_images']} pairs"
          + (f" ({len(errors)} skipped)" if errors else "")
          + f", {args.representation}, crop {args.crop}, {'signed log' if log else 'linear'}; "
          f"e.g. diff {first} mean {stats['diff'][first + '_mean']:.4g} std "
          f"{stats['diff'][first + '_std']:.4g}"
          + (f"; per-frequency arrays in {os.path.splitext(args.out)[0]}.npz" if freq else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], log=False))
