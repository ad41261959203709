"""Regenerate the figures of the README from one command.

    python make_figures.py --run runs/rain100l-fft
    python make_figures.py --run runs/a --run runs/b --ckpt runs/a/ckpt_00010000.pt \\
        [--data ../shared/data] [--out figures/] [--steps 20] [--speed speed.json] [--csv P.csv]

Writes into --out, each file atomically; a figure whose inputs are missing is skipped with a note:
    training_curves.png      training loss and validation PSNR-Y (dashed: the rainy input) of
                             every --run (its log.jsonl), overlaid by run name
    comparison_rain100l.png  rain | ours | clean on held-out Rain100L pairs (numbers 51-60, the
    comparison_rain100h.png  first --pairs of them) and the same on Rain100H; 2x zoomed crops of
                             the rainiest region below each row           (need --ckpt, --data)
    real_rain.png            rain | ours on --real photos of Real_rain/input (no ground truth),
                             downscaled to <= --max-side px first          (need --ckpt, --data)
    comparison_pairs.png     rain | ours | clean on the first --pairs pairs of --csv (any set)
    spectra.png              log-magnitude spectra of the rain, the true change clean - rain, the
                             predicted change ours - rain and the error, for one pair
    speed.png                PSNR-Y against sampling steps and seconds per image, from --speed
                             (JSON list / {"rows": [...]}, JSON lines or CSV of rows with
                             sampler, steps, seconds_per_image, psnr_y [, input_psnr_y, set];
                             repeat --speed to overlay several files)
and refreshes training_pipeline.png (helpers/draw_pipeline.py; --pipeline '' skips it).

Deraining runs on --device (auto: the GPU if there is one) with the checkpoint's sampler and
--steps steps; windows are batched (--batch-size). On a CPU a 481x321 image at crop 64 is about
150 windows, i.e. roughly 1-2 minutes at 20 steps with the small model: keep --pairs small.
Exit status: 0 when everything asked for was drawn or skipped for lack of input, 1 when an input
was unusable (damaged checkpoint, unreadable speed file).
"""
import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from helpers.errors import InputError

REPO = Path(__file__).resolve().parent
DEFAULT_DATA = os.environ.get("DERAIN_DATA") or str(REPO.parent / "shared" / "data")
PAIRED_SETS = (("Rain100L", "comparison_rain100l.png"), ("Rain100H", "comparison_rain100h.png"))
SPEED_ALIASES = {"seconds_per_image": ("seconds_per_image", "sec_per_image", "s_per_image",
                                       "seconds"),
                 "psnr_y": ("psnr_y", "psnr"), "steps": ("steps", "sample_steps"),
                 "sampler": ("sampler",)}


def note(msg):
    print(f"note: {msg}", flush=True)


# ============================================================================ (a) training curves
def read_log(run):
    """Records of a run's log.jsonl (`run` is the run dir or the file); a torn last line of a
    run still being written is ignored."""
    path = Path(run)
    if path.is_dir():
        path = path / "log.jsonl"
    recs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                recs.append(rec)
    return recs


def run_names(runs):
    """Short unique names: the folder name, or parent/name when two runs share a name."""
    paths = [Path(r).resolve() for r in runs]
    paths = [p.parent if p.name == "log.jsonl" else p for p in paths]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def make_training_curves(runs, out):
    from helpers.figures import training_curves_figure
    logs = {}
    for name, run in zip(run_names(runs), runs):
        try:
            recs = read_log(run)
        except OSError as e:
            note(f"{run}: no readable log.jsonl ({e.strerror}); left out of the training curves")
            continue
        if not recs:
            note(f"{run}: log.jsonl has no records yet; left out of the training curves")
            continue
        logs[name] = recs
    if not logs:
        note("no run with a log: training curves skipped")
        return None
    path = Path(out) / "training_curves.png"
    training_curves_figure(logs, path, title="Training runs: " + ", ".join(logs))
    return path


