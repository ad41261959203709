"""Figures: the pipeline diagram (labels taken from the code), training curves, comparison and
spectra figures from a tiny checkpoint trained here, the speed plot, and make_figures' skips."""
import json
import os
import subprocess
import sys
import warnings

import matplotlib.text
import pytest
from PIL import Image

import checkpoint as C
import ddpm_conditional as D
from training.distributed import Distributed
import diffusion
import helpers.figures as HF
import make_figures as MF
import representations
from tools import draw_pipeline as DP
from helpers import process as P
from representations import base as RB
from tests.conftest import REPO
from tests.helpers_data import make_pairs
from tests.test_training import _args


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture
def captured_texts(monkeypatch):
    """Every text drawn in the figures the pipeline module saves, collected before saving."""
    texts = []
    real = DP.save_figure

    def spy(fig, path, text=None):
        texts.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        real(fig, path, text=text)
    monkeypatch.setattr(DP, "save_figure", spy)
    return texts


# ============================================================================ pipeline diagram
def test_labels_come_from_the_code_and_follow_launch_defaults(monkeypatch):
    d = D.launch()
    lab = DP.pipeline_labels()
    everything = "\n".join(str(v) if isinstance(v, str) else "\n".join(map(str, v))
                           for k, v in lab.items() if k != "defaults")
    for name in (*representations.names(statistics_only=True), *RB.TARGETS, *RB.NORMS,
                 *diffusion.PREDICTIONS):
        assert name in everything
    assert f"norm='{P.FFT_NORM}'" in everything and f"\u00b1 {RB.STD_SPAN:g} std" in everything
    assert f"{DP.ON} {d['representation']}" in lab["channels"]
    assert f"{DP.ON} {d['norm']}" in lab["norm"]
    assert f"representation={d['representation']}" in lab["subtitle"]
    assert f"crop={d['crop']}" in lab["subtitle"]
    from sampling import steps_text
    sampler = "\n".join(lab["sampler"])
    assert (f"{steps_text(d['sample_steps'])}" in sampler if d["sample_steps"] > 1 else
            "1 step: the x0 estimate" in sampler)
    two = "\n".join(DP.pipeline_labels({**d, "sample_steps": 2})["sampler"])
    assert "2 steps, deterministic" in two
    assert f"process={d['process']}" in lab["subtitle"]
    assert f"network={d['network']}" in lab["subtitle"]

    titles = {"bridge": "bridge sampler", "regression": "one pass",
              "diffusion": "DDPM / DDIM sampler"}
    for process, title in titles.items():  # each process draws its own sampler and input
        monkeypatch.setattr(D, "launch", lambda: {**d, "process": process, "network": "unet",
                                                  "prediction": "x0"})
        lab = DP.pipeline_labels()
        assert lab["sampler_title"] == title and "pixel trunk" not in " ".join(lab["unet"])
        assert ("start" in " ".join(lab["noisy"])) == (process == "bridge")
    monkeypatch.setattr(D, "launch", lambda: {**d, "network": "pixel_trunk"})
    assert "pixel trunk" in " ".join(DP.pipeline_labels()["unet"])
    # the trunk and its spectral branch come from modules.NETWORKS, the loss's terms from launch()
    for network, trunk, branch in (("naf", "NAFNet-style", None),
                                   ("naf_fft", "NAFNet-style", "Res-FFT"),
                                   ("naf_conv", "NAFNet-style", "1x1 branch (no FFT)"),
                                   ("naf_gf", "NAFNet-style", "global filter"),
                                   ("pixel_trunk_fft", "UNet_conditional", "Res-FFT"),
                                   ("ffc", "UNet_conditional", "FFC")):
        monkeypatch.setattr(D, "launch", lambda: {**d, "network": network})
        head = DP.pipeline_labels()["unet"][0]
        assert trunk in head and (branch in head if branch else "branch" not in head), head
    monkeypatch.setattr(D, "launch", lambda: {**d, "loss": "image_fft", "fft_loss_weight": 0.2,
                                              "fft_loss_scales": 2})
    assert DP.pipeline_labels()["loss"].endswith("+ 0.2 \u00d7 FFT-L1 at 2 scales")
    monkeypatch.setattr(D, "launch", lambda: {**d, "loss": "image"})
    assert "FFT-L1" not in DP.pipeline_labels()["loss"]
    monkeypatch.setattr(D, "launch", lambda: {**d, "loss": "psnr"})
    assert "PSNR of each window" in DP.pipeline_labels()["loss"]

    changed = {**d, "representation": "magphase", "norm": "global", "target": "clean",
               "prediction": "eps", "sampler": "ddpm", "sample_steps": 7, "crop": 32,
               "process": "diffusion", "network": "unet"}
    monkeypatch.setattr(D, "launch", lambda: dict(changed))
    lab = DP.pipeline_labels()
    assert f"{DP.ON} magphase" in lab["channels"] and f"{DP.OFF} realimag" in lab["channels"]
    assert f"{DP.ON} global" in lab["norm"] and f"{DP.OFF} perfreq_std" in lab["norm"]
    assert "representation=magphase" in lab["subtitle"] and "norm=global" in lab["subtitle"]
    assert f"{DP.ON} eps" in lab["unet"][-1] and f"{DP.ON} DDPM" in lab["sampler"][0]
    assert lab["sampler"][1].startswith("7 steps") and "32\u00d732" in lab["windows_in"]
    assert lab["addrain_title"] == "(no rain added)"  # target clean: nothing added back
    assert "phase: not logged" in " ".join(lab["slog"])


