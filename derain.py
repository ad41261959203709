"""Derain images of any size with a trained checkpoint, and score them.

    python derain.py --ckpt runs/synthetic-fft/ckpt_00004000.pt photo.jpg folder/ --out derained/
    python derain.py --ckpt CKPT pairs.csv --out out/ --eval            # clean column as target
    python derain.py --ckpt CKPT rainy_dir/ --out out/ --eval clean_dir/ --steps 50 --ensemble 4

A spectrum's meaning depends on the size of the window it was computed on, so an image is cut
into overlapping windows of the training crop size, each window is derained in the Fourier domain
(batched), and the windows are blended back in image space with a smooth weight, which leaves no
seams. Beyond the image itself (a float64 output and weight map, about 4x the image as float64:
~1.2 GB for 4000x3000), memory grows with the batch of windows, not with the image.

Outputs: OUT/<stem>.png (lossless; inputs sharing a stem get '<parent folder>_<stem>'), and with
--eval OUT/scores.csv (per image: ours and the rainy input, see helpers/metrics.py). A bad input
is reported on one line naming it and skipped; the exit status is 1 if any failed, 2 for a bad
checkpoint or arguments. `python derain.py --help` lists the sampling options.
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusion import sample
from helpers.images import ImageError, is_image_file, read_rgb, to_uint8, write_rgb
from helpers.seeding import hash_seed
from helpers.statistics import pad_to, read_pairs, window_starts

OVERLAP = 0.5  # fraction of a window shared with its neighbour


def tile_starts(length, crop, overlap=OVERLAP):
    """Window offsets for deraining: the statistics' tiling with half-window overlap."""
    return window_starts(length, crop, overlap)


def window_weight(crop):
    """(crop, crop) raised-cosine weight, positive everywhere: near 0 at a window's edge, where
    its neighbour is near its centre, so overlapping windows hand over smoothly. Weights are
    normalised by their sum, so a pixel covered by one window keeps that window's value."""
    w = np.sin(np.pi * (np.arange(crop) + 0.5) / crop) ** 2
    return np.outer(w, w)


def derain_array(model, codec, diffusion, rain, sampler="ddim", steps=20, eta=0.0,
                 guidance=1.0, clip_x0=3.0, ensemble=1, batch_size=32, generator=None,
                 device="cpu", progress=None):
    """Derain one image. rain: float (3, H, W) in [0, 1] -> float64 (3, H, W), not clipped.

    Windows of codec.crop pixels are derained in batches of `batch_size`; `ensemble` samples per
    window are averaged (in image space, so the result is the mean derained image)."""
    crop = codec.crop
    _, h0, w0 = rain.shape
    rain = pad_to(np.asarray(rain, np.float64), crop)
    _, h, w = rain.shape
    boxes = [(y, x) for y in tile_starts(h, crop) for x in tile_starts(w, crop)]
    jobs = [(y, x) for y, x in boxes for _ in range(ensemble)]
    weight = window_weight(crop)
    out = np.zeros((3, h, w))
    norm = np.zeros((h, w))
    dtype = next(model.parameters()).dtype
    # each window's initial noise comes from its own seed, so with DDIM (eta = 0) the result
    # does not depend on how the windows are batched
    base = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device)) \
        if generator is not None else int(torch.randint(0, 2 ** 62, (1,)))
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        windows = np.stack([rain[:, y:y + crop, x:x + crop] for y, x in chunk])  # (B, 3, c, c)
        _, cond = codec.encode(None, windows)
        cond = torch.from_numpy(np.ascontiguousarray(cond)).to(device=device, dtype=dtype)
        x_T = torch.stack([torch.randn(cond.shape[1:], generator=torch.Generator().manual_seed(
            base + i + k), dtype=dtype) for k in range(len(chunk))])
        gen = sample(model, cond, diffusion, sampler, steps, eta, guidance, generator,
                     clip_x0 or None, x_T=x_T)
        derained = codec.decode(gen.double().cpu().numpy(), windows)  # (B, 3, c, c)
        for (y, x), d in zip(chunk, derained):
            out[:, y:y + crop, x:x + crop] += d * weight
            norm[y:y + crop, x:x + crop] += weight
        if progress is not None:
            progress.update(len(chunk))
    out /= norm  # in place: no second float64 copy of a large image
    return out[:, :h0, :w0]