# ============================================================================ (b, c) deraining
def derain_one(derainer, rain_u8, label="", seed=0):
    """One image through the shared sampling path, with a line saying how long it took."""
    from helpers.tiling import count_windows
    t0 = time.time()
    ours = derainer(rain_u8, seed)
    h, w = rain_u8.shape[:2]
    n = count_windows(h, w, derainer.rep.crop)
    print(f"  derained {label} ({w}x{h}, {n} windows) in {time.time() - t0:.1f} s", flush=True)
    return ours


def parse_numbers(text):
    """'51-60' or '51,53,55' -> list of ints."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def numbered_pairs(folder, numbers):
    """(clean, rain) paths of a paired set (input/ + target/ under identical names) whose number
    is in `numbers`, in the order of `numbers`."""
    from helpers.images import is_image_file
    from helpers.pairs import background_number
    folder = Path(folder)
    by_number = {}
    for f in sorted((folder / "input").iterdir()):
        if is_image_file(f) and (folder / "target" / f.name).is_file():
            by_number.setdefault(background_number(f.stem), (folder / "target" / f.name, f))
    return [by_number[n] for n in numbers if n in by_number]


def derain_pairs(derainer, pairs, limit, seed=0):
    """[(name, rain, ours, clean, psnr_rain, psnr_ours)] for the first `limit` pairs, derained
    and scored by the shared path (sampling.derain_items); an unreadable pair is skipped."""
    from helpers.tiling import count_windows
    from sampling import Item, assign_names, derain_items
    items = assign_names([Item(rain, clean) for clean, rain in pairs[:limit]])
    report = derain_items(derainer, items, score=True, seed=seed, progress=False, keep=limit,
                          say=note)
    done = [(Path(row["input"]).name, rain, ours, clean, row["input_psnr_y"], row["psnr_y"])
            for row, (rain, ours, clean) in zip(report.rows, report.shown)]
    for name, rain, *_ in done:
        h, w = rain.shape[:2]
        print(f"  derained {name} ({w}x{h}, {count_windows(h, w, derainer.rep.crop)} windows)",
              flush=True)
    if done:
        print(f"  {report.seconds_per_image:.1f} s per image", flush=True)
    return done


def pairs_figure(done, path, set_name, derainer):
    from helpers.figures import zoom_comparison_figure
    examples = [{"images": (rain, ours, clean),
                 "captions": (f"rain {name}: {p_in:.2f} dB", f"ours: {p_out:.2f} dB",
                              "clean")}
                for name, rain, ours, clean, p_in, p_out in done]
    mean_in = np.mean([d[4] for d in done])
    mean_out = np.mean([d[5] for d in done])
    title = (f"{set_name}: {len(done)} pair(s), mean PSNR-Y rain {mean_in:.2f} dB \u2192 ours "
             f"{mean_out:.2f} dB\n{derainer.describe()}")
    zoom_comparison_figure(examples, path, ("rain", "ours", "clean"), title=title)
    return Path(path)


def spectra_from(done, path, set_name):
    from helpers.figures import spectra_figure
    name, rain, ours, clean, p_in, p_out = done[0]
    spectra_figure(rain, clean, ours, path,
                   title=f"{set_name} {name}: full-image luminance spectra "
                         f"(PSNR-Y rain {p_in:.2f} dB, ours {p_out:.2f} dB)")
    return Path(path)


def downscale(img_u8, max_side):
    """Shrink so the long side is at most max_side (Lanczos); returns (image, shrunk?)."""
    from PIL import Image
    h, w = img_u8.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return img_u8, False
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img_u8).resize(size, Image.LANCZOS)), True


def real_photos(folder, n):
    """n photos spread evenly over the folder's images (sorted by number)."""
    from helpers.images import is_image_file
    from helpers.pairs import background_number
    number = lambda f: background_number(f.stem)
    files = sorted((f for f in Path(folder).iterdir() if is_image_file(f)),
                   key=lambda f: (number(f) is None, number(f) or 0, f.name))
    if len(files) <= n:
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in idx]


