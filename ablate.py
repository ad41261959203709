"""The variant study: train each variant with the same data, seeds and compute, derain the same
validation pairs through the one evaluation path, and tabulate.

    python ablate.py --study runs/study --minutes 5 --seeds 0                 # screen them all
    python ablate.py --study runs/final --minutes 35 --seeds 0,1 --eval-steps 1,2,20 \\
        --variants trunk_bridge_end90,pixel,regression
    python ablate.py --study runs/study --list                                # the variants
    python ablate.py --study runs/gpu --calibration tools/calibration_2026-12-01.json \
        --minutes 35 --seeds 0,1 --lanes 8 --threads 2 --device cuda        # STUDY.md's steps

Every variant is a set of ddpm_conditional.py flags on top of the rain100 preset (Rain100L and
Rain100H pairs 1-50 for training, 51-60 for validation); see VARIANTS. Equal compute means equal
wall-clock time on this machine: each variant is first trained for a few calibration steps with
the real training loop (the machine should be otherwise idle then), and its budget of --minutes
becomes a number of optimiser steps, which the run then trains for (so a later slowdown of the
machine changes the wall time of a run, not its result; the learning-rate schedule ends at that
step). The study directory holds, per variant and seed, the run directory; calibration.json;
results.csv (variant, seed, steps, sampler steps, wall times, PSNR-Y / SSIM-Y per set, and the
rainy input's); scores.csv (the same per image); results.png (the mean and the spread over
seeds). Everything done is kept: run the same command again and the study resumes where it
stopped (a partly trained run continues from its last checkpoint, evaluated rows are not redone;
a row without its per-image scores, from before scores.csv, is evaluated again).

    python ablate.py --study runs/final --compare trunk_bridge,pixel   # paired, image by image
    python ablate.py --study runs/final --compare runs/eqsteps:trunk_bridge,pixel  # across studies
    python ablate.py --study runs/final --compare runs/s0+runs/s1:trunk_bridge,pixel  # seeds pooled

--compare reads scores.csv: for each set and sampler step count both variants were evaluated
at, the mean difference of PSNR-Y and SSIM-Y over the same images (each image's score averaged
over the seeds a variant has), its standard error over images, and how many images the first
wins; where both have two seeds or more, also each seed's own difference (seed s against seed
s), so the spread over seeds stands beside the pooled figure.
"""
import argparse
import contextlib
import csv
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent

# name -> flags for ddpm_conditional.py (on top of BASE), and sampling overrides for evaluation;
# "train_as" reuses another variant's training (a sampling-only lever).
# the levers of the U-Net-trunk bridge (trunk_bridge_end90: pixel trunk, linear spectrum, image
# loss, the bridge; the default until the NAF trunk replaced its U-Net); --bridge-end varies
TRUNK_BRIDGE = ["--network", "pixel_trunk", "--signed-log", "false", "--loss", "image",
                "--process", "bridge"]
TRUNK_BRIDGE_90 = [*TRUNK_BRIDGE, "--bridge-end", "0.9"]
PIXEL_BRIDGE = ["--representation", "pixels", "--loss", "image", "--process", "bridge"]  # in pixels
# the default's levers with the NAF-style trunk, in the Fourier state and in pixels
TRUNK_BRIDGE_90_NAF = [*TRUNK_BRIDGE_90, "--network", "naf"]
PIXEL_BRIDGE_90_NAF = [*PIXEL_BRIDGE, "--bridge-end", "0.9", "--network", "naf"]
# launch()'s default on top of those: the PSNR loss, own states, the skip parametrisation
OWN_SKIP_PSNR = [*TRUNK_BRIDGE_90_NAF, "--loss", "psnr", "--bridge-states", "own",
                 "--bridge-param", "skip"]
# drawn in another colour
REFERENCES = ("pixel", "pixel_x0", "pixel_bridge_end", "pixel_bridge_end90", "regression",
              "pixel_bridge_end90_fft", "pixel_bridge_end90_naf", "naf_regression",
              "pixel_bridge_end90_naf_psnr", "naf_regression_psnr")