def test_pipeline_png_is_written_with_the_default_labels(tmp_path, captured_texts):
    out = tmp_path / "sub" / "training_pipeline.png"
    assert DP.main(["--out", str(out)]) == 0
    w, h = _png_size(out)
    assert 1200 <= w <= 1700 and 600 <= h <= 1200, (w, h)
    assert not [p for p in out.parent.iterdir() if p != out]  # atomic: no temporary left
    d = D.launch()
    text = "\n".join(captured_texts)
    assert f"{DP.ON} {d['representation']}" in text and f"{DP.ON} {d['norm']}" in text
    assert f"representation={d['representation']}, norm={d['norm']}" in text
    assert "max error" in text  # the example window decoded from its true target


def test_pipeline_draws_other_settings(tmp_path, monkeypatch, captured_texts):
    changed = {**D.launch(), "representation": "magphase", "norm": "perfreq", "crop": 32}
    monkeypatch.setattr(D, "launch", lambda: dict(changed))
    out = tmp_path / "p.png"
    DP.draw_pipeline(out)
    assert _png_size(out)[0] >= 1200
    text = "\n".join(captured_texts)
    assert f"{DP.ON} magphase" in text and "representation=magphase, norm=perfreq" in text
    assert "phase (R)" in text  # the thumbnails follow the representation


# ============================================================================ training curves
def _write_log(path, n=40, val=True, offset=0.0):
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, n + 1):
        lines.append({"step": s, "loss": 0.5 / s ** 0.5 + offset, "lr": 1e-3, "grad_norm": 0.5,
                      "img_per_s": 90.0})
        if s == 7:
            lines.append({"step": s, "skipped": True})
        if val and s % 10 == 0:
            lines.append({"step": s, "val_psnr_y": 25 + s / 10 + offset, "val_ssim_y": 0.8,
                          "val_input_psnr_y": 24.5})
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 41, "lo'  # torn last line
    (path / "log.jsonl").write_text(text)
    return path


def test_training_curves_from_synthetic_logs(tmp_path, capsys):
    a = _write_log(tmp_path / "x" / "run")
    b = _write_log(tmp_path / "y" / "run", offset=0.2)
    c = _write_log(tmp_path / "noval", val=False)
    missing = tmp_path / "missing"
    recs = MF.read_log(a)
    assert recs[-1]["step"] == 40 and any("val_psnr_y" in r for r in recs)
    assert MF.run_names([a, b, c]) == ["x/run", "y/run", "noval"]
    path = MF.make_training_curves([a, b, c, missing], tmp_path / "out")
    assert path == tmp_path / "out" / "training_curves.png"
    w, h = _png_size(path)
    assert w > 800 and h > 300
    assert "missing: no readable log.jsonl" in capsys.readouterr().out
    assert MF.make_training_curves([missing], tmp_path / "out2") is None