def count_windows(h, w, crop, ensemble=1):
    return len(tile_starts(max(h, crop), crop)) * len(tile_starts(max(w, crop), crop)) * ensemble


def evaluate_pairs(model, codec, diffusion, cfg, csv, limit=None, figure=None, out_dir=None,
                   device="cpu", progress=True, seed=0):
    """Derain the rainy images of a pairs CSV at full size and score them against the clean
    ones (PSNR-Y / SSIM-Y, the deraining literature's protocol). Returns a dict of means and
    per-image rows; writes the derained images to out_dir and a comparison figure if asked."""
    from tqdm import tqdm

    from helpers.metrics import psnr_y, ssim_y
    pairs = read_pairs(csv)[:limit] if limit else read_pairs(csv)
    rows, shown, errors = [], [], []
    was_training = model.training
    model.eval()
    bar = tqdm(pairs, desc="derain", unit="img", disable=not progress)
    t0 = time.time()
    try:
        for i, (clean_path, rain_path) in enumerate(bar):
            try:
                clean_u8, rain_u8 = read_rgb(clean_path), read_rgb(rain_path)
                if clean_u8.shape != rain_u8.shape:
                    raise ImageError(f"{rain_path}: size differs from its clean image "
                                     f"{clean_path}")
            except ImageError as e:  # one bad pair must not end the evaluation of the rest
                print(f"skipped: {e}", file=sys.stderr)
                errors.append(str(e))
                continue
            g = torch.Generator(device=device).manual_seed(image_seed(seed, i))
            pred = derain_array(model, codec, diffusion, rain_u8.transpose(2, 0, 1) / 255.0,
                                cfg["sampler"], cfg["sample_steps"], cfg["eta"], cfg["guidance"],
                                cfg["clip_x0"], generator=g, device=device)
            pred_u8 = to_uint8(np.clip(pred, 0, 1))
            rows.append({"image": os.path.basename(rain_path),
                         "psnr_y": psnr_y(pred_u8, clean_u8), "ssim_y": ssim_y(pred_u8, clean_u8),
                         "input_psnr_y": psnr_y(rain_u8, clean_u8),
                         "input_ssim_y": ssim_y(rain_u8, clean_u8)})
            if out_dir:  # the row number keeps two rainy files of the same name apart
                write_rgb(Path(out_dir) / f"{i + 1:04d}_{Path(rain_path).stem}.png", pred_u8)
            if len(shown) < 4:
                shown.append((rain_u8, pred_u8, clean_u8))
    finally:
        model.train(was_training)
    seconds = (time.time() - t0) / max(1, len(rows))
    if not rows:
        raise ValueError(f"{csv}: none of the {len(pairs)} pairs could be derained")
    if figure and shown:
        from helpers.figures import comparison_figure
        comparison_figure(shown, figure, spectra=True)
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    return {"n": len(rows), "rows": rows, "psnr_y": mean("psnr_y"), "ssim_y": mean("ssim_y"),
            "input_psnr_y": mean("input_psnr_y"), "input_ssim_y": mean("input_ssim_y"),
            "seconds_per_image": seconds, "errors": errors}


# ===================================================================== command line
class InputItem:
    """One image to derain: its path, the clean target when a pairs CSV gave one, and the
    output name (a file stem, unique within the run)."""

    def __init__(self, path, target=None):
        self.path, self.target, self.name = Path(path), target, None


def natural_key(name):
    """Sort key comparing the digit runs of a name as numbers: rain-2 before rain-10."""
    parts = re.split(r"(\d+)", str(name))
    return [int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)], str(name)


