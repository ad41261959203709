"""Streaming FFT statistics over a pairs CSV: the numbers that map spectra to [-1, 1].

Both statistics scripts call `compute_statistics`; they differ only in `log` (after or before the
signed log). Statistics are measured on the same crops the model sees: each image is tiled into
windows of `crop` pixels (the last row and column of windows flush with the border), each also
mirrored left-right as the training loader does, so the per-frequency numbers describe exactly the
distribution the normalisation is applied to. With `crop=0` whole images are used (channel
statistics only: per-frequency statistics need one size).

Output (JSON, written atomically), the original system's keys for each of "rain", "diff" and
"clean", in the representation's channel names ("mag"/"phase" or "real"/"imag"):
    {"settings": {...}, "rain": {"mag_R_max": ..., ..., "number_of_images": N,
     "number_of_pixels": P}, "diff": {...}, "clean": {...}, "per_frequency": "stats.npz"}
and beside it, for crop > 0, an .npz with arrays "<part>_<stat>" of the shape the representation
encodes a window to (rep.shape(crop, crop), e.g. (6, crop, crop)) for part in rain/diff/clean and
stat in min/max/mean/std.
"""
import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from tqdm import tqdm

import representations
from helpers.images import ImageError, atomic_path, read_rgb, write_text
from sampling import pad_to, window_boxes

PARTS = ("rain", "diff", "clean")


def load_pair(clean_path, rain_path):
    """Read a pair as float64 (3, H, W) arrays; ImageError names the file on any problem."""
    clean, rain = read_rgb(clean_path), read_rgb(rain_path)
    if clean.shape != rain.shape:
        raise ImageError(f"{rain_path}: size {rain.shape[1]}x{rain.shape[0]} differs from its "
                         f"clean image {clean_path} ({clean.shape[1]}x{clean.shape[0]}); "
                         "fix or remove the pair")
    return clean.transpose(2, 0, 1) / 255.0, rain.transpose(2, 0, 1) / 255.0


class _Accumulator:
    """min, max, sum, sum of squares per channel (and per frequency when shape is given)."""

    def __init__(self, per_frequency=True):
        self.n_images = 0
        self.n_pixels = 0  # per channel
        self.ch = {k: None for k in ("min", "max", "sum", "sq")}
        self.freq = {k: None for k in ("min", "max", "sum", "sq")} if per_frequency else None
        self.n_freq = 0

    def add(self, x):  # x: (N, C, H, W) float64, C and H, W as the representation encodes
        flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
        upd = {"min": flat.min(1), "max": flat.max(1), "sum": flat.sum(1), "sq": (flat ** 2).sum(1)}
        _merge(self.ch, upd)
        self.n_pixels += flat.shape[1]
        if self.freq is not None:
            _merge(self.freq, {"min": x.min(0), "max": x.max(0), "sum": x.sum(0),
                               "sq": (x ** 2).sum(0)})
            self.n_freq += x.shape[0]

    def merge(self, other):
        self.n_images += other.n_images
        self.n_pixels += other.n_pixels
        self.n_freq += other.n_freq
        _merge(self.ch, other.ch)
        if self.freq is not None:
            _merge(self.freq, other.freq)


def _merge(acc, upd):
    if upd["min"] is None:
        return
    if acc["min"] is None:
        acc.update({k: np.array(v, dtype=np.float64) for k, v in upd.items()})
        return
    acc["min"] = np.minimum(acc["min"], upd["min"])
    acc["max"] = np.maximum(acc["max"], upd["max"])
    acc["sum"] = acc["sum"] + upd["sum"]
    acc["sq"] = acc["sq"] + upd["sq"]


def _mean_std(acc, n):
    mean = acc["sum"] / n
    return mean, np.sqrt(np.maximum(acc["sq"] / n - mean ** 2, 0.0))


def _pair_spectra(clean, rain, rep, crop):
    """All training-style windows of a pair (and their mirror images), encoded by the
    representation -> {"rain", "diff", "clean"}, each (N, C, h', w')."""
    if crop:
        clean, rain = pad_to(clean, crop), pad_to(rain, crop)
        boxes = window_boxes(clean.shape[1], clean.shape[2], crop)
        c = np.stack([clean[:, y:y + crop, x:x + crop] for y, x in boxes])
        r = np.stack([rain[:, y:y + crop, x:x + crop] for y, x in boxes])
        c, r = np.concatenate([c, c[..., ::-1]]), np.concatenate([r, r[..., ::-1]])
    else:
        c, r = clean[None], rain[None]
    return rep.parts(c, r)


def _work(args):
    """One worker's share of the pairs -> (accumulators, list of error messages)."""
    rows, representation, crop, log, options = args
    rep = representations.make(representation, crop=crop, log=log, **options)
    accs = {p: _Accumulator(bool(crop)) for p in PARTS}
    errors = []
    for clean_path, rain_path in rows:
        try:
            clean, rain = load_pair(clean_path, rain_path)
        except ImageError as e:
            errors.append(str(e))
            continue
        for part, x in _pair_spectra(clean, rain, rep, crop).items():
            accs[part].add(x)
            accs[part].n_images += 1
    return accs, errors