def test_training_curves_of_the_psnr_loss_use_a_linear_scale(tmp_path):
    # the default's PSNR loss is negative (-dB): on a log scale its curve would not be drawn
    recs = [{"step": s, "loss": -20.0 - s / 10} for s in range(1, 30)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a log scale with no positive data
        HF.training_curves_figure({"psnr": recs}, tmp_path / "psnr.png")
        HF.training_curves_figure({"mse": [{"step": s, "loss": 1 / s} for s in range(1, 30)]},
                               tmp_path / "mse.png")
    assert _png_size(tmp_path / "psnr.png")[0] > 800


# ============================================================================ checkpoint figures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-step checkpoint of the tiny model (crop 16) and its 24x28 pairs."""
    folder = tmp_path_factory.mktemp("figs")
    csv = make_pairs(folder / "pairs", n=4, size=(24, 28))
    cfg, _ = D.resolve_config(_args(csv, folder / "run", "--max-steps", "2", "--ckpt-every",
                                    "0"))
    trainer = D.setup(cfg, Distributed("cpu"), log=lambda m: None)
    assert trainer.train() == 0
    return {"csv": csv, "ckpt": C.ckpt_paths(folder / "run")[-1], "run": folder / "run"}


def test_comparison_and_spectra_from_a_tiny_checkpoint(tiny, tmp_path, capsys):
    out = tmp_path / "figs"
    rc = MF.main(["--ckpt", str(tiny["ckpt"]), "--csv", str(tiny["csv"]), "--data",
                  str(tmp_path / "no_data"), "--out", str(out), "--steps", "2", "--pairs", "2",
                  "--run", str(tiny["run"]), "--pipeline", "", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "real-data figures skipped" in printed
    for name in ("comparison_pairs.png", "spectra.png", "training_curves.png"):
        w, h = _png_size(out / name)
        assert w > 300 and h > 200, name
    assert not (out / "comparison_rain100l.png").exists() and not (out / "real_rain.png").exists()
    assert "derained 1.png (28x24, " in printed


def test_real_data_helpers(tmp_path):
    import numpy as np
    for sub in ("input", "target"):
        (tmp_path / "Set" / sub).mkdir(parents=True)
    img = np.zeros((8, 8, 3), np.uint8)
    for n in (3, 51, 52, 60):
        for sub in ("input", "target"):
            Image.fromarray(img).save(tmp_path / "Set" / sub / f"rain-{n:03d}.png")
    pairs = MF.numbered_pairs(tmp_path / "Set", MF.parse_numbers("51-60"))
    assert [p[1].name for p in pairs] == ["rain-051.png", "rain-052.png", "rain-060.png"]
    assert MF.parse_numbers("1,4-5") == [1, 4, 5]
    big = np.zeros((900, 1200, 3), np.uint8)
    small, shrunk = MF.downscale(big, 640)
    assert shrunk and small.shape == (480, 640, 3)
    assert MF.downscale(small, 640)[1] is False


def test_make_figures_without_data_skips_cleanly(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "make_figures.py"), "--ckpt",
                        str(tiny["ckpt"]), "--data", str(tmp_path / "absent"), "--out",
                        str(tmp_path / "out"), "--pipeline", ""],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not found: real-data figures skipped" in r.stdout
    assert "no --run given" in r.stdout and "no --speed" in r.stdout
    assert not list((tmp_path / "out").iterdir())  # nothing half-made


def test_damaged_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = MF.main(["--ckpt", str(bad), "--out", str(tmp_path / "o"), "--pipeline", ""])
    assert rc == 1 and "bad.pt" in capsys.readouterr().out


# ============================================================================ speed plot
def test_speed_figure_from_json_and_csv(tmp_path, capsys, monkeypatch):
    rows = [{"sampler": s, "steps": n, "seconds_per_image": n * 0.5, "psnr_y": 27 + n / 50,
             "input_psnr_y": 26.4} for s in ("ddim", "ddpm") for n in (5, 10, 20, 50)]
    js = tmp_path / "speed.json"
    js.write_text(json.dumps({"rows": rows}))
    cs = tmp_path / "speed.csv"
    cs.write_text("sampler,steps,seconds_per_image,psnr_y\n"
                  + "".join(f"{r['sampler']},{r['steps']},{r['seconds_per_image']},"
                            f"{r['psnr_y']}\n" for r in rows))
    for src in (js, cs):  # both formats give the rows back, with their numbers
        got = MF.read_speed_rows(src)
        assert [(r["sampler"], int(r["steps"])) for r in got] == \
            [(r["sampler"], r["steps"]) for r in rows]
        assert [float(r["psnr_y"]) for r in got] == pytest.approx([r["psnr_y"] for r in rows])
        assert [float(r["seconds_per_image"]) for r in got] == \
            pytest.approx([r["seconds_per_image"] for r in rows])
    for src in (js, cs):
        out = tmp_path / src.suffix[1:]
        assert MF.main(["--speed", str(src), "--out", str(out), "--pipeline", "",
                        "--data", str(tmp_path / "none")]) == 0
        assert _png_size(out / "speed.png")[0] > 800
    other = tmp_path / "other.json"  # two files overlaid: each row named by its file
    other.write_text(json.dumps(rows))
    seen = []
    orig = HF.speed_figure
    monkeypatch.setattr(HF, "speed_figure",
                        lambda rows, path, title: (seen.extend(rows), orig(rows, path, title)))
    assert MF.main(["--speed", str(js), "--speed", str(other), "--out", str(tmp_path / "two"),
                    "--pipeline", "", "--data", str(tmp_path / "none")]) == 0
    assert len(seen) == 2 * len(rows) and {r["set"] for r in seen} == {"speed", "other"}
    assert _png_size(tmp_path / "two" / "speed.png")[0] > 800
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"sampler": "ddim", "steps": 5}]))
    assert MF.main(["--speed", str(bad), "--out", str(tmp_path / "b"), "--pipeline", ""]) == 1
    assert "lacks 'seconds_per_image'" in capsys.readouterr().out
