"""Derain images of any size with a trained checkpoint, and score them.

    python derain.py photo.jpg                       # the newest checkpoint under runs/, out derained/
    python derain.py --ckpt runs/synthetic-fft/ckpt_00004000.pt photo.jpg folder/ --out derained/
    python derain.py --ckpt CKPT pairs.csv --out out/ --eval            # clean column as target
    python derain.py --ckpt CKPT rainy_dir/ --out out/ --eval clean_dir/ --steps 50 --ensemble 4
    python derain.py --ckpt CKPT rainy_dir/ --out out/ --flips 2    # mean with its mirror image
    python derain.py --export CKPT --out model.pt [--fp16]     # a small inference-only file

Everything the model needs comes from the checkpoint, the sampling settings too (its config's
sampler, sample_steps, eta, guidance, clip_x0, ensemble, sample_batch, flips); a flag overrides
one. The deraining itself (windows of the training crop, blended in image space) is sampling.py's.

Every ordinary image is derained in its own form (helpers/images.py): the model sees RGB
(grayscale replicated), and OUT/<stem>.png keeps the input's size, grayscale or colour, bit depth
(16-bit stays 16-bit) and alpha channel (passed through unchanged); an EXIF rotation is applied
first, so the output is upright; a palette image comes back as full-colour RGB (its palette
cannot hold the derained colours). Inputs sharing a stem get '<parent folder>_<stem>'. With
--eval, OUT/scores.csv (per image: ours and the rainy input, see helpers/metrics.py) and
OUT/settings.json (the checkpoint and sampling settings that made them). A file that
cannot be decoded is reported on one line naming it and skipped; the exit status is 1 if any
failed, 2 for a bad checkpoint or arguments. `python derain.py --help` lists the options.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from checkpoint import CheckpointError, export_checkpoint, latest_checkpoint, load_derainer
from helpers.images import atomic_path, is_image_file, natural_key
from helpers.metrics import index_by_stem
from helpers.errors import PairsError
from helpers.pairs import read_pairs
from helpers.devices import DeviceError, resolve_device
from sampling import FLIP_COUNTS, Item, assign_names, derain_items, sampler_text


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
            items.append(Item(path, target))

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
            except PairsError as e:  # it names the file
                errors.append(str(e))
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


def attach_targets(items, folder):
    """Give each item the image of its stem in `folder` as its target (or say why there is
    none: no such file, or several files with that stem)."""
    found, dupes = index_by_stem(folder)
    for it in items:
        stem = it.path.stem
        it.target = found.get(stem)
        if stem in dupes:
            it.target_error = (f"{it.path}: several files named {stem}.* in {folder}; cannot "
                               "tell which is its target: not scored")
        elif it.target is None:
            it.target_error = f"{it.path}: no target named {stem}.* in {folder}: not scored"
    return items


def _parser():
    p = argparse.ArgumentParser(
        prog="derain.py", description="Derain images of any size with a trained checkpoint "
        "(all model and sampling settings come from it; a flag overrides one); optionally "
        "score the results.",
        epilog="Outputs: DIR/<stem>.png (lossless); with --eval also DIR/scores.csv and "
               "DIR/settings.json. Exit "
               "status 0 if every input was derained (and scored), 1 if any failed, 2 for a "
               "bad checkpoint or bad arguments.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image file, folder of images (not recursive) or pairs CSV "
                        "(image_filepath,image_rain_filepath: the rainy column is derained)")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint written by ddpm_conditional.py or --export (default: the "
                        "newest .pt under runs/)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default derained/); with --export, the file to write")
    p.add_argument("--export", default=None, metavar="CKPT",
                   help="write an inference-only copy of CKPT (EMA weights, config, "
                        "normalisation; no optimiser) to --out and exit")
    p.add_argument("--fp16", action="store_true", help="with --export: float16 weights")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="default: the checkpoint's sampler")
    p.add_argument("--steps", type=int, default=None,
                   help="network evaluations per sample (default: the checkpoint's sample_steps)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM noise (0: deterministic given the seed; default: the checkpoint's); "
                        "ignored by ddpm")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (1: none; needs a model trained with "
                        "p_uncond > 0; default: the checkpoint's)")
    p.add_argument("--clip-x0", type=float, default=None, metavar="C",
                   help="bound the x0 estimate to [-C, C] while sampling (0: off; default: the "
                        "checkpoint's clip_x0)")
    p.add_argument("--seed", type=int, default=0,
                   help="image i's noise comes from a generator seeded with (seed, i)")
    p.add_argument("--ensemble", type=int, default=None, metavar="K",
                   help="average K samples per window (the mean derained image; default: the "
                        "checkpoint's ensemble)")
    p.add_argument("--flips", type=int, default=None, choices=FLIP_COUNTS,
                   help="test-time self-ensemble: derain the image as it is and mirrored "
                        "left-right (2), also upside down and both (4), and average the results "
                        "mirrored back (that many times the cost; default: the checkpoint's "
                        "flips, 1 unless set at training)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default: the checkpoint's sample_batch); with "
                        "DDIM and eta 0 the output does not depend on it")
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
    if a.eta is not None and a.eta < 0:
        p.error(f"--eta must be >= 0, got {a.eta}")
    if a.clip_x0 is not None and a.clip_x0 < 0:
        p.error(f"--clip-x0 must be >= 0 (0: off), got {a.clip_x0}")
    if a.eval and not Path(a.eval).is_dir():
        p.error(f"--eval {a.eval}: not a folder (give the folder of clean targets, or put a bare "
                "--eval after the inputs to score against a pairs CSV's clean column)")


def _export(p, a):
    if not a.out:
        p.error("--export needs --out FILE.pt")
    try:
        before, after = export_checkpoint(a.export, a.out, fp16=a.fp16)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {after / 1e6:.1f} MB ({'float16' if a.fp16 else 'float32'} EMA "
          f"weights, config, normalisation) from {a.export} ({before / 1e6:.1f} MB, the training "
          "checkpoint)")
    return 0


def _report_scores(report, n_bad_inputs, out_dir, settings):
    """Write DIR/scores.csv, and beside it DIR/settings.json (the checkpoint and the sampling
    settings that made the outputs, so that a later comparison can say what it compares), and
    print the summary table (ours beside the rainy input)."""
    from helpers.metrics import format_summary, write_scores_csv
    summary = report.summary
    summary["n_failed"] += n_bad_inputs + len(report.failed)
    if report.rows:
        write_scores_csv(report.rows, out_dir / "scores.csv")
        with atomic_path(out_dir / "settings.json") as tmp:
            Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    print(format_summary(summary))
    if report.rows:
        print(f"per-image scores: {out_dir / 'scores.csv'}")
    return summary


def main(argv=None):
    """Command line; returns the exit status (0 all done, 1 some input failed, 2 bad
    checkpoint or arguments)."""
    from tqdm import tqdm

    p = _parser()
    a = p.parse_intermixed_args(argv)
    if a.export:
        return _export(p, a)
    if not a.inputs:
        p.error("give at least one INPUT (an image, a folder or a pairs CSV)")
    _check_args(p, a)
    t_start = time.time()
    say = lambda msg: tqdm.write(msg, file=sys.stderr)
    if a.ckpt is None:
        a.ckpt = latest_checkpoint("runs")
        if a.ckpt is None:
            print("error: no checkpoint given and none under runs/; train one with `python "
                  "ddpm_conditional.py` (about 10 minutes on a CPU) or give --ckpt",
                  file=sys.stderr)
            return 2
        print(f"using the newest checkpoint under runs/: {a.ckpt}", file=sys.stderr)
    a.out = a.out or "derained"

    items, failed = expand_inputs(a.inputs)
    for msg in failed:
        say(f"error: {msg}")
    assign_names(items)
    out_dir = Path(a.out)
    for it in items:
        if os.path.abspath(out_dir / f"{it.name}.png") == os.path.abspath(it.path):
            p.error(f"--out {out_dir}: writing {it.name}.png there would overwrite the input "
                    f"{it.path}; choose another output folder")
    if a.eval:
        attach_targets(items, a.eval)
    elif a.eval == "" and not any(it.target for it in items):
        p.error("--eval without a TARGET_DIR needs a pairs CSV input (its clean column is the "
                "target); give --eval TARGET_DIR")

    try:
        device = resolve_device(a.device)
    except DeviceError as e:  # e.g. --device cuda without a GPU: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        derainer, cfg = load_derainer(
            a.ckpt, device=device, ema=not a.no_ema, sampler=a.sampler, sample_steps=a.steps,
            eta=a.eta, guidance=a.guidance, clip_x0=a.clip_x0, ensemble=a.ensemble,
            sample_batch=a.batch_size, flips=a.flips)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = derainer.settings
    if s["guidance"] != 1.0 and not cfg["p_uncond"]:
        say(f"warning: {a.ckpt} was trained without condition dropout (p_uncond 0): "
            f"--guidance {s['guidance']} extrapolates towards an untrained unconditional model")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: {out_dir}: cannot create the output folder ({e})", file=sys.stderr)
        return 2
    # the step count is the checkpoint's unless --steps is given: say so, since a study's
    # checkpoint may carry another count than the one its table quotes
    steps_from = " (steps: the checkpoint's; --steps N to change)" \
        if a.steps is None and derainer.diffusion.name != "regression" else ""
    print(f"{a.ckpt}: {derainer.rep.name} ({derainer.rep.domain} domain), window "
          f"{derainer.rep.crop} px, {'raw' if a.no_ema else 'EMA'} weights on {device}; "
          f"{sampler_text(derainer.diffusion.name, s)}{steps_from}, guidance {s['guidance']}, "
          f"clip_x0 {s['clip_x0']}, ensemble {s['ensemble']}, flips {s['flips']}, "
          f"seed {a.seed}", file=sys.stderr)

    report = derain_items(derainer, items, out_dir=out_dir, score=a.eval is not None,
                          seed=a.seed, progress=not a.quiet, say=say)
    if a.eval is not None:
        _report_scores(report, len(failed), out_dir, {
            "checkpoint": str(a.ckpt), "weights": "raw" if a.no_ema else "ema", "seed": a.seed,
            "process": derainer.diffusion.name, **s})
    n_failed = len(failed) + len(report.failed)
    not_derained = [m.split(": ")[0] for m in failed] + report.failed
    if not_derained:  # the summary: every file that failed, once more, after the bar
        print("not derained: " + ", ".join(not_derained), file=sys.stderr)
    if report.unscored:
        print("not scored: " + ", ".join(report.unscored), file=sys.stderr)
    print(f"derained {report.n_done}, failed {n_failed}" +
          (f", not scored {len(report.unscored)}" if report.unscored else "") +
          f" ({(time.time() - t_start) / max(1, report.n_done):.2f} s per image); outputs in "
          f"{out_dir}")
    if a.eval is not None and not report.rows:
        print("error: no image was scored", file=sys.stderr)
        return 1
    return 1 if n_failed or report.unscored or not items else 0


if __name__ == "__main__":
    sys.exit(main())