DEFAULT = "trunk_bridge_end90_naf_own_skip_psnr"  # the variant that launch()'s defaults train (a test checks it)
VARIANTS = {
    # the references
    "pixel": {"flags": ["--representation", "pixels"],
              "about": "the same UNet and diffusion in pixels (--representation pixels, with "
                       "the pre-study levers)"},
    "pixel_x0": {"flags": ["--representation", "pixels", "--prediction", "x0"],
                 "about": "the pixel reference predicting x0 (its loss is then the image MSE)"},
    "pixel_bridge_end": {"flags": [*PIXEL_BRIDGE, "--bridge-end", "0.5"],
                         "about": "the process and levers of trunk_bridge_end in pixels: the bridge "
                                  "from the rainy image, half the draws at its end, image loss, "
                                  "the pixel UNet (isolates the Fourier domain)"},
    "pixel_bridge_end90": {"flags": [*PIXEL_BRIDGE, "--bridge-end", "0.9"],
                           "about": "pixel_bridge_end with 90 % of the draws at the rainy end: "
                                    "trunk_bridge_end90's levers exactly, in pixels"},
    "regression": {"flags": ["--representation", "pixels", "--process", "regression"],
                   "about": "the same UNet, one forward pass, trained on the clean image (MSE)"},
    # the Fourier model as it was, and one lever at a time
    "fourier": {"flags": [], "about": "the default before the study: realimag, signed log, "
                                      "per-frequency std, v prediction, model-space loss, "
                                      "3x3 UNet"},
    "fourier_image": {"flags": ["--loss", "image"], "about": "+ image-space loss"},
    "fourier_mix": {"flags": ["--loss", "mix"], "about": "+ half model-space, half image loss"},
    "linear_image": {"flags": ["--signed-log", "false", "--loss", "image"],
                     "about": "linear spectrum, image-space loss"},
    "scalar_image": {"flags": ["--signed-log", "false", "--norm", "scalar_std", "--loss",
                               "image"], "about": "linear, one global scale, image loss"},
    "partial_image": {"flags": ["--signed-log", "false", "--norm", "partial_std",
                                "--loss", "image"], "about": "linear, std_f^0.5, image loss"},
    "ffc_image": {"flags": ["--network", "ffc", "--loss", "image"],
                  "about": "dual spectral/spatial blocks (FFC), image loss"},
    "blockdct_image": {"flags": ["--representation", "blockdct", "--block", "8", "--loss",
                                 "image"], "about": "8x8 block DCT as channels, image loss"},
    "window128_image": {"flags": ["--crop", "128", "--batch-size", "4", "--loss", "image"],
                        "about": "128-px windows (4 crops a step: the same pixels), image loss"},
    "trunk": {"flags": ["--network", "pixel_trunk", "--prediction", "x0", "--signed-log",
                        "false", "--loss", "image"],
              "about": "spectrum in and out, pixel UNet inside, linear, image loss"},
    "trunk_bridge": {"flags": TRUNK_BRIDGE,
                     "about": "pixel trunk, bridge from the rainy input"},
    "trunk_bridge_end": {"flags": [*TRUNK_BRIDGE, "--bridge-end", "0.5"],
                         "about": "trunk_bridge with half the training draws at the rainy end "
                                  "(t = T-1, the first sampling step's task)"},
    "trunk_bridge_end90": {"flags": [*TRUNK_BRIDGE, "--bridge-end", "0.9"],
                           "about": "trunk_bridge with 90 % of the draws at the rainy end (close "
                                    "to regression for the first step)"},
    "trunk_bridge_end90_scalar": {"flags": [*TRUNK_BRIDGE, "--bridge-end", "0.9", "--norm",
                                            "scalar_std", "--clip-x0", "0"],
                                  "about": "trunk_bridge_end90 with one scale for all "
                                           "frequencies "
                                           "(white noise in pixels, as the pixel bridge) and "
                                           "no x0 clip"},
    "trunk_regression": {"flags": ["--network", "pixel_trunk", "--signed-log", "false",
                                   "--loss", "image", "--process", "regression"],
                         "about": "pixel trunk, one pass from the rainy spectrum to the change "
                                  "(the Fourier representation without a generative process)"},
    "trunk_scalar": {"flags": ["--network", "pixel_trunk", "--prediction", "x0", "--signed-log",
                               "false", "--loss", "image", "--norm", "scalar_std"],
                     "about": "pixel trunk with one noise scale: white noise in pixels, i.e. "
                              "the pixel-domain process (isolates EqualSNR)"},
    "trunk_partial": {"flags": ["--network", "pixel_trunk", "--prediction", "x0",
                                "--signed-log", "false", "--loss", "image", "--norm",
                                "partial_std"], "about": "pixel trunk, std_f^0.5 noise"},
    "trunk_freqsched": {"flags": ["--network", "pixel_trunk", "--prediction", "x0",
                                  "--signed-log", "false", "--loss", "image",
                                  "--freq-schedule", "0.5"],
                        "about": "pixel trunk, low frequencies noised last (abar^(1-0.5(1-r)))"},
    "trunk_coupled": {"train_as": "trunk", "sample": {"coupled": True},
                      "about": "trunk, windows coupled while sampling"},
    # the Fourier domain's and the steps' own levers, on the default's (issue: spectral
    # operators, a frequency loss, steps that refine)
    "trunk_bridge_end90_fft": {"flags": [*TRUNK_BRIDGE_90, "--network", "pixel_trunk_fft"],
                               "about": "trunk_bridge_end90 with a Res-FFT branch beside the 3x3 "
                                        "one in "
                                        "every U-Net block (Fourier state, spatial + FFT)"},
    "pixel_bridge_end90_fft": {"flags": [*PIXEL_BRIDGE, "--bridge-end", "0.9", "--network",
                                         "pixel_trunk_fft"],
                               "about": "pixel_bridge_end90 with the Res-FFT branch (pixel "
                                        "state, spatial + FFT)"},
    "trunk_bridge_end90_skip": {"flags": [*TRUNK_BRIDGE_90, "--bridge-param", "skip"],
                                "about": "trunk_bridge_end90 with x0 = x_t - s start + s F: the "
                                         "inversion that ignores the noise plus the network's "
                                         "correction (steps that refine)"},
    "trunk_bridge_end90_fftloss": {"flags": [*TRUNK_BRIDGE_90, "--loss", "image_fft"],
                                   "about": "trunk_bridge_end90 with the frequency loss: + 0.1 "
                                            "x the "
                                            "FFT L1 at 3 scales"},
    "trunk_bridge_end90_w128": {"flags": [*TRUNK_BRIDGE_90, "--crop", "128", "--batch-size",
                                          "4"],
                                "about": "trunk_bridge_end90 on 128-px windows (4 a step: the same "
                                         "pixels), derained in 128-px windows"},
    "trunk_bridge_end90_fft_w128": {"flags": [*TRUNK_BRIDGE_90, "--network", "pixel_trunk_fft",
                                              "--crop", "128", "--batch-size", "4"],
                                    "about": "trunk_bridge_end90_fft on 128-px windows: the "
                                             "global branch sees longer streaks"},
    "pixel_bridge_end90_naf": {"flags": PIXEL_BRIDGE_90_NAF,
                               "about": "pixel_bridge_end90 with the NAFNet-style trunk (the "
                                        "pixel twin of trunk_bridge_end90_naf)"},
    "trunk_bridge_end90_naf": {"flags": TRUNK_BRIDGE_90_NAF,
                               "about": "trunk_bridge_end90 with a NAFNet-style trunk instead "
                                        "of the "
                                        "U-Net (Fourier state, spatial)"},
    "trunk_bridge_end90_naf_fft": {"flags": [*TRUNK_BRIDGE_90, "--network", "naf_fft"],
                                   "about": "trunk_bridge_end90_naf with a Res-FFT branch in "
                                            "every block"},
    "pixel_bridge_end90_naf_fft": {"flags": [*PIXEL_BRIDGE, "--bridge-end", "0.9", "--network",
                                             "naf_fft"],
                                   "about": "pixel_bridge_end90_naf with a Res-FFT branch in "
                                            "every block (pixel state, spatial + FFT: the 2x2 "
                                            "table's fourth cell)"},
    # the default's network on 128-px windows (4 crops a step: the same pixels), with and
    # without the Res-FFT branch: whether a global branch pays once its window holds longer
    # streaks (derain.py tiles in the training window, so the FFT size matches)
    "trunk_bridge_end90_naf_w128": {"flags": [*TRUNK_BRIDGE_90_NAF, "--crop", "128",
                                              "--batch-size", "4"],
                                    "about": "trunk_bridge_end90_naf on 128-px "
                                             "windows (4 a step: the same pixels)"},
    "trunk_bridge_end90_naf_fft_w128": {"flags": [*TRUNK_BRIDGE_90, "--network", "naf_fft",
                                                  "--crop", "128", "--batch-size", "4"],
                                        "about": "trunk_bridge_end90_naf_fft on 128-px windows: "
                                                 "the Res-FFT branch sees longer streaks"},
    "trunk_bridge_end90_naf_skip": {"flags": [*TRUNK_BRIDGE_90_NAF, "--bridge-param", "skip"],
                                    "about": "trunk_bridge_end90_naf with the skip "
                                             "parametrisation (steps that refine)"},
    "pixel_bridge_end90_naf_skip": {"flags": [*PIXEL_BRIDGE_90_NAF, "--bridge-param", "skip"],
                                    "about": "pixel_bridge_end90_naf with the skip "
                                             "parametrisation (the pixel control of "
                                             "trunk_bridge_end90_naf_skip)"},
    "trunk_bridge_end90_naf_scalar": {"flags": [*TRUNK_BRIDGE_90_NAF, "--norm", "scalar_std",
                                                "--clip-x0", "0"],
                                      "about": "trunk_bridge_end90_naf with one "
                                               "scale for all frequencies (white bridge noise in "
                                               "pixels, as its pixel twin's) and no x0 clip"},
    # the bridge noise at the pixel twin's power: with --bridge-noise 0.1 the Fourier state's
    # noise decodes to 11.25 dB less power in pixels than the pixel state's at every t
    # (tools/loss_by_t: the noise-ignoring inversion's PSNR), so its intermediate draws are
    # near-trivial tasks; 0.1 * 10**(11.25 / 20) = 0.365 matches the power, not the colour
    "trunk_bridge_end90_naf_pixnoise": {"flags": [*TRUNK_BRIDGE_90_NAF, "--bridge-noise",
                                                  "0.365"],
                                        "about": "trunk_bridge_end90_naf with its "
                                                 "bridge noise raised to its pixel twin's power "
                                                 "in pixels (coloured as the data's spectrum)"},
    # steps that refine: the draws below the rainy end built from the network's own first
    # estimate, as the deterministic sampler's second step sees them (diffusion.Bridge)
    "trunk_bridge_end90_naf_own": {"flags": [*TRUNK_BRIDGE_90_NAF, "--bridge-states", "own"],
                                   "about": "trunk_bridge_end90_naf trained on "
                                            "the sampler's own states below the rainy end"},
    "pixel_bridge_end90_naf_own": {"flags": [*PIXEL_BRIDGE_90_NAF, "--bridge-states", "own"],
                                   "about": "pixel_bridge_end90_naf trained on the sampler's "
                                            "own states (the pixel control of "
                                            "trunk_bridge_end90_naf_own)"},
    # both: on the sampler's own states the skip estimate is (1 - s) x0^ + s F, the first
    # estimate kept in proportion to how far the sampler has moved from the rainy end
    "trunk_bridge_end90_naf_own_skip": {"flags": [*TRUNK_BRIDGE_90_NAF, "--bridge-states", "own",
                                                  "--bridge-param", "skip"],
                                        "about": "trunk_bridge_end90_naf_own with the skip "
                                                 "parametrisation (later steps correct the first "
                                                 "estimate)"},
    "trunk_bridge_end90_naf_fftloss": {"flags": [*TRUNK_BRIDGE_90_NAF, "--loss", "image_fft"],
                                       "about": "trunk_bridge_end90_naf with the "
                                                "frequency loss: + 0.1 x the FFT L1 at 3 scales"},
    "pixel_bridge_end90_naf_fftloss": {"flags": [*PIXEL_BRIDGE_90_NAF, "--loss", "image_fft"],
                                       "about": "pixel_bridge_end90_naf with the frequency loss "
                                                "(pixel state, FFT in the loss only)"},
    # the PSNR loss (losses.PSNRLoss): every window's dB counts alike, where the image MSE
    # lets the windows with the most rain left (Rain100H's) dominate
    "trunk_bridge_end90_naf_psnr": {"flags": [*TRUNK_BRIDGE_90_NAF, "--loss", "psnr"],
                                    "about": "trunk_bridge_end90_naf with the PSNR "
                                             "loss (each window's -PSNR) instead of the image MSE"},
    "pixel_bridge_end90_naf_psnr": {"flags": [*PIXEL_BRIDGE_90_NAF, "--loss", "psnr"],
                                    "about": "pixel_bridge_end90_naf with the PSNR loss (the "
                                             "pixel control of trunk_bridge_end90_naf_psnr)"},
    "trunk_bridge_end90_naf_own_skip_psnr": {"flags": [*TRUNK_BRIDGE_90_NAF, "--loss", "psnr",
                                                       "--bridge-states", "own",
                                                       "--bridge-param", "skip"],
                                             "about": "trunk_bridge_end90_naf_own_skip with the "
                                                      "PSNR loss (launch()'s default: steps that "
                                                      "cost nothing)"},
    # issue 19's 2x2 table with today's levers: the Res-FFT branch in every NAF block of the
    # default (Fourier state) and of its pixel twin (pixel state)
    "trunk_bridge_end90_naf_fft_own_skip_psnr": {"flags": [*TRUNK_BRIDGE_90_NAF, "--network",
                                                           "naf_fft", "--loss", "psnr",
                                                           "--bridge-states", "own",
                                                           "--bridge-param", "skip"],
                                                 "about": "the default with a Res-FFT branch "
                                                          "in every block (Fourier state, "
                                                          "spatial + FFT)"},
    "trunk_bridge_end90_naf_conv_own_skip_psnr": {"flags": [*TRUNK_BRIDGE_90_NAF, "--network",
                                                            "naf_conv", "--loss", "psnr",
                                                            "--bridge-states", "own",
                                                            "--bridge-param", "skip"],
                                                  "about": "the control for "
                                                           "trunk_bridge_end90_naf_fft_own_skip_"
                                                           "psnr: the same branch's weights "
                                                           "and ReLU without the FFT (capacity, "
                                                           "not the spectrum)"},
    "pixel_bridge_end90_naf_fft_psnr": {"flags": [*PIXEL_BRIDGE_90_NAF, "--network", "naf_fft",
                                                  "--loss", "psnr"],
                                        "about": "pixel_bridge_end90_naf_psnr with a Res-FFT "
                                                 "branch in every block (pixel state, spatial "
                                                 "+ FFT)"},
    # the default (PSNR loss, own states, skip) on larger windows, the same pixels a step, and
    # the Res-FFT branch on 256-px windows, where its FFT spans streaks that a 64-px window cuts
    # (derain.py tiles in the training window, so the FFT size at derain time matches)
    "trunk_bridge_end90_naf_own_skip_psnr_w128": {"flags": [*OWN_SKIP_PSNR, "--crop", "128",
                                                            "--batch-size", "4"],
                                                  "about": "the default on 128-px windows (4 a "
                                                           "step: the same pixels)"},
    "trunk_bridge_end90_naf_own_skip_psnr_w256": {"flags": [*OWN_SKIP_PSNR, "--crop", "256",
                                                            "--batch-size", "1"],
                                                  "about": "the default on 256-px windows (1 a "
                                                           "step: the same pixels)"},
    "trunk_bridge_end90_naf_fft_own_skip_psnr_w256": {"flags": [*OWN_SKIP_PSNR, "--network",
                                                                "naf_fft", "--crop", "256",
                                                                "--batch-size", "1"],
                                                      "about": "the default with the Res-FFT "
                                                               "branch on 256-px windows (its "
                                                               "FFT spans 256 px)"},
    # a Fourier operator that can pick frequencies: a learned complex weight per channel and
    # frequency of the window (modules.GlobalFilter) in the NAF blocks of the two outer levels
    "trunk_bridge_end90_naf_gf_own_skip_psnr": {"flags": [*OWN_SKIP_PSNR, "--network", "naf_gf"],
                                                "about": "the default with a global filter (a "
                                                         "learned weight per frequency) in the "
                                                         "blocks of the two outer levels"},
    "trunk_bridge_end90_naf_gf1_own_skip_psnr": {"flags": [*OWN_SKIP_PSNR, "--network", "naf_gf",
                                                           "--model-args",
                                                           '{"filter_levels": [1]}'],
                                                 "about": "the global filter in the second "
                                                          "level only (32-px maps: a quarter "
                                                          "of the full level's FFT work)"},
    "pixel_bridge_end90_naf_gf_psnr": {"flags": [*PIXEL_BRIDGE_90_NAF, "--network", "naf_gf",
                                                 "--loss", "psnr"],
                                       "about": "pixel_bridge_end90_naf_psnr with the global "
                                                "filter in the outer levels (pixel state, "
                                                "spatial + FFT)"},
    "pixel_bridge_end90_naf_gf1_psnr": {"flags": [*PIXEL_BRIDGE_90_NAF, "--network", "naf_gf",
                                                  "--model-args", '{"filter_levels": [1]}',
                                                  "--loss", "psnr"],
                                        "about": "pixel_bridge_end90_naf_psnr with the global "
                                                 "filter in the second level only: the pixel "
                                                 "twin of trunk_bridge_end90_naf_gf1_own_skip_"
                                                 "psnr"},
    "trunk_bridge_end90_naf_own_skip_psnr_b09": {"flags": [*OWN_SKIP_PSNR, "--adam-beta2",
                                                           "0.9"],
                                                 "about": "the default with AdamW's beta2 at "
                                                          "0.9 (NAFNet's recipe) instead of "
                                                          "0.99"},
    # the optimisation and the loss's weighting around trunk_bridge_end90_naf_psnr
    "trunk_bridge_end90_naf_psnr_noclip": {"flags": [*TRUNK_BRIDGE_90_NAF, "--loss", "psnr",
                                                     "--grad-clip", "0"],
                                           "about": "trunk_bridge_end90_naf_psnr without "
                                                    "gradient clipping (the clip at 1 is active "
                                                    "at every step: norms of 25-89)"},
    "trunk_bridge_end90_naf_psnr_floor3": {"flags": [*TRUNK_BRIDGE_90_NAF, "--loss", "psnr",
                                                     "--psnr-floor", "1e-3"],
                                           "about": "trunk_bridge_end90_naf_psnr with an MSE "
                                                    "floor of 1e-3 (30 dB) in the log: between "
                                                    "the PSNR loss's weighting and the image "
                                                    "MSE's"},
    "naf_regression": {"flags": ["--representation", "pixels", "--network", "naf", "--process",
                                 "regression", "--loss", "image"],
                       "about": "a NAFNet-style network in pixels, one pass (the outside "
                                "reference, spatial only)"},
    # the Fourier state with no process: one pass from the rainy spectrum, the NAF trunk, the
    # PSNR loss. With a pixel trunk it computes what naf_regression_psnr computes (the state
    # is decoded to pixels and the change encoded back), so beside it at equal steps it says
    # whether the state itself costs anything beyond its FFTs
    "trunk_regression_naf_psnr": {"flags": ["--network", "naf", "--signed-log", "false",
                                            "--loss", "psnr", "--process", "regression"],
                                  "about": "the Fourier state, no process: one pass, NAF trunk, "
                                           "PSNR loss (naf_regression_psnr's twin)"},
    "naf_regression_psnr": {"flags": ["--representation", "pixels", "--network", "naf",
                                      "--process", "regression", "--loss", "psnr"],
                            "about": "naf_regression with the PSNR loss (the outside peer's "
                                     "loss: the reference for trunk_bridge_end90_naf_psnr)"},
}
# Every lever a variant may turn, at the values of the Fourier model before the study (the
# variants' flags override these), so a variant means the same whatever launch()'s defaults are.
LEVERS = ["--representation", "realimag", "--signed-log", "true", "--norm", "perfreq_std",
          "--network", "unet", "--process", "diffusion", "--prediction", "v", "--loss", "model",
          "--crop", "64", "--batch-size", "16", "--freq-schedule", "0", "--coupled", "false",
          "--bridge-end", "0", "--bridge-param", "x0",
          "--bridge-states", "clean", "--bridge-noise", "0.1", "--clip-x0", "5", "--block", "8",
          "--grad-clip", "1.0", "--psnr-floor", "1e-6", "--adam-beta2", "0.99",
          "--model-args", "{}"]
