"""Every lever of the variant study trains a few steps, records itself in the checkpoint, and
derains through the one sampling path (tiny model, CPU, in-process)."""
import numpy as np
import pytest
import torch

import ddpm_conditional as D
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
    "mix_loss": ["--loss", "mix", "--loss-mix", "0.3"],
    "coupled": ["--coupled", "true", "--sample-steps", "3"],
    "freq_schedule": ["--freq-schedule", "0.5"],
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("levers"), n=3, size=(24, 28))


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_lever_trains_and_derains(lever, pairs, tmp_path):
    torch.set_num_threads(1)
    cfg, _ = D.resolve_config(_args(pairs, tmp_path / "run", "--max-steps", "2",
                                    "--ckpt-every", "0", *LEVERS[lever]))
    trainer = D.setup(cfg, D.Distributed("cpu"), log=lambda m: None)
    assert trainer.train() == 0
    ckpt = load_checkpoint(ckpt_paths(tmp_path / "run")[-1])
    flags = LEVERS[lever]
    for flag, value in zip(flags[::2], flags[1::2]):  # the checkpoint records the lever
        key = flag[2:].replace("-", "_")
        assert str(ckpt["config"][key]).lower() == value.lower(), key
    derainer, _ = load_derainer(ckpt["path"])
    report = derain_items(derainer, pairs_items(pairs), out_dir=tmp_path / "out", score=True,
                          progress=False)
    assert report.n_done == 3 and not report.failed and len(report.rows) == 3
    assert all(np.isfinite(r["psnr_y"]) for r in report.rows)
