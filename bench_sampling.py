"""Sampling speed against quality: seconds per image and PSNR-Y for each sampler setting.

    python bench_sampling.py --ckpt CKPT --csv pairs.csv [--limit 10] [--out speed.json]
                             [--settings ddpm:1000,ddim:100,ddim:50,ddim:20,ddim:10]

Derains the rainy images of the CSV at full size with every setting and prints one JSON line per
setting (sampler, steps, seconds_per_image, psnr_y, ssim_y, images, device); the file written with
--out feeds `make_figures.py --speed`.
"""
import argparse
import json
import sys

import torch

from checkpoint import CheckpointError, load_derainer
from helpers.images import write_text
from helpers.devices import DeviceError, resolve_device
from sampling import derain_items, pairs_items


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--csv", required=True, help="pairs CSV (clean, rainy)")
    ap.add_argument("--limit", type=int, default=0, help="first N pairs only (0: all)")
    ap.add_argument("--settings", default="ddpm:1000,ddim:100,ddim:50,ddim:20,ddim:10",
                    help="comma-separated sampler:steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--coupled", choices=("true", "false"), default=None,
                    help="sample the windows of an image together (default: the checkpoint's)")
    ap.add_argument("--out", default="", help="JSON file of the rows")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        device = resolve_device(a.device)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        derainer, _ = load_derainer(a.ckpt, device=device,
                                    coupled=None if a.coupled is None else a.coupled == "true")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    items = pairs_items(a.csv, limit=a.limit or None)
    rows = []
    for setting in a.settings.split(","):
        sampler, steps = setting.split(":")
        derainer.settings.update(sampler=sampler, sample_steps=int(steps), eta=0.0)
        report = derain_items(derainer, items, score=True, progress=False,
                              say=lambda m: print(m, file=sys.stderr))
        s = report.summary
        row = {"sampler": sampler, "steps": int(steps), "coupled": derainer.settings["coupled"],
               "seconds_per_image":
               round(report.seconds_per_image, 2), "psnr_y": round(s["psnr_y"], 3),
               "ssim_y": round(s["ssim_y"], 4), "input_psnr_y": round(s["baseline"]["psnr_y"], 3),
               "images": s["n"], "device": str(device), "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.out:
        write_text(a.out, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
