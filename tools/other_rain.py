"""Score two models on rain they never trained on and compare them image by image, in one
command: the out-of-distribution check of STUDY.md, with the two traps it fell into closed
(images whose clean background the training set holds, and a step count left to each
checkpoint).

    python -m tools.other_rain --model fourier=RUN_F0+RUN_F1 --model pixels=RUN_P0+RUN_P1 \\
        --steps 1 --out runs/other_rain
    python -m tools.other_rain --model a=A.pt --model b=B.pt --steps 1 --sets SIRR19 --out o

Each --model is LABEL=CHECKPOINT[+CHECKPOINT...], one checkpoint (or run directory) a seed,
listed in the same seed order for both models. For each set (folders with input/ and target/
under --data-root):
  1. the images whose clean background a training image shares (tools.shared_backgrounds; the
     training pairs are those recorded in the checkpoints, or --train) are listed in
     OUT/seen_SET.txt;
  2. each checkpoint derains the set's input/ at --steps into OUT/SET/LABEL/seedK with its
     per-image scores (derain.py --eval); a folder whose settings.json names the same checkpoint
     and steps and whose scores.csv covers every input is kept, not derained again;
  3. tools.paired prints A - B per set and pooled over the sets with the seen images left out,
     and each seed's own difference.
Exits 1 if a set, a checkpoint or an image fails (what did finish is kept), 2 for bad arguments.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

from helpers.errors import InputError
from helpers.images import atomic_path, is_image_file

SETS = "SIRR19,JORDERE_small_test,JORDERE_small_train,PCNet_train40"


def parse_model(text):
    """'LABEL=CKPT[+CKPT...]' -> (label, [checkpoint paths])."""
    label, sep, ckpts = text.partition("=")
    paths = [c for c in ckpts.split("+") if c]
    if not sep or not label or not paths or "/" in label:
        raise ValueError(f"--model {text!r}: give LABEL=CHECKPOINT[+CHECKPOINT...], one "
                         "checkpoint a seed, e.g. fourier=runs/a/seed0+runs/a/seed1")
    missing = [c for c in paths if not Path(c).exists()]
    if missing:
        raise ValueError(f"--model {label}: no such checkpoint or run directory: "
                         + ", ".join(missing))
    # a run directory stands for its last checkpoint now: outputs of an earlier one are stale
    from checkpoint import latest_checkpoint
    resolved = [str(latest_checkpoint(c) or c) if Path(c).is_dir() else c for c in paths]
    return label, resolved


def up_to_date(out, ckpt, steps, n_inputs):
    """Whether OUT holds derain.py --eval's scores of every input, made by `ckpt` at `steps`."""
    try:
        settings = json.loads((out / "settings.json").read_text())
        with open(out / "scores.csv", newline="") as f:
            n_rows = sum(1 for _ in csv.DictReader(f))
    except (OSError, ValueError):
        return False
    return (settings.get("checkpoint") == str(ckpt) and settings.get("sample_steps") == steps
            and n_rows == n_inputs)


def training_sets(ckpts):
    """The training pairs CSVs recorded in the checkpoints' configs (each once)."""
    from checkpoint import load_checkpoint
    found = {}
    for ckpt in ckpts:
        csv_path = load_checkpoint(ckpt)["config"].get("csv")
        if not csv_path or not Path(csv_path).is_file():
            raise InputError(f"{ckpt}: its training pairs ({csv_path or 'none recorded'}) are "
                             "not on this machine; give --train CSV_OR_FOLDER")
        found.setdefault(csv_path, ckpt)
    return list(found)


def write_seen(set_dir, train, path):
    """OUT/seen_SET.txt: the stems of the set's images with a training background."""
    from tools.shared_backgrounds import shared
    found = shared(set_dir / "target", train)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{stem}\n" for stem, _, _ in found))
    return len(found)


def main(argv=None):
    import derain
    from tools import paired

    p = argparse.ArgumentParser(prog="python -m tools.other_rain",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=CKPT[+CKPT]",
                   help="a model, one checkpoint (or run directory) a seed; give two")
    p.add_argument("--steps", type=int, required=True,
                   help="sampler steps for every checkpoint (said, not left to each checkpoint)")
    p.add_argument("--out", required=True, help="output folder (reused across calls)")
    p.add_argument("--sets", default=SETS, help=f"comma-separated sets (default {SETS})")
    p.add_argument("--data-root", default="../shared/data", help="the folder holding the sets")
    p.add_argument("--train", action="append", default=None, metavar="CSV_OR_FOLDER",
                   help="the training pairs CSV or clean images (repeatable; default: the "
                        "training CSVs recorded in the checkpoints)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]")
    a = p.parse_args(argv)
    try:
        models = [parse_model(m) for m in a.model]
    except ValueError as e:
        p.error(str(e))
    if len(models) != 2 or models[0][0] == models[1][0]:
        p.error("give two --model options with different labels")
    if a.steps < 1:
        p.error(f"--steps must be at least 1, got {a.steps}")
    sets = [s.strip() for s in a.sets.split(",") if s.strip()]
    out = Path(a.out)
    try:
        train = a.train or training_sets([c for _, ckpts in models for c in ckpts])
    except (OSError, InputError) as e:  # CheckpointError is an InputError too
        print(f"error: {e}", file=sys.stderr)
        return 1
    missing = [Path(a.data_root) / name for name in sets
               if not all((Path(a.data_root) / name / sub).is_dir() for sub in ("input", "target"))]
    if missing:  # before any work: a typo in the last set should not wait for the others
        print(f"error: {', '.join(map(str, missing))}: no input/ and target/ folders; check "
              "--data-root and --sets", file=sys.stderr)
        return 1
    failed = []
    for name in sets:
        set_dir = Path(a.data_root) / name
        try:
            n_seen = write_seen(set_dir, train, out / f"seen_{name}.txt")
        except (OSError, InputError) as e:
            print(f"error: {name}: cannot list the shared backgrounds ({e})", file=sys.stderr)
            return 1
        n_inputs = sum(1 for f in (set_dir / "input").iterdir() if is_image_file(f))
        print(f"{name}: {n_inputs} images, {n_seen} with a training background (left out)",
              flush=True)
        for label, ckpts in models:
            for k, ckpt in enumerate(ckpts):
                dest = out / name / label / f"seed{k}"
                if up_to_date(dest, ckpt, a.steps, n_inputs):
                    continue
                print(f"{name}: {label} seed {k} ({ckpt}), {a.steps} step(s)", flush=True)
                code = derain.main([str(set_dir / "input"), "--ckpt", str(ckpt), "--out",
                                    str(dest), "--eval", str(set_dir / "target"), "--steps",
                                    str(a.steps), "--device", a.device, "--quiet"])
                if code == 2:  # a bad checkpoint: every set would fail the same way
                    return 1
                if code:
                    failed.append(f"{name}/{label}/seed{k}")
    sides = ["+".join(str(out / "{set}" / label / f"seed{k}") for k in range(len(ckpts)))
             for label, ckpts in models]
    code = paired.main([*sides, "--labels", ",".join(label for label, _ in models), "--sets",
                        ",".join(sets), "--exclude", str(out / "seen_{set}.txt")])
    if failed:
        print(f"error: some images failed in {', '.join(failed)} (named above); the "
              "comparison covers the rest", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