BASE = ["--preset", "rain100", "--minutes", "0", "--eval-every", "0", "--eval-points", "0",
        "--final-eval", "false", "--log-every", "10", *LEVERS]
SETS = ("Rain100L", "Rain100H")
# per image and set: PSNR-Y, SSIM-Y and the high-frequency spectral error and bias (dB;
# helpers.metrics.spectral_error), of the output and of the rainy input
SCORED = ("psnr_y", "ssim_y", "hf_err_db", "hf_bias_db", "input_psnr_y", "input_ssim_y",
          "input_hf_err_db")
FIELDS = ["variant", "seed", "train_steps", "train_minutes", "sample_steps", "pairs",
          "eval_seconds", *[f"{s}_{m}" for s in SETS for m in SCORED]]
SCORE_FIELDS = ["variant", "seed", "sample_steps", "pairs", "set", "image", *SCORED]
COMPARED = ("psnr_y", "ssim_y", "hf_err_db")  # what --compare pairs over images
# the step times of STUDY.md's tables (the 2026-12-01 machine, one thread), for --calibration
REFERENCE_CALIBRATION = REPO / "tools" / "calibration_2026-12-01.json"
CALIBRATION_STEPS = (20, 120)  # the step time is measured between these steps (100: +-2 %)


def run_training(args, study, variant, seed, extra, log):
    """ddpm_conditional.py for one variant and seed; returns the run directory."""
    run_dir = study / variant / f"seed{seed}"
    # the checkpoint's sample_steps (what derain.py samples with unless given --steps) is the
    # study's first --eval-steps, the row its tables lead with (it used to be a pinned 2, so a
    # study checkpoint derained at 2 steps while the tables quoted 1)
    first_steps = args.eval_steps.split(",")[0]
    cmd = [sys.executable, str(REPO / "ddpm_conditional.py"), *BASE, "--sample-steps", first_steps,
           *VARIANTS[variant]["flags"],
           "--seed", str(seed), "--run-dir", str(run_dir), "--threads", str(args.threads),
           "--data-root", args.data_root, "--device", str(args.device), *extra]
    if (run_dir / "config.json").exists():
        cmd.append("--resume")
    log(f"$ {' '.join(cmd[1:])}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(study / variant / f"seed{seed}.log", "a", encoding="utf-8") as f:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed}: training exited with status {r.returncode}; "
                           f"see {study / variant / f'seed{seed}.log'}")
    return run_dir


