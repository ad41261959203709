"""Where a bridge or diffusion checkpoint's training task is hard: the image-space error of its x0
estimate at fixed timesteps, on windows of a pairs CSV.

    python -m tools.loss_by_t --ckpt runs/final/trunk_bridge/seed0 \\
        --csv data/presets/rain100/val_Rain100L.csv --windows 64

For each timestep t it prints the PSNR (RGB in [0, 1], over all the windows' pixels: a training
loss in decibels, not the benchmark's PSNR-Y) of the network's x0 estimate (EMA weights), the
PSNR of the rainy windows, and for a bridge the PSNR of the *inversion* that ignores the noise,
x0 ~ (x_t - s start) / (1 - s) (Bridge.noiseless_x0): where that inversion is already good, the
task at t is nearly trivial and training draws spent there teach the network little. The fraction
of the checkpoint's training draws at or above each t (its process's `share_at_or_above`: with
`--bridge-end p`, p of them at T - 1 and the rest uniform) is printed beside it. Each window's
crop and noise are fixed by its position, so runs are comparable.
"""
import argparse
import sys

import torch

from checkpoint import CheckpointError, load_derainer
from diffusion import Bridge
from helpers.metrics import psnr_from_mse
from utils import FFTDataset

DEFAULT_TS = "999,995,990,975,950,900,750,500,0"


@torch.no_grad()
def profile(derainer, csv, windows, ts, seed=0):
    """-> one dict per t: t, the fraction of the process's training draws >= t, and PSNRs (dB,
    over all windows' pixels) of the x0 estimate, of the rainy window and, for a bridge, of the
    inversion that ignores the noise."""
    from torch.utils.data import default_collate
    psnr = lambda mse: psnr_from_mse(mse, peak=1.0)
    model, rep, process = derainer.model, derainer.rep, derainer.diffusion
    data = FFTDataset(csv, rep, train=True, seed=seed)
    batch = default_collate([data[(k % len(data), k)] for k in range(windows)])
    x0, cond = batch["target"].float(), batch["cond"].float()
    rain, clean = batch["rain"].float(), batch["clean"].float()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    start = rep.encode(rain, rain)[0] if process.needs_start else None
    rain_mse = float(((rain - clean) ** 2).mean())
    out = []
    T = int(process.timesteps)
    for t_now in ts:
        t_now = min(int(t_now), T - 1)
        t = torch.full((x0.shape[0],), t_now, dtype=torch.long)
        x_t = process.train_input(x0, start, t, noise)
        x0_hat = process.x0_estimate(model(x_t, t, cond).float(), x_t, t, start)
        mse = float(((rep.decode(x0_hat, rain) - clean) ** 2).mean())
        row = {"t": t_now, "draws_at_or_above": process.share_at_or_above(t_now),
               "estimate_psnr": psnr(mse), "rain_psnr": psnr(rain_mse)}
        inv = process.noiseless_x0(x_t, start, t) if isinstance(process, Bridge) else None
        if inv is not None:
            row["inversion_psnr"] = psnr(float(((rep.decode(inv, rain) - clean) ** 2).mean()))
        out.append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--ckpt", required=True, help="a checkpoint or a run directory (its newest)")
    ap.add_argument("--csv", required=True, help="pairs CSV the windows are cropped from")
    ap.add_argument("--windows", type=int, default=64, help="number of random windows")
    ap.add_argument("--t", default=DEFAULT_TS, help="comma-separated timesteps")
    ap.add_argument("--seed", type=int, default=0, help="fixes the crops and the noise")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        derainer, _ = load_derainer(args.ckpt)  # a run directory: its last checkpoint
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = args.ckpt
    if derainer.diffusion.timesteps <= 1:
        print(f"{path}: a {derainer.diffusion.name} checkpoint has no timesteps to profile",
              file=sys.stderr)
        return 1
    ts = [int(v) for v in args.t.split(",") if v.strip()]
    rows = profile(derainer, args.csv, args.windows, ts, args.seed)
    print(f"{path} ({derainer.diffusion.name}), {args.windows} windows of {args.csv}; "
          f"rainy windows {rows[0]['rain_psnr']:.2f} dB")
    print(f"{'t':>5s} {'draws>=t':>10s} {'x0 estimate':>12s} {'inversion':>10s}  (PSNR-RGB, dB)")
    for r in rows:
        inv = f"{r['inversion_psnr']:10.2f}" if "inversion_psnr" in r else f"{'-':>10s}"
        print(f"{r['t']:5d} {r['draws_at_or_above']:10.3f} {r['estimate_psnr']:12.2f} {inv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