def make_real_figure(derainer, folder, n, max_side, path):
    from helpers.figures import zoom_comparison_figure
    from helpers.images import ImageError, read_rgb
    examples, shrunk_any = [], False
    candidates = real_photos(folder, n * 2)  # spares in case some cannot be read
    picked = real_photos(folder, n)
    for f in picked + [c for c in candidates if c not in picked]:
        if len(examples) >= n:
            break
        try:
            img = read_rgb(f)
        except ImageError as e:
            note(f"skipped a real photo: {e}")
            continue
        h0, w0 = img.shape[:2]
        img, shrunk = downscale(img, max_side)
        shrunk_any |= shrunk
        ours = derain_one(derainer, img, f.name)
        h, w = img.shape[:2]
        size = f"{w0}x{h0} \u2192 {w}x{h}" if shrunk else f"{w}x{h}"
        examples.append({"images": (img, ours), "captions": (f"rain {f.name} ({size})", "ours"),
                         "box": None})
    if not examples:
        note(f"{folder}: no readable photo; real-rain figure skipped")
        return None
    title = (f"Real rain (no ground truth): {len(examples)} photos"
             + (f", downscaled to \u2264 {max_side} px on the long side before deraining"
                if shrunk_any else "") + f"\n{derainer.describe()}")
    zoom_comparison_figure(examples, path, ("rain", "ours"), title=title)
    return Path(path)