def read_log(run_dir):
    recs = []
    path = Path(run_dir) / "log.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return recs


@contextlib.contextmanager
def study_lock(study):
    """Hold the study's lock file: two ablate.py processes may share a study (one per core,
    different variants or seeds) and each rewrites results.csv, scores.csv and calibration.json
    only under the lock, after reading them again."""
    with open(Path(study) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_calibration(study):
    path = Path(study) / "calibration.json"
    return json.loads(path.read_text()) if path.exists() else {}


# step times taken further apart than this are not compared without a warning: on 2026-12-07
# the default's step took 0.419 s in one session and 0.52-0.59 s four hours later, the same
# code on a machine of the same type (STUDY.md, seventeenth session)
CALIBRATION_SPAN_H = 1.0


def calibration_span(cal, variants):
    """(hours, first, last): how far apart the variants' step times were taken, by their
    records' "when" (entries without a time, e.g. derived or another machine's, are left out);
    None with fewer than two timed variants."""
    timed = []
    for v in dict.fromkeys(variants):
        try:
            timed.append((time.mktime(time.strptime(cal[v]["when"], "%Y-%m-%d %H:%M:%S")), v))
        except (KeyError, TypeError, ValueError):
            continue
    if len(timed) < 2:
        return None
    (t0, first), (t1, last) = min(timed), max(timed)
    return (t1 - t0) / 3600, first, last


class CalibrationError(ValueError):
    """A --calibration file that cannot give a variant's step time, or disagrees with the
    study's own record."""


def reference_calibration(path, study, variant):
    """--calibration FILE: the variant's seconds per step from FILE (another machine's
    calibration.json) instead of timing this machine, recorded in the study's calibration.json
    with where it came from; the study's earlier record of the variant must agree."""
    try:
        ref = json.loads(Path(path).read_text(encoding="utf-8"))
        s_per_step = float(ref[variant]["s_per_step"])
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise CalibrationError(f"{path}: not a calibration.json ({e})") from None
    except KeyError:
        raise CalibrationError(f"{path} has no step time for {variant!r}: time it on the "
                               "reference machine, or run without --calibration to time it "
                               "here") from None
    with study_lock(study):
        cal = read_calibration(study)
        if variant in cal and abs(cal[variant]["s_per_step"] - s_per_step) > 1e-9:
            raise CalibrationError(
                f"{study / 'calibration.json'} already times {variant} at "
                f"{cal[variant]['s_per_step']} s/step, {path} at {s_per_step}: a study keeps "
                "one step count per variant; use another --study")
        if variant not in cal:
            cal[variant] = {**ref[variant], "from": str(path)}
            write_json(study / "calibration.json", cal)
    return s_per_step


def time_steps(args, study, variant, log):
    """One timing of the variant's real training loop on this machine: seconds per optimiser
    step between CALIBRATION_STEPS."""
    a, b = CALIBRATION_STEPS
    cal_dir = study / "_calibration" / variant
    if cal_dir.exists():
        import shutil
        shutil.rmtree(cal_dir)
    cmd = [sys.executable, str(REPO / "ddpm_conditional.py"), *BASE, *VARIANTS[variant]["flags"],
           "--run-dir", str(cal_dir), "--max-steps", str(b), "--log-every", "1",
           "--ckpt-every", "0", "--threads", str(args.threads), "--data-root", args.data_root,
           "--device", str(args.device)]
    log(f"calibrating {variant}: {b} steps")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{variant}: calibration failed:\n{r.stderr[-2000:]}")
    el = {rec["step"]: rec["elapsed_s"] for rec in read_log(cal_dir) if "elapsed_s" in rec}
    s_per_step = (el[b] - el[a]) / (b - a)
    log(f"  {variant}: {s_per_step:.3f} s/step")
    return s_per_step


def record_calibration(args, study, variant, times):
    """Write the variant's step time into the study's calibration.json: the median of its
    timings, with each timing kept when there were several."""
    s_per_step = statistics.median(times)
    with study_lock(study):
        cal = read_calibration(study)
        cal[variant] = {"s_per_step": s_per_step, "threads": args.threads,
                        "load_1m": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        if len(times) > 1:
            cal[variant]["rounds"] = [round(t, 4) for t in times]
        write_json(study / "calibration.json", cal)
    return s_per_step


def calibrate_rounds(args, study, variants, log):
    """--calibrate-rounds N: time the variants not yet calibrated N times each, in alternating
    order (as listed, then reversed, ...), so a drift of the machine's speed during the
    calibration falls on every variant alike, and record each one's median. One timing of one
    variant can be off by several per cent on a shared machine: enough, in a study of
    0.1-dB differences, to give one side a tenth more steps."""
    todo = [v for v in dict.fromkeys(variants) if v not in read_calibration(study)]
    times = {v: [] for v in todo}
    for r in range(args.calibrate_rounds):
        for v in (todo if r % 2 == 0 else todo[::-1]):
            times[v].append(time_steps(args, study, v, log))
    for v in todo:
        s = record_calibration(args, study, v, times[v])
        if len(times[v]) > 1:
            log(f"  {v}: median {s:.3f} s/step of " + ", ".join(f"{t:.3f}" for t in times[v]))
    if len(todo) > 1:
        cal = read_calibration(study)
        per = lambda v: cal[v]["s_per_step"] / cal[todo[0]]["s_per_step"]
        log(f"  step time against {todo[0]}: " + ", ".join(f"{v} {per(v):.3f}" for v in todo[1:]))


def calibrate(args, study, variant, log):
    """Seconds per optimiser step of the real training loop for this variant (cached), or the
    reference machine's with --calibration."""
    if getattr(args, "calibration", ""):
        return reference_calibration(args.calibration, study, variant)
    cal = read_calibration(study)
    if variant in cal:
        return cal[variant]["s_per_step"]
    return record_calibration(args, study, variant, [time_steps(args, study, variant, log)])


def write_json(path, obj):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_results(path):
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_results(path, rows, fields=FIELDS):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def evaluate(run_dir, sample_steps, sample_overrides, data_csvs, threads, limit=None,
             device="cpu"):
    """PSNR-Y / SSIM-Y of one checkpoint on each validation set (its first `limit` pairs, or
    all) through sampling.py -> (the means, one row per image)."""
    import torch

    from checkpoint import load_derainer
    from sampling import derain_items, pairs_items
    torch.set_num_threads(threads)
    derainer, _ = load_derainer(run_dir, device=device,  # the run's last checkpoint
                                sample_steps=sample_steps, **sample_overrides)
    out, images, t0 = {}, [], time.time()
    for name, csv_path in data_csvs.items():
        report = derain_items(derainer, pairs_items(csv_path, limit=limit), score=True,
                              progress=False,
                              say=lambda m: print(m, file=sys.stderr))
        s = report.summary
        if report.failed or report.unscored:
            raise RuntimeError(f"{csv_path}: {len(report.failed) + len(report.unscored)} pairs "
                               "failed")
        out.update({f"{name}_{m}": s[m] for m in SCORED if not m.startswith("input_")})
        out.update({f"{name}_{m}": s["baseline"][m[len("input_"):]] for m in SCORED
                    if m.startswith("input_")})
        images += [{"set": name, "image": r["name"],
                    **{k: r[k] for k in SCORED}}
                   for r in report.rows]
    out["eval_seconds"] = round(time.time() - t0, 1)
    return out, images


def _formatted(row):
    return {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}


def per_image_scores(scores, variant, match_steps=True):
    """One variant's score rows -> ({(pairs, set, steps): {image: {metric: [one value a seed]}}},
    {key: seeds}, {key: sampler steps seen}). With match_steps False the key's steps are 0, so
    outputs of different step counts (e.g. 4 steps against 1) pair all the same."""
    acc, seeds, steps = {}, {}, {}
    for r in scores:
        if r["variant"] != variant:
            continue
        n = int(r["sample_steps"] or 0)
        k = (r["pairs"], r["set"], n if match_steps else 0)
        seeds.setdefault(k, set()).add(r["seed"])
        steps.setdefault(k, set()).add(n)
        for m in COMPARED:
            if r.get(m) not in (None, ""):  # rows from before a metric existed lack it
                acc.setdefault(k, {}).setdefault(r["image"], {}).setdefault(m, []).append(
                    float(r[m]))
    return acc, seeds, steps


def compare(scores, a, b, match_steps=True):
    """Paired comparison of variants a and b on the images both were scored on -> one dict per
    (pairs, set, sampler steps): n images, seeds of each, the mean difference a - b of PSNR-Y,
    SSIM-Y and HF-err with its standard error over the images, and the images a wins on PSNR-Y.
    match_steps False pairs each (pairs, set) whatever the step counts; the row then gives a's
    steps in sample_steps and b's in sample_steps_b (0 where a side mixes counts)."""
    import numpy as np

    def order(k):  # full rows first, then the sets in SETS order, then sampler steps
        pairs, set_name, steps = k
        set_rank = SETS.index(set_name) if set_name in SETS else len(SETS)
        return pairs != "all", pairs, set_rank, set_name == "pooled", set_name, steps

    (sa, seeds_a, steps_a), (sb, seeds_b, steps_b) = (per_image_scores(scores, v, match_steps)
                                                      for v in (a, b))
    out = []
    for k in sorted(set(sa) & set(sb), key=order):
        names = sorted(set(sa[k]) & set(sb[k]))
        one = lambda seen: next(iter(seen)) if len(seen) == 1 else 0  # noqa: E731
        row = {"pairs": k[0], "set": k[1], "sample_steps": k[2] or one(steps_a[k]),
               "images": len(names), "seeds_a": len(seeds_a[k]), "seeds_b": len(seeds_b[k])}
        if not match_steps:
            row["sample_steps_b"] = one(steps_b[k])
        for m in COMPARED:
            d = np.array([np.mean(sa[k][i][m]) - np.mean(sb[k][i][m]) for i in names
                          if m in sa[k][i] and m in sb[k][i]])
            if not len(d):
                row[f"{m}_diff"] = row[f"{m}_se"] = float("nan")
                continue
            row[f"{m}_diff"] = float(d.mean())
            row[f"{m}_se"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            if m == "psnr_y":
                row["wins"] = int((d > 0).sum())
        out.append(row)
    return out


def compare_by_seed(scores, a, b, match_steps=True):
    """{seed: compare()'s rows with seed s of a against seed s of b}, for every seed both have:
    the spread over seeds beside the pooled comparison."""
    seeds = ({r["seed"] for r in scores if r["variant"] == a}
             & {r["seed"] for r in scores if r["variant"] == b})
    return {s: compare([r for r in scores if r["seed"] == s], a, b, match_steps)
            for s in sorted(seeds, key=lambda s: (len(s), s))}


def print_comparison(rows, a, b, by_seed=None):
    """compare()'s rows as a table; with compare_by_seed()'s result (two seeds or more), a line
    a row with each seed's own PSNR-Y difference, then their mean and its standard error over
    the seeds (sd / sqrt(n): how far another set of training runs could move the difference)."""
    if not rows:
        print(f"no images scored for both {a} and {b} (scores.csv)")
        return
    print(f"{a} - {b}, paired over the same images (each image: the mean over a variant's seeds)")
    w = max(9, *(len(r["set"]) for r in rows))
    print(f"{'pairs':>5s} {'set':{w}s} {'steps':>5s} {'images':>6s} {'seeds':>5s}  "
          f"{'PSNR-Y diff (dB)':>18s}  {'SSIM-Y diff':>17s}  {'HF-err diff (dB)':>17s}  "
          f"{a} wins")
    for r in rows:
        steps = str(r["sample_steps"] or "?")  # 0: not recorded
        if r.get("sample_steps_b", r["sample_steps"]) != r["sample_steps"]:  # a's/b's
            steps += f"/{r['sample_steps_b'] or '?'}"
        print(f"{r['pairs']:>5s} {r['set']:{w}s} {steps:>5s} {r['images']:6d} "
              f"{r['seeds_a']:>2d}/{r['seeds_b']:<2d}  {r['psnr_y_diff']:+8.2f} +- "
              f"{r['psnr_y_se']:5.2f}  {r['ssim_y_diff']:+7.4f} +- {r['ssim_y_se']:.4f}  "
              f"{r['hf_err_db_diff']:+7.2f} +- {r['hf_err_db_se']:5.2f}  "
              f"{r['wins']}/{r['images']}")
    if not by_seed or len(by_seed) < 2:
        return
    print(f"each seed alone (seed s of {a} against seed s of {b}), PSNR-Y diff (dB):")
    key = lambda r: (r["pairs"], r["set"], r["sample_steps"])  # noqa: E731
    for r in rows:
        parts, diffs = [], []
        for seed, seed_rows in by_seed.items():
            same = [x for x in seed_rows if key(x) == key(r)]
            if same:
                diffs.append(same[0]["psnr_y_diff"])
                parts.append(f"seed {seed} {same[0]['psnr_y_diff']:+.2f} +- "
                             f"{same[0]['psnr_y_se']:.2f} ({same[0]['wins']}/{same[0]['images']})")
        if len(diffs) > 1:  # the error bar of training again: the seeds' spread, not the images'
            parts.append(f"over {len(diffs)} seeds {statistics.mean(diffs):+.2f} +- "
                         f"{statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}")
        print(f"{r['pairs']:>5s} {r['set']:{w}s} {str(r['sample_steps'] or '?'):>5s}  "
              + ", ".join(parts))


def curve_points(spec):
    """--curve's argument -> [(minutes or None, source)]: each item STUDY:MINUTES (a study
    folder), or a .csv file of results rows with a `minutes` column (None: the rows say)."""
    points = []
    for item in spec.split(","):
        if item.endswith(".csv"):
            points.append((None, item))
            continue
        study, minutes = item.rsplit(":", 1)
        points.append((float(minutes), study))
    return points


def learning_curve(points, variants, sample_steps):
    """[(minutes, study dir)] -> {(variant, set): [(minutes, mean PSNR-Y, min, max, mean SSIM-Y,
    mean HF-err, seeds)]} from each study's results.csv, at `sample_steps` (the full sets).
    Studies of the same minutes pool their rows (a variant's seeds trained side by side in
    studies of their own). A point (None, FILE.csv) reads results rows whose `minutes` column
    gives each one's budget (e.g. docs/learning_curve_points.csv: rows transcribed from STUDY.md
    where a study's folder is gone). A study without results.csv raises FileNotFoundError: a
    curve silently missing its points would mislead. Empty SSIM-Y or HF-err cells (numbers the
    record does not give per seed) are left out of their means."""
    import numpy as np
    pooled = {}
    for minutes, source in points:
        path = Path(source) if minutes is None else Path(source) / "results.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results for the learning curve (a study folder "
                                    "holds results.csv once it has evaluated)")
        for r in read_results(path):
            if minutes is None and not r.get("minutes"):
                raise ValueError(f"{path}: a row without minutes ({r.get('variant')}, seed "
                                 f"{r.get('seed')})")
            pooled.setdefault(float(minutes if minutes is not None else r["minutes"]),
                              []).append(r)
    out = {}
    for minutes in sorted(pooled):
        rows = [r for r in pooled[minutes]
                if (r.get("pairs") or "all") == "all" and int(r["sample_steps"]) == sample_steps]
        for v in variants:
            mine = [r for r in rows if r["variant"] == v]
            if not mine:
                continue
            for s in SETS:
                p = [float(r[f"{s}_psnr_y"]) for r in mine]
                ssim = [float(r[f"{s}_ssim_y"]) for r in mine if r.get(f"{s}_ssim_y")]
                hf = [float(r[f"{s}_hf_err_db"]) for r in mine if r.get(f"{s}_hf_err_db")]
                out.setdefault((v, s), []).append(
                    (minutes, float(np.mean(p)), min(p), max(p),
                     float(np.mean(ssim)) if ssim else float("nan"),
                     float(np.mean(hf)) if hf else float("nan"), len(mine)))
    return out


def curve_chart(curve, path, sample_steps):
    """PSNR-Y against training minutes, a line per variant, a panel per set (bars: the seeds'
    range)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from helpers.figures import plt, save_figure
    fig, axes = plt.subplots(1, len(SETS), figsize=(5.2 * len(SETS), 3.8), squeeze=False)
    variants = list(dict.fromkeys(v for v, _ in curve))
    for ax, s in zip(axes[0], SETS):
        for v in variants:
            pts = curve.get((v, s), [])
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3,
                        label=f"{v} (default)" if v == DEFAULT else v,
                        ls="--" if v in REFERENCES else "-")
        ax.set_xscale("log")
        ax.set_xticks(sorted({p[0] for pts in curve.values() for p in pts}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(NullFormatter())  # no 2x10^1 between the budgets
        ax.set_xlabel("training budget (CPU-minutes, log scale)")
        ax.set_ylabel(f"PSNR-Y (dB), {sample_steps} sampling step(s)")
        ax.set_title(f"{s}, pairs 51-60", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def chart(rows, path, eval_steps):
    """PSNR-Y per set and sampler steps: the mean over seeds (bar) and each seed (dots)."""
    import numpy as np

    from helpers.figures import plt, save_figure
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(len(SETS), len(eval_steps), squeeze=False,
                             figsize=(4.2 * len(eval_steps), 0.32 * len(variants) * 2 + 2.5))
    for i, set_name in enumerate(SETS):
        for j, steps in enumerate(eval_steps):
            ax = axes[i, j]
            key = f"{set_name}_psnr_y"
            for k, v in enumerate(variants):
                vals = [float(r[key]) for r in rows if r["variant"] == v and
                        int(r["sample_steps"]) == steps and r.get(key)]
                if not vals:
                    continue
                ax.barh(k, np.mean(vals), color="#e6b89c" if v in REFERENCES else "#9cc3e6",
                        height=0.6)
                ax.plot(vals, [k] * len(vals), "k.", ms=5)
                if len(vals) > 1:
                    ax.plot([min(vals), max(vals)], [k, k], "k-", lw=1)
            inputs = [float(r[f"{set_name}_input_psnr_y"]) for r in rows
                      if r.get(f"{set_name}_input_psnr_y")]
            if inputs:
                ax.axvline(inputs[0], color="gray", ls="--", lw=1, label="rainy input")
            ax.set_yticks(range(len(variants)))
            ax.set_ylim(len(variants) - 0.5, -0.5)  # the same rows in every panel, first on top
            ax.set_yticklabels(variants if j == 0 else [""] * len(variants), fontsize=8)
            ax.set_title(f"{set_name}, {steps} sampling step{'s' * (steps > 1)}", fontsize=9)
            ax.set_xlabel("PSNR-Y (dB): bar mean over seeds, dots seeds", fontsize=8)
            lo = min([float(r[key]) for r in rows if r.get(key)] + inputs) - 0.5
            hi = max(float(r[key]) for r in rows if r.get(key)) + 0.3
            ax.set_xlim(lo, hi)
            ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)


def run_lanes(args, study, variants, seeds, log):
    """--lanes N: the study's (variant, seed) jobs, N at a time, each a child ablate.py for that
    one job (they share the study under its lock); a child's output goes to
    STUDY/lanes/VARIANT_seedS.log. Returns 1 if any job failed, after the others finished."""
    from concurrent.futures import ThreadPoolExecutor
    common = ["--study", str(study), "--minutes", str(args.minutes), "--steps", str(args.steps),
              "--eval-steps", args.eval_steps, "--eval-pairs", str(args.eval_pairs),
              "--threads", str(args.threads), "--device", str(args.device),
              "--data-root", args.data_root, "--ckpt-every", str(args.ckpt_every)]
    if args.calibration:
        common += ["--calibration", args.calibration]
    (study / "lanes").mkdir(exist_ok=True)

    def job(variant, seed):
        log_path = study / "lanes" / f"{variant}_seed{seed}.log"
        log(f"lane: {variant} seed {seed} (log {log_path})")
        with open(log_path, "a", encoding="utf-8") as f:
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *common,
                                "--variants", variant, "--seeds", str(seed)], cwd=REPO,
                               stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log(f"lane: {variant} seed {seed} " +
            ("done" if r.returncode == 0 else f"FAILED (status {r.returncode}; see {log_path})"))
        return r.returncode

    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        codes = list(pool.map(lambda vs: job(*vs), [(v, s) for s in seeds for v in variants]))
    full = [r for r in read_results(study / "results.csv") if (r.get("pairs") or "all") == "all"]
    if full:
        chart(full, study / "results.png", sorted({int(r["sample_steps"]) for r in full}))
    print(f"results: {study / 'results.csv'}, chart: {study / 'results.png'}")
    return 1 if any(codes) else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--study", default="runs/study", help="study directory (resumed if present)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--minutes", type=float, default=5.0,
                    help="training budget per run, in wall-clock minutes of this machine "
                         "(turned into steps by calibration)")
    ap.add_argument("--steps", type=int, default=0,
                    help="train every variant for this many steps instead (equal steps)")
    ap.add_argument("--eval-steps", default="1,2,20", help="sampler steps to evaluate")
    ap.add_argument("--eval-pairs", type=int, default=0,
                    help="evaluate on the first N pairs of each set only (0: all); such rows "
                         "are kept apart from the full ones (column pairs)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every run")
    ap.add_argument("--ckpt-every", type=int, default=0,
                    help="checkpoint every N steps (default 0: four a run). A run stopped "
                         "between checkpoints loses its steps since the last; resuming is exact, "
                         "so a long run (120 minutes) can span sessions with little lost")
    ap.add_argument("--device", default="auto",
                    help="where every run trains and is evaluated: auto (CUDA when present) | "
                         "cpu | cuda[:N]")
    ap.add_argument("--data-root", default="../shared/data", help="the shared data folder")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--curve", metavar="STUDY:MIN,...", default="",
                    help="the learning curve of --variants over studies trained for different "
                         "--minutes (each STUDY:MINUTES, or a FILE.csv of results rows with a "
                         "minutes column), at the first --eval-steps: a table and "
                         "STUDY/learning_curve.png (in --study); nothing is trained")
    ap.add_argument("--calibration", metavar="FILE", default="",
                    help="seconds per step from FILE, another machine's calibration.json (e.g. "
                         f"{REFERENCE_CALIBRATION.relative_to(REPO)}), instead of timing this "
                         "one: --minutes are that machine's, so a slower CPU or a GPU trains "
                         "the same step counts and its rows compare with the study's tables")
    ap.add_argument("--lanes", type=int, default=1,
                    help="run this many (variant, seed) jobs at once, each an ablate.py process "
                         "with --threads threads (after any calibration, which runs alone); "
                         "e.g. --lanes 2 --threads 1 on two cores, or several on one GPU")
    ap.add_argument("--calibrate-only", action="store_true",
                    help="time the variants' steps (on the idle machine) and exit; then run "
                         "the study, e.g. one ablate.py process per core with --threads 1")
    ap.add_argument("--calibrate-rounds", type=int, default=1,
                    help="time each variant this many times, in alternating order, and keep "
                         "the median (default 1); e.g. 3 before comparing variants whose step "
                         "times are within a few per cent of each other")
    ap.add_argument("--compare", metavar="A,B", default="",
                    help="compare two variants of the study image by image (scores.csv) and "
                         "exit; nothing is trained or evaluated. OTHER_STUDY:VARIANT takes a "
                         "variant from another study (e.g. one trained with --steps); "
                         "A+B:VARIANT pools its seeds from several studies")
    args = ap.parse_args(argv)
    if args.lanes < 1:
        ap.error("--lanes is a number of parallel jobs, at least 1")
    if args.calibrate_rounds < 1:
        ap.error("--calibrate-rounds is a number of timings per variant, at least 1")
    if args.list:
        width = max(map(len, VARIANTS))
        for name, v in VARIANTS.items():
            mark = "  [launch()'s default]" if name == DEFAULT else ""
            print(f"{name:{width}s} {v['about']}{mark}")
        return 0
    if args.curve:
        try:
            points = curve_points(args.curve)
        except ValueError:
            ap.error("--curve takes STUDY:MINUTES,STUDY:MINUTES,... (or FILE.csv with a minutes "
                     "column)")
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        steps = int(args.eval_steps.split(",")[0])
        try:
            curve = learning_curve(points, names, steps)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyError as e:
            print(f"error: a results row for the curve lacks the column {e}", file=sys.stderr)
            return 1
        if not curve:
            print("no rows of these variants in these studies", file=sys.stderr)
            return 1
        w = max(32, *(len(v) for v, _ in curve))  # the longest name keeps the columns aligned
        print(f"{'variant':{w}s} {'set':9s} {'minutes':>7s} {'seeds':>5s} {'PSNR-Y':>7s} "
              f"{'range':>13s} {'SSIM-Y':>7s} {'HF-err':>7s}")
        for (v, s), pts in curve.items():
            for m, mean, lo, hi, ssim, hf, n in pts:
                ssim_s = "-" if ssim != ssim else f"{ssim:.4f}"  # nan: not recorded per seed
                hf_s = "-" if hf != hf else f"{hf:.2f}"
                print(f"{v:{w}s} {s:9s} {m:7g} {n:5d} {mean:7.2f} {lo:6.2f}-{hi:6.2f} "
                      f"{ssim_s:>7s} {hf_s:>7s}")
        curve_chart(curve, Path(args.study) / "learning_curve.png", steps)
        print(f"chart: {Path(args.study) / 'learning_curve.png'}")
        return 0
    if args.compare:
        pair = [v.strip() for v in args.compare.split(",")]
        if len(pair) != 2 or not all(pair):
            ap.error("--compare takes two variant names: A,B (or OTHER_STUDY:VARIANT)")
        scores = []
        for name in pair:  # each from --study, or from the studies it names (A+B:VARIANT)
            other, _, variant = name.rpartition(":")
            for study_dir in (other or args.study).split("+"):  # seeds trained in several
                scores_path = Path(study_dir) / "scores.csv"
                if not scores_path.exists():
                    print(f"{scores_path}: no per-image scores yet; run the study first (rows "
                          "evaluated before scores.csv existed are scored again by the same "
                          "command)", file=sys.stderr)
                    return 1
                scores += [{**r, "variant": name} for r in read_results(scores_path)
                           if r["variant"] == variant]
        print_comparison(compare(scores, *pair), *pair, by_seed=compare_by_seed(scores, *pair))
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; see --list")
    from helpers.devices import DeviceError, resolve_device
    try:
        device = resolve_device(args.device)  # the runs resolve the same name themselves
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_steps = [int(s) for s in args.eval_steps.split(",")]
    study = Path(args.study)
    study.mkdir(parents=True, exist_ok=True)
    # one write a line: --lanes prints from threads
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}\n", end="", flush=True)
    presets = REPO / "data" / "presets" / "rain100"
    data_csvs = {name: presets / f"val_{name}.csv" for name in SETS}
    results_path, scores_path = study / "results.csv", study / "scores.csv"
    rows, scores = read_results(results_path), read_results(scores_path)
    pairs_key = str(args.eval_pairs or "all")
    key = lambda r: (r["variant"], str(r["seed"]), str(r["sample_steps"]), r.get("pairs") or "all")
    # done: the means and each image scored, with every metric (rows from before a metric
    # existed are evaluated again)
    complete = lambda r: all(r.get(f) not in (None, "") for f in SCORE_FIELDS)
    done = {key(r) for r in rows} & {key(r) for r in scores if complete(r)}

    if not args.steps and not args.calibration:
        calibrate_rounds(args, study, [VARIANTS[v].get("train_as", v) for v in variants], log)
    for variant in variants:
        spec = VARIANTS[variant]
        trained = spec.get("train_as", variant)
        if not args.steps:
            try:
                calibrate(args, study, trained, log)
            except CalibrationError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    if not args.steps and not args.calibration:
        span = calibration_span(read_calibration(study), [VARIANTS[v].get("train_as", v)
                                                          for v in variants])
        if span and span[0] > CALIBRATION_SPAN_H:
            print(f"warning: the step times of {span[1]} and {span[2]} were taken "
                  f"{span[0]:.1f} h apart ({study / 'calibration.json'}); a machine's speed "
                  "drifts, so their --minutes budgets may not be equal compute: time them "
                  "together (--calibrate-rounds 2 in a new study) to compare them",
                  file=sys.stderr)
    if args.calibrate_only:
        return 0
    if args.lanes > 1:
        return run_lanes(args, study, variants, seeds, log)
    for seed in seeds:
        for variant in variants:
            spec = VARIANTS[variant]
            trained = spec.get("train_as", variant)
            if args.steps:
                steps = args.steps
            else:
                s_per_step = calibrate(args, study, trained, log)
                steps = max(1, int(args.minutes * 60 / s_per_step))
            (study / trained).mkdir(exist_ok=True)
            run_dir = study / trained / f"seed{seed}"
            if not (run_dir / f"ckpt_{steps:08d}.pt").exists():  # not trained to the end yet
                log(f"training {trained} seed {seed}: {steps} steps")
                run_training(args, study, trained, seed,
                             ["--max-steps", str(steps),
                              "--ckpt-every", str(args.ckpt_every or max(1, steps // 4))],
                             log)
            recs = read_log(run_dir)
            minutes = max((r.get("elapsed_s", 0) for r in recs), default=0) / 60
            for n in eval_steps:
                if (variant, str(seed), str(n), pairs_key) in done:
                    continue
                log(f"evaluating {variant} seed {seed} at {n} sampling step(s) on "
                    f"{pairs_key} pairs a set")
                res, images = evaluate(run_dir, n, spec.get("sample", {}), data_csvs,
                                       args.threads, args.eval_pairs or None, device)
                this = {"variant": variant, "seed": seed, "sample_steps": n, "pairs": pairs_key}
                row = {**this, "train_steps": steps, "train_minutes": round(minutes, 2), **res}
                with study_lock(study):  # another process may have written rows meanwhile
                    rows = [r for r in read_results(results_path) if key(r) != key(this)] + \
                        [_formatted(row)]
                    scores = [r for r in read_results(scores_path) if key(r) != key(this)] + \
                        [_formatted({**this, **im}) for im in images]
                    write_results(scores_path, scores, SCORE_FIELDS)
                    write_results(results_path, rows)
                done.add(key(this))
                log("  " + ", ".join(f"{s} {res[f'{s}_psnr_y']:.2f} dB / "
                                     f"{res[f'{s}_ssim_y']:.4f}" for s in SETS))
            full = [r for r in rows if (r.get("pairs") or "all") == "all"]
            if full:
                chart(full, study / "results.png", sorted({int(r["sample_steps"]) for r in full}))
    print(f"results: {results_path}, chart: {study / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
