"""Every lever of the variant study trains a few steps, records itself in the checkpoint, and
derains through the one sampling path (tiny model, CPU, in-process)."""
import json

import numpy as np
import pytest
import torch

import ddpm_conditional as D
from training.distributed import Distributed
from checkpoint import ckpt_paths, load_checkpoint, load_derainer
from sampling import derain_items, pairs_items
from tests.helpers_data import make_pairs
from tests.test_training import _args

LEVERS = {
    "pixel_trunk": ["--network", "pixel_trunk", "--prediction", "x0", "--signed-log", "false",
                    "--loss", "image"],
    "ffc": ["--network", "ffc"],
    "bridge": ["--process", "bridge", "--sample-steps", "3"],
    "bridge_end": ["--process", "bridge", "--bridge-end", "0.25"],
    "regression": ["--process", "regression", "--representation", "pixels"],
    "pixel_bridge": ["--representation", "pixels", "--process", "bridge", "--bridge-end", "0.5"],
    "fourier_regression": ["--process", "regression", "--network", "pixel_trunk",
                           "--signed-log", "false", "--loss", "image"],
    "scalar_std": ["--norm", "scalar_std"],
    "partial_std": ["--norm", "partial_std", "--norm-gamma", "0.25"],
    "linear": ["--signed-log", "false"],
    "blockdct": ["--representation", "blockdct", "--block", "4"],
    "mix_loss": ["--loss", "mix", "--loss-mix", "0.3", "--bridge-param", "x0"],  # mix needs x0
    "coupled": ["--coupled", "true", "--sample-steps", "3"],
    "freq_schedule": ["--process", "diffusion", "--network", "unet", "--freq-schedule", "0.5"],
    "pixel_trunk_fft": ["--network", "pixel_trunk_fft"],
    "naf": ["--network", "naf"],
    "naf_fft": ["--network", "naf_fft", "--representation", "pixels"],
    "naf_conv": ["--network", "naf_conv"],
    "naf_gf": ["--network", "naf_gf", "--crop", "32"],
    "fft_loss": ["--loss", "image_fft", "--fft-loss-weight", "0.2", "--fft-loss-scales", "2"],
    "psnr_loss": ["--loss", "psnr"],
    # the default bridge is own states + skip ("bridge" checks it); these are the alternatives
    "bridge_x0": ["--bridge-param", "x0", "--sample-steps", "3"],
    "bridge_clean_states": ["--bridge-states", "clean", "--bridge-end", "0.5", "--sample-steps",
                            "3"],
    "window32": ["--crop", "32"],
}


def _span(rep):
    lo, hi = rep.ranges["target"]
    return (hi - lo) / 4


