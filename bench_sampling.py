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

from ddpm_conditional import CheckpointError, load_checkpoint, model_from_checkpoint
from derain import evaluate_pairs
from helpers.images import write_text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--csv", required=True, help="pairs CSV (clean, rainy)")
    ap.add_argument("--limit", type=int, default=0, help="first N pairs only (0: all)")
    ap.add_argument("--settings", default="ddpm:1000,ddim:100,ddim:50,ddim:20,ddim:10",
                    help="comma-separated sampler:steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="", help="JSON file of the rows")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    try:
        model, codec, diffusion, cfg = model_from_checkpoint(load_checkpoint(a.ckpt))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to(device)
    rows = []
    for setting in a.settings.split(","):
        sampler, steps = setting.split(":")
        run_cfg = {**cfg, "sampler": sampler, "sample_steps": int(steps), "eta": 0.0}
        res = evaluate_pairs(model, codec, diffusion, run_cfg, a.csv, limit=a.limit or None,
                             device=device, progress=False)
        row = {"sampler": sampler, "steps": int(steps), "seconds_per_image":
               round(res["seconds_per_image"], 2), "psnr_y": round(res["psnr_y"], 3),
               "ssim_y": round(res["ssim_y"], 4), "input_psnr_y": round(res["input_psnr_y"], 3),
               "images": res["n"], "device": str(device), "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.out:
        write_text(a.out, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