def expand_inputs(paths):
    """Command-line INPUTs -> (items, errors). An image file is one item; a folder gives its
    image files (not its sub-folders), sorted naturally; a pairs CSV gives its rainy column,
    each with its clean column as the target. A missing path, an empty folder or an unreadable
    CSV is an error (a message naming it); the same file given twice is derained once."""
    items, errors, seen = [], [], set()

    def add(path, target=None):
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            items.append(InputItem(path, target))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            names = sorted((n for n in os.listdir(p) if not n.startswith(".") and
                            is_image_file(n) and (p / n).is_file()), key=natural_key)
            if not names:
                errors.append(f"{p}: no image files in this folder")
            for n in names:
                add(p / n)
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                errors.append(f"{p}: file not found")
                continue
            try:
                pairs = read_pairs(p)
            except (ValueError, OSError, TypeError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                errors.append(msg if str(p) in msg else f"{p}: not a readable pairs CSV ({msg})")
                continue
            if not pairs:
                errors.append(f"{p}: no pairs in this CSV")
            for clean, rain in pairs:
                add(rain, clean)
        elif not p.exists():
            errors.append(f"{p}: file not found")
        else:
            add(p)  # any other file is read as an image; read_rgb says if it is not one
    return items, errors


def assign_names(items):
    """Give every item a unique output stem: its own stem, or, when several inputs share a stem,
    '<parent folder>_<stem>' (then a numeric suffix if that still collides). Compared without
    case, so no two outputs can land on one file on a case-insensitive file system."""
    counts = {}
    for it in items:
        counts[it.path.stem.casefold()] = counts.get(it.path.stem.casefold(), 0) + 1
    plain = {it.path.stem.casefold() for it in items if counts[it.path.stem.casefold()] == 1}
    used = set()
    for it in items:
        stem = it.path.stem
        name = stem if counts[stem.casefold()] == 1 else \
            f"{it.path.parent.name or 'input'}_{stem}"
        base, k = name, 2
        while name.casefold() in used or (name != stem and name.casefold() in plain):
            name, k = f"{base}_{k}", k + 1
        used.add(name.casefold())
        it.name = name
    return items


def index_targets(folder):
    """{stem: path} of the image files in `folder`; stems that occur twice map to None."""
    found = {}
    for n in sorted(os.listdir(folder)):
        if n.startswith(".") or not is_image_file(n):
            continue
        stem = os.path.splitext(n)[0]
        found[stem] = None if stem in found else Path(folder) / n
    return found


def image_seed(seed, index):
    """Seed of image `index`'s generator: a function of (seed, index) alone, so an image's
    noise does not depend on the images derained before it."""
    return hash_seed("derain", int(seed), int(index))


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_model(path, ema=True, device="cpu"):
    """(model on `device`, codec, diffusion, config) from a checkpoint of ddpm_conditional.py.
    Raises CheckpointError (its message names the file) for anything unusable."""
    from ddpm_conditional import CheckpointError, load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(path)
    try:
        model, codec, diffusion, cfg = model_from_checkpoint(ckpt, ema=ema)
    except Exception as e:  # missing keys, mismatched weights, a codec state it cannot read
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(f"{path}: checkpoint is incomplete or inconsistent "
                              f"({type(e).__name__}: {detail}); use an earlier checkpoint of "
                              "the run") from e
    return model.to(device), codec, diffusion, cfg


def _parser():
    p = argparse.ArgumentParser(
        prog="derain.py", description="Derain images of any size with a trained checkpoint "
        "(all model settings come from it); optionally score the results.",
        epilog="Outputs: DIR/<stem>.png (lossless); with --eval also DIR/scores.csv. Exit "
               "status 0 if every input was derained (and scored), 1 if any failed, 2 for a "
               "bad checkpoint or bad arguments.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file, folder of images (not recursive) or pairs CSV "
                        "(image_filepath,image_rain_filepath: the rainy column is derained)")
    p.add_argument("--ckpt", required=True, help="checkpoint written by ddpm_conditional.py")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=None,
                   help="network evaluations per sample (default: the checkpoint's sample_steps)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM noise (0: deterministic given the seed); ignored by ddpm")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (1: none; needs a model trained with "
                        "p_uncond > 0)")
    p.add_argument("--clip-x0", type=float, default=None, metavar="C",
                   help="bound the x0 estimate to [-C, C] while sampling (0: off; default: the "
                        "checkpoint's clip_x0)")
    p.add_argument("--seed", type=int, default=0,
                   help="image i's noise comes from a generator seeded with (seed, i)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="average K samples per window (the mean derained image)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="windows per forward pass (32); with DDIM and eta 0 the output does not "
                        "depend on it (each window's initial noise has its own seed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--eval", nargs="?", const="", default=None, metavar="TARGET_DIR",
                   help="score the outputs (PSNR-Y, SSIM-Y, PSNR-RGB, and the rainy input as the "
                        "do-nothing baseline) against TARGET_DIR's image of the same stem as "
                        "the input, or, with no TARGET_DIR, against a pairs CSV's clean column; "
                        "writes DIR/scores.csv and prints the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _check_args(p, a):
    for name, value, low in (("--steps", a.steps, 1), ("--ensemble", a.ensemble, 1),
                             ("--batch-size", a.batch_size, 1)):
        if value is not None and value < low:
            p.error(f"{name} must be at least {low}, got {value}")
    if a.eta < 0:
        p.error(f"--eta must be >= 0, got {a.eta}")
    if a.clip_x0 is not None and a.clip_x0 < 0:
        p.error(f"--clip-x0 must be >= 0 (0: off), got {a.clip_x0}")
    if a.eval and not Path(a.eval).is_dir():
        p.error(f"--eval {a.eval}: not a folder (give the folder of clean targets, or put a bare "
                "--eval after the inputs to score against a pairs CSV's clean column)")


def _score(it, rain_u8, pred_u8, targets, eval_dir):
    """Score one output and its rainy input against the target -> (row, None) or (None, error).
    The target: TARGET_DIR's image of the input's stem, else the pairs CSV's clean image."""
    from helpers.metrics import BASELINE_PREFIX, score_pair
    if targets is not None:
        target = targets.get(it.path.stem, False)
        if target is None:
            return None, (f"{it.path}: several files named {it.path.stem}.* in {eval_dir}; "
                          "cannot tell which is its target: not scored")
        if target is False:
            return None, f"{it.path}: no target named {it.path.stem}.* in {eval_dir}: not scored"
    else:
        target = it.target
        if target is None:
            return None, f"{it.path}: no target (not from a pairs CSV, no --eval DIR): not scored"
    try:
        target_u8 = read_rgb(target)
        if target_u8.shape != pred_u8.shape:
            raise ValueError(f"{it.path} is {pred_u8.shape[1]}x{pred_u8.shape[0]} but its target "
                             f"{target} is {target_u8.shape[1]}x{target_u8.shape[0]}: not scored")
        ours, base = score_pair(pred_u8, target_u8), score_pair(rain_u8, target_u8)
    except ValueError as e:  # ImageError names the target; a size or SSIM-window problem
        msg = str(e)
        return None, msg if (str(target) in msg or str(it.path) in msg) else \
            f"{it.path}: {msg}: not scored"
    row = {"name": it.name, "pred": f"{it.name}.png", "target": str(target), **ours,
           "input": str(it.path), **{BASELINE_PREFIX + k: v for k, v in base.items()}}
    return row, None


def _report_scores(rows, n_failed, out_dir):
    """Write DIR/scores.csv and print the summary table (ours beside the rainy input)."""
    from helpers.metrics import BASELINE_PREFIX, METRICS, format_summary, write_scores_csv
    mean = lambda key: float(np.mean([r[key] for r in rows])) if rows else float("nan")
    summary = {"n": len(rows), "n_failed": n_failed, **{k: mean(k) for k in METRICS},
               "baseline": {k: mean(BASELINE_PREFIX + k) for k in METRICS}}
    if rows:
        write_scores_csv(rows, out_dir / "scores.csv")
    print(format_summary(summary))
    if rows:
        print(f"per-image scores: {out_dir / 'scores.csv'}")
    return summary


def main(argv=None):
    """Command line; returns the exit status (0 all done, 1 some input failed, 2 bad
    checkpoint or arguments)."""
    from tqdm import tqdm

    p = _parser()
    a = p.parse_intermixed_args(argv)
    _check_args(p, a)
    t_start = time.time()
    say = lambda msg: tqdm.write(msg, file=sys.stderr)

    items, failed = expand_inputs(a.inputs)
    for msg in failed:
        say(f"error: {msg}")
    n_bad_inputs = len(failed)
    assign_names(items)
    out_dir = Path(a.out)
    for it in items:
        if os.path.abspath(out_dir / f"{it.name}.png") == os.path.abspath(it.path):
            p.error(f"--out {out_dir}: writing {it.name}.png there would overwrite the input "
                    f"{it.path}; choose another output folder")
    targets = None
    if a.eval:
        targets = index_targets(a.eval)
    elif a.eval == "" and not any(it.target for it in items):
        p.error("--eval without a TARGET_DIR needs a pairs CSV input (its clean column is the "
                "target); give --eval TARGET_DIR")

    try:
        device = pick_device(a.device)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    from ddpm_conditional import CheckpointError
    try:
        model, codec, diffusion, cfg = load_model(a.ckpt, ema=not a.no_ema, device=device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clip = cfg.get("clip_x0", 0.0) if a.clip_x0 is None else a.clip_x0
    a.steps = a.steps or cfg.get("sample_steps", 20)
    if a.guidance != 1.0 and not cfg.get("p_uncond", 0):
        say(f"warning: {a.ckpt} was trained without condition dropout (p_uncond 0): "
            f"--guidance {a.guidance} extrapolates towards an untrained unconditional model")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: {out_dir}: cannot create the output folder ({e})", file=sys.stderr)
        return 2
    print(f"{a.ckpt}: {cfg.get('domain', 'fft')} domain, window {codec.crop} px, "
          f"{'raw' if a.no_ema else 'EMA'} weights on {device}; {a.sampler} {a.steps} steps, "
          f"eta {a.eta}, guidance {a.guidance}, clip_x0 {clip}, ensemble {a.ensemble}, "
          f"seed {a.seed}", file=sys.stderr)

    rows, n_done, n_unscored = [], 0, 0
    bar = tqdm(total=len(items), desc="derain", unit="img", disable=a.quiet, dynamic_ncols=True)
    for index, it in enumerate(items):
        bar.set_postfix_str(it.name, refresh=False)
        try:
            rain_u8 = read_rgb(it.path)
            h, w = rain_u8.shape[:2]
            n_win = count_windows(h, w, codec.crop, a.ensemble)
            inner = tqdm(total=n_win, desc=f"  {it.name}", unit="win", leave=False,
                         disable=a.quiet or n_win <= a.batch_size, dynamic_ncols=True)
            try:
                gen = torch.Generator(device=device).manual_seed(image_seed(a.seed, index))
                pred = derain_array(model, codec, diffusion, rain_u8.transpose(2, 0, 1) / 255.0,
                                    a.sampler, a.steps, a.eta, a.guidance, clip, a.ensemble,
                                    a.batch_size, gen, device, progress=inner)
            finally:
                inner.close()
            pred_u8 = to_uint8(pred)  # rounds and clips to [0, 255]
            del pred
            write_rgb(out_dir / f"{it.name}.png", pred_u8)
            n_done += 1
        except torch.cuda.OutOfMemoryError as e:
            say(f"error: {it.path}: out of GPU memory ({str(e).splitlines()[0]}); try a smaller "
                "--batch-size")
            failed.append(str(it.path))
            pred_u8 = None
        except (ImageError, OSError, ValueError, RuntimeError, MemoryError) as e:
            msg = str(e) or type(e).__name__
            say(f"error: {msg if str(it.path) in msg else f'{it.path}: {msg}'}")
            failed.append(str(it.path))
            pred_u8 = None
        if pred_u8 is not None and a.eval is not None:
            row, err = _score(it, rain_u8, pred_u8, targets, a.eval)
            if err:
                say(f"error: {err}")
                n_unscored += 1
            else:
                rows.append(row)
        bar.update(1)
    bar.close()

    if a.eval is not None:
        _report_scores(rows, n_bad_inputs + len(items) - len(rows), out_dir)
    seconds = (time.time() - t_start) / max(1, n_done)
    print(f"derained {n_done}, failed {len(failed)}" +
          (f", not scored {n_unscored}" if n_unscored else "") +
          f" ({seconds:.2f} s per image); outputs in {out_dir}")
    if a.eval is not None and not rows:
        print("error: no image was scored", file=sys.stderr)
        return 1
    return 1 if failed or n_unscored or not items else 0


if __name__ == "__main__":
    sys.exit(main())
