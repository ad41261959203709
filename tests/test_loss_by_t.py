"""tools/loss_by_t.py: the x0 error of a trained bridge by timestep (tiny model, CPU)."""
import pytest
import torch

import ddpm_conditional as D
from training.distributed import Distributed
from tools import loss_by_t
from tests.helpers_data import make_pairs
from tests.test_training import _args


def _train(pairs, run_dir, *flags):
    torch.set_num_threads(1)
    cfg, _ = D.resolve_config(_args(pairs, run_dir, "--max-steps", "2", "--ckpt-every", "0",
                                    *flags))
    assert D.setup(cfg, Distributed("cpu"), log=lambda m: None).train() == 0


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("lbt"), n=3, size=(24, 28))


def test_a_bridge_profile_by_timestep(pairs, tmp_path, capsys):
    _train(pairs, tmp_path / "bridge", "--process", "bridge", "--bridge-end", "0.5")
    from checkpoint import ckpt_paths, load_derainer
    derainer, _ = load_derainer(ckpt_paths(tmp_path / "bridge")[-1])
    rows = loss_by_t.profile(derainer, pairs, windows=6, ts=[999, 990, 500, 0])
    assert [r["t"] for r in rows] == [999, 990, 500, 0]
    # half the draws at T - 1, the rest uniform
    assert [r["draws_at_or_above"] for r in rows] == pytest.approx([0.5005, 0.505, 0.75, 1.0])
    assert len({r["rain_psnr"] for r in rows}) == 1  # the same windows at every t
    assert "inversion_psnr" not in rows[0]  # at s = 1 the input holds nothing of x0
    inv = [r["inversion_psnr"] for r in rows[1:]]
    assert inv == sorted(inv) and inv[-1] > 40  # at t = 0 the noise is 0.1 sqrt(s(1 - s))
    # the same call again: crops and noise are fixed by position and seed
    assert loss_by_t.profile(derainer, pairs, windows=6, ts=[999, 990, 500, 0]) == rows

    assert loss_by_t.main(["--ckpt", str(tmp_path / "bridge"), "--csv", str(pairs),
                           "--windows", "4", "--t", "999,0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "(bridge)" in out and len([ln for ln in out.splitlines() if ln[:5].strip()
                                      in ("999", "0")]) == 2


def test_checkpoints_it_cannot_profile_are_refused_by_name(pairs, tmp_path, capsys):
    assert loss_by_t.main(["--ckpt", str(tmp_path), "--csv", str(pairs)]) == 1
    assert str(tmp_path) in capsys.readouterr().err
    _train(pairs, tmp_path / "reg", "--process", "regression", "--representation", "pixels")
    assert loss_by_t.main(["--ckpt", str(tmp_path / "reg"), "--csv", str(pairs)]) == 1
    assert "regression" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert loss_by_t.main(["--ckpt", str(bad), "--csv", str(pairs)]) == 1
    assert "bad.pt" in capsys.readouterr().err