# ============================================================================ (d) speed
def read_speed_rows(path):
    """Rows of (sampler, steps, seconds_per_image, psnr_y [, input_psnr_y, set]) from a JSON
    list or {"rows"/"results": [...]}, JSON lines, or a CSV. Raises ValueError if unusable."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        raw = list(csv.DictReader(text.splitlines()))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        if isinstance(data, dict):
            data = next((data[k] for k in ("rows", "results", "runs") if k in data), [data])
        raw = data
    rows = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: row {i + 1} is not a mapping")
        row = {}
        for key, aliases in SPEED_ALIASES.items():
            found = next((r[a] for a in aliases if r.get(a) not in (None, "")), None)
            if found is None:
                raise ValueError(f"{path}: row {i + 1} lacks {key!r} (needs sampler, steps, "
                                 "seconds_per_image, psnr_y)")
            row[key] = found
        row["sampler"] = str(row["sampler"])
        row["steps"] = int(float(row["steps"]))
        row["seconds_per_image"] = float(row["seconds_per_image"])
        row["psnr_y"] = float(row["psnr_y"])
        if r.get("input_psnr_y") not in (None, ""):
            row["input_psnr_y"] = float(r["input_psnr_y"])
        for k in ("set", "dataset"):
            if r.get(k) not in (None, ""):
                row["set"] = str(r[k])
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


# ============================================================================ main
def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--run", action="append", default=[], metavar="RUN_DIR",
                    help="a run dir with log.jsonl (repeat to overlay runs)")
    ap.add_argument("--ckpt", help="checkpoint for the comparison and spectra figures")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="the shared real data (default: ../shared/data beside the repository, "
                         "or $DERAIN_DATA)")
    ap.add_argument("--out", default="figures", help="output folder (default figures/)")
    ap.add_argument("--steps", type=int, default=None,
                    help="sampling steps (default: the checkpoint's sample_steps)")
    ap.add_argument("--pairs", type=int, default=3, help="pairs per comparison figure (3)")
    ap.add_argument("--numbers", default="51-60",
                    help="held-out pair numbers of Rain100L/H to draw from (51-60)")
    ap.add_argument("--real", type=int, default=4, help="real rainy photos shown (4)")
    ap.add_argument("--max-side", type=int, default=640,
                    help="downscale real photos to at most this long side first (640; 0: never)")
    ap.add_argument("--csv", help="also a comparison (and spectra, if no real data) on the "
                                  "pairs of this CSV (preprocess_csv.py format)")
    ap.add_argument("--speed", action="append", default=[], metavar="FILE",
                    help="JSON/CSV of (sampler, steps, seconds_per_image, psnr_y); repeat it to "
                         "overlay several (rows without a set are named by their file)")
    ap.add_argument("--pipeline", default=str(REPO / "training_pipeline.png"),
                    help="where to refresh the pipeline diagram ('' skips it)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="windows per network call (default: the checkpoint's sample_batch)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], False

    if args.pipeline:  # (e)
        from tools.draw_pipeline import draw_pipeline
        written.append(draw_pipeline(args.pipeline))

    if args.run:  # (a)
        p = make_training_curves(args.run, out)
        if p:
            written.append(p)
    else:
        note("no --run given: training curves skipped")

    if args.speed:  # (d)
        from helpers.figures import speed_figure
        try:
            rows = []
            for path in args.speed:
                part = read_speed_rows(path)
                if len(args.speed) > 1:
                    part = [{"set": Path(path).stem, **r} for r in part]
                rows += part
        except (OSError, ValueError) as e:
            print(f"error: speed figure skipped: {e}", flush=True)
            failed = True
        else:
            names = ", ".join(Path(p).name for p in args.speed)
            speed_figure(rows, out / "speed.png", title=f"Quality against sampling cost ({names})")
            written.append(out / "speed.png")
    else:
        note("no --speed file given: PSNR-vs-steps figure skipped")

    data = Path(args.data)
    have_data = data.is_dir()
    if not args.ckpt:
        note("no --ckpt given: comparison, real-rain and spectra figures skipped")
    else:  # (b), (c)
        import torch

        from checkpoint import CheckpointError, load_derainer
        from helpers.devices import DeviceError, resolve_device
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            derainer, _ = load_derainer(args.ckpt, device=resolve_device(args.device),
                                        sample_steps=args.steps, sample_batch=args.batch_size)
        except (CheckpointError, DeviceError) as e:
            print(f"error: {e}; checkpoint figures skipped", flush=True)
            failed = True
            derainer = None
        spectra_done = False
        if derainer is not None and not have_data:
            note(f"data folder {data} not found: real-data figures skipped")
        if derainer is not None and have_data:
            numbers = parse_numbers(args.numbers)
            for set_name, fname in PAIRED_SETS:
                folder = data / set_name
                if not (folder / "input").is_dir():
                    note(f"{folder} not found: {fname} skipped")
                    continue
                pairs = numbered_pairs(folder, numbers)
                if not pairs:
                    note(f"{folder}: no pair numbered {args.numbers}: {fname} skipped")
                    continue
                print(f"{set_name}: deraining {min(len(pairs), args.pairs)} pair(s)", flush=True)
                done = derain_pairs(derainer, pairs, args.pairs, args.seed)
                if not done:
                    continue
                written.append(pairs_figure(done, out / fname, f"{set_name} (held-out "
                                            f"numbers {args.numbers})", derainer))
                if not spectra_done:
                    written.append(spectra_from(done, out / "spectra.png", set_name))
                    spectra_done = True
            real = data / "Real_rain" / "input"
            if real.is_dir() and args.real > 0:
                print(f"Real_rain: deraining {args.real} photo(s)", flush=True)
                p = make_real_figure(derainer, real, args.real, args.max_side,
                                     out / "real_rain.png")
                if p:
                    written.append(p)
            else:
                note(f"{real} not found: real_rain.png skipped")
        if derainer is not None and args.csv:
            from helpers.pairs import read_pairs
            try:
                pairs = read_pairs(args.csv)
            except InputError as e:
                print(f"error: --csv {args.csv}: {e}", flush=True)
                failed = True
                pairs = []
            done = derain_pairs(derainer, pairs, args.pairs, args.seed) if pairs else []
            if done:
                name = Path(args.csv).name
                written.append(pairs_figure(done, out / "comparison_pairs.png", name, derainer))
                if not spectra_done:
                    written.append(spectra_from(done, out / "spectra.png", name))
                    spectra_done = True
        if derainer is not None and not spectra_done:
            note("no pair derained: spectra figure skipped")

    for p in written:
        print(f"wrote {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