def read_pairs(csv_path):
    """Absolute (clean, rain) paths from a pairs CSV (paths in it are relative to the CSV)."""
    df = pd.read_csv(csv_path)
    missing = {"image_filepath", "image_rain_filepath"} - set(df.columns)
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; make the CSV with "
                         "preprocess_csv.py")
    base = os.path.dirname(os.path.abspath(csv_path))
    absolute = lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
    return [(absolute(c), absolute(r)) for c, r in zip(df.image_filepath, df.image_rain_filepath)]


def compute_statistics(csv_path, representation="realimag", crop=128, log=True, workers=2,
                       progress=True, options=None):
    """Stream over the pairs of `csv_path` -> (stats dict, per-frequency arrays or None, errors).

    `representation` is a registered name (representations.names(statistics_only=True)); the
    statistics are those of what it encodes, under its channel names. Never holds more than one
    chunk of pairs per worker in memory."""
    options = dict(options or {})
    rep = representations.make(representation, crop=crop, log=log, **options)
    pairs = read_pairs(csv_path)
    if not pairs:
        raise ValueError(f"{csv_path}: no pairs")
    chunk = max(1, min(16, len(pairs) // max(1, 4 * workers)))
    jobs = [(pairs[i:i + chunk], representation, crop, log, options)
            for i in range(0, len(pairs), chunk)]
    total = {p: _Accumulator(bool(crop)) for p in PARTS}
    errors = []
    bar = tqdm(total=len(pairs), desc="fft statistics", unit="pair", disable=not progress)
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_work, jobs)
    else:
        pool, results = None, map(_work, jobs)
    try:
        for job, (accs, errs) in zip(jobs, results):
            for p in PARTS:
                total[p].merge(accs[p])
            errors += errs
            bar.update(len(job[0]))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    if total["rain"].n_images == 0:
        raise ValueError(f"{csv_path}: none of the {len(pairs)} pairs could be read")
    keys = rep.channel_names
    stats = {"settings": rep.stats_settings()}
    freq = {}
    for p in PARTS:
        acc = total[p]
        mean, std = _mean_std(acc.ch, acc.n_pixels)
        entry = {}
        for stat, values in (("max", acc.ch["max"]), ("min", acc.ch["min"]), ("mean", mean),
                             ("std", std)):
            entry.update({f"{k}_{stat}": float(v) for k, v in zip(keys, values)})
        entry["number_of_images"] = acc.n_images
        entry["number_of_pixels"] = acc.n_pixels
        stats[p] = entry
        if acc.freq is not None:
            f_mean, f_std = _mean_std(acc.freq, acc.n_freq)
            freq.update({f"{p}_min": acc.freq["min"], f"{p}_max": acc.freq["max"],
                         f"{p}_mean": f_mean, f"{p}_std": f_std})
    stats["number_of_failed_pairs"] = len(errors)
    return stats, (freq or None), errors


def save_statistics(stats, freq, out_path):
    """Write stats JSON (and the per-frequency .npz beside it) atomically."""
    stats = dict(stats)
    if freq is not None:
        npz_path = os.path.splitext(out_path)[0] + ".npz"
        with atomic_path(npz_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v.astype(np.float32) for k, v in freq.items()})
        stats["per_frequency"] = os.path.basename(npz_path)
    write_text(out_path, json.dumps(stats, indent=1) + "\n")


def load_statistics(path):
    """Read a stats JSON and its per-frequency arrays into one dict (arrays as float32 numpy)."""
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read statistics ({e}); recompute them with "
                         "get_fft_statistics_log.py") from e
    if "settings" not in stats or "rain" not in stats:
        raise ValueError(f"{path}: not a statistics file of this repository; recompute it with "
                         "get_fft_statistics_log.py --csv PAIRS.csv --out STATS.json")
    stats["path"] = os.fspath(path)
    if stats.get("per_frequency"):
        npz = os.path.join(os.path.dirname(os.path.abspath(path)), stats["per_frequency"])
        try:
            with np.load(npz) as z:
                stats["per_frequency"] = {k: z[k] for k in z.files}
        except OSError as e:
            raise ValueError(f"{npz}: per-frequency statistics missing or unreadable ({e}); "
                             "recompute with get_fft_statistics_log.py") from e
    return stats


def statistics_main(argv, log, defaults):
    """The command line shared by get_fft_statistics_log.py (log=True) and get_fft_statistics.py;
    `defaults` is ddpm_conditional.launch(), so the statistics match training unless told."""
    import argparse
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
                                                 args.workers, options=options)
    except (ValueError, OSError) as e:
        print(f"error: {e}")
        return 2
    for e in errors:
        print(f"skipped: {e}")
    if errors and args.strict:
        print(f"error: {len(errors)} pair(s) failed; nothing written (--strict)")
        return 1
    save_statistics(stats, freq, args.out)
    first = representations.make(args.representation, crop=args.crop, log=log,
                                 **options).channel_names[0]
    print(f"wrote {args.out}: {stats['rain']['number_of_images']} pairs"
          + (f" ({len(errors)} skipped)" if errors else "")
          + f", {args.representation}, crop {args.crop}, {'signed log' if log else 'linear'}; "
          f"e.g. diff {first} mean {stats['diff'][first + '_mean']:.4g} std "
          f"{stats['diff'][first + '_std']:.4g}"
          + (f"; per-frequency arrays in {os.path.splitext(args.out)[0]}.npz" if freq else ""))
    return 1 if errors else 0