# What each lever changes in the objects a checkpoint rebuilds (or, for a loss, in training).
HONOURED = {
    "pixel_trunk": lambda tr, d: type(d.model).__name__ == "PixelTrunk",
    "ffc": lambda tr, d: any(type(m).__name__ == "FourierUnit" for m in d.model.modules()),
    "bridge": lambda tr, d: d.diffusion.name == "bridge" and d.settings["sample_steps"] == 3
    and d.diffusion.parametrisation == "skip" and tr.parts.loss.process.states == "own",
    "bridge_end": lambda tr, d: d.diffusion.name == "bridge" and d.diffusion.end == 0.25,
    "regression": lambda tr, d: d.diffusion.name == "regression" and d.rep.name == "pixels",
    "pixel_bridge": lambda tr, d: d.diffusion.end == 0.5 and d.rep.name == "pixels",
    "fourier_regression": lambda tr, d: d.diffusion.name == "regression" and
    type(d.model).__name__ == "PixelTrunk" and d.rep.name == "realimag",
    "scalar_std": lambda tr, d: np.ptp(_span(d.rep)) < 1e-9 * _span(d.rep).max(),
    "partial_std": lambda tr, d: d.rep.norm == "partial_std" and d.rep.norm_gamma == 0.25
    and np.ptp(_span(d.rep)) > 0,
    "linear": lambda tr, d: not d.rep.log,
    "blockdct": lambda tr, d: d.rep.name == "blockdct" and d.rep.shape(16, 16) == (48, 4, 4),
    "mix_loss": lambda tr, d: type(tr.parts.loss).__name__ == "MixLoss" and
    tr.parts.loss.mix == 0.3,
    "coupled": lambda tr, d: d.settings["coupled"] and d.settings["sample_steps"] == 3,
    "freq_schedule": lambda tr, d: d.diffusion.exponent is not None and
    float(d.diffusion.exponent.min()) == 0.5,
    "pixel_trunk_fft": lambda tr, d: type(d.model).__name__ == "PixelTrunk" and
    any(type(m).__name__ == "ResFFT" for m in d.model.modules()),
    "naf": lambda tr, d: type(d.model.trunk).__name__ == "NAFNet" and
    not any(type(m).__name__ == "ResFFT" for m in d.model.modules()),
    "naf_fft": lambda tr, d: type(d.model.trunk).__name__ == "NAFNet" and
    any(type(m).__name__ == "ResFFT" for m in d.model.modules()) and d.rep.name == "pixels",
    "naf_conv": lambda tr, d: type(d.model.trunk).__name__ == "NAFNet" and
    any(type(m).__name__ == "ResConv" for m in d.model.modules()) and
    not any(type(m).__name__ == "ResFFT" for m in d.model.modules()),
    "naf_gf": lambda tr, d: d.model.trunk.config["window"] == 32 and
    {m.size for m in d.model.modules() if type(m).__name__ == "GlobalFilter"} >=
    {(32, 32), (16, 16)} and not any(type(m).__name__ == "ResFFT" for m in d.model.modules()),
    "fft_loss": lambda tr, d: type(tr.parts.loss).__name__ == "ImageFFTLoss" and
    (tr.parts.loss.weight, tr.parts.loss.scales) == (0.2, 2),
    "psnr_loss": lambda tr, d: type(tr.parts.loss).__name__ == "PSNRLoss",
    "bridge_x0": lambda tr, d: d.diffusion.parametrisation == "x0",
    "bridge_clean_states": lambda tr, d: d.diffusion.states == "clean" and
    tr.parts.loss.process.states == "clean",
    "window32": lambda tr, d: d.rep.crop == 32 and d.rep.shape(32, 32)[1:] == (32, 32),
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("levers"), n=3, size=(24, 28))


def test_every_lever_has_its_check():
    assert set(HONOURED) == set(LEVERS)


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_lever_trains_and_derains(lever, pairs, tmp_path):
    torch.set_num_threads(1)
    flags = LEVERS[lever]  # _args gives the tiny model of the network they name
    cfg, _ = D.resolve_config(_args(pairs, tmp_path / "run", "--max-steps", "2",
                                    "--ckpt-every", "0", *flags))
    trainer = D.setup(cfg, Distributed("cpu"), log=lambda m: None)
    assert trainer.train() == 0
    ckpt = load_checkpoint(ckpt_paths(tmp_path / "run")[-1])
    for flag, value in zip(flags[::2], flags[1::2]):  # the checkpoint records the lever
        key = flag[2:].replace("-", "_")
        recorded = ckpt["config"][key]
        if isinstance(recorded, dict):
            assert recorded == json.loads(value), key
        else:
            assert str(recorded).lower() == value.lower(), key
    derainer, _ = load_derainer(ckpt["path"])
    assert HONOURED[lever](trainer, derainer)  # ...and what it rebuilds is that lever
    report = derain_items(derainer, pairs_items(pairs), out_dir=tmp_path / "out", score=True,
                          progress=False)
    assert report.n_done == 3 and not report.failed and len(report.rows) == 3
    for r in report.rows:  # derained through the one path: a changed, finite image
        assert np.isfinite(r["psnr_y"]) and r["psnr_y"] != r["input_psnr_y"]
