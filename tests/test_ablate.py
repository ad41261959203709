"""ablate.py: a tiny real study (two variants, two training steps, one pair a set), its resume,
and its chart."""
import csv
import json

import pytest

import ablate


def ablate_seed(index):
    """The seed derain_items gives image `index` of a list (ablate evaluates with seed 0)."""
    from sampling import image_seed
    return image_seed(0, index)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_study_trains_scores_and_resumes_without_redoing_anything(shared_data, tmp_path,
                                                                    capsys):
    study = tmp_path / "study"
    argv = ["--study", str(study), "--variants", "regression,trunk_bridge", "--seeds", "0",
            "--steps", "2", "--eval-steps", "1", "--eval-pairs", "1", "--threads", "2",
            "--data-root", str(shared_data)]
    assert ablate.main(argv) == 0
    rows = _rows(study / "results.csv")
    assert [(r["variant"], r["seed"], r["train_steps"], r["sample_steps"], r["pairs"])
            for r in rows] == [("regression", "0", "2", "1", "1"),
                               ("trunk_bridge", "0", "2", "1", "1")]
    # each number is the one evaluation path's: the run's checkpoint derains the set's first
    # pair through sampling.py and helpers/metrics.py scores it, here independently of ablate
    from checkpoint import load_derainer
    from helpers.images import read_rgb
    from helpers.metrics import score_pair
    from helpers.pairs import read_pairs
    from training.data import preset_dir
    for r in rows:
        derainer, _ = load_derainer(study / r["variant"] / "seed0", sample_steps=1)
        for s in ablate.SETS:
            clean, rain = read_pairs(preset_dir("rain100") / f"val_{s}.csv")[0]
            ours = score_pair(derainer(read_rgb(rain), seed=ablate_seed(0)), read_rgb(clean))
            base = score_pair(read_rgb(rain), read_rgb(clean))
            assert float(r[f"{s}_psnr_y"]) == pytest.approx(ours["psnr_y"], abs=1e-4)
            assert float(r[f"{s}_ssim_y"]) == pytest.approx(ours["ssim_y"], abs=1e-4)
            assert float(r[f"{s}_input_psnr_y"]) == pytest.approx(base["psnr_y"], abs=1e-4)
    assert rows[0]["Rain100L_psnr_y"] != rows[1]["Rain100L_psnr_y"]  # two different models
    assert (study / "regression" / "seed0" / "ckpt_00000002.pt").exists()
    # a study's checkpoint samples by default as its table's first row does (--eval-steps 1)
    assert {load_derainer(study / v / "seed0")[0].settings["sample_steps"]
            for v in ("regression", "trunk_bridge")} == {1}
    assert not (study / "results.png").exists()  # subset rows are kept out of the chart
    capsys.readouterr()

    scores = _rows(study / "scores.csv")  # the same, image by image
    assert [(s["variant"], s["set"], s["sample_steps"]) for s in scores] == \
        [(v, s, "1") for v in ("regression", "trunk_bridge") for s in ablate.SETS]
    for s in scores:  # one pair a set: the image's score is the set's mean
        r = next(r for r in rows if r["variant"] == s["variant"])
        assert s["psnr_y"] == r[f"{s['set']}_psnr_y"] and s["ssim_y"] == r[f"{s['set']}_ssim_y"]

    assert ablate.main(argv) == 0  # resumed: nothing is trained or evaluated again
    out = capsys.readouterr().out
    assert "training" not in out and "evaluating" not in out
    assert _rows(study / "results.csv") == rows

    # a study from before scores.csv: its rows are evaluated again, to the same numbers
    (study / "scores.csv").unlink()
    assert ablate.main(argv) == 0
    out = capsys.readouterr().out
    assert "training" not in out and out.count("evaluating") == 2
    assert _rows(study / "results.csv") == [{**r, "eval_seconds": n["eval_seconds"]} for r, n in
                                            zip(rows, _rows(study / "results.csv"))]
    assert _rows(study / "scores.csv") == scores

    assert ablate.main(["--study", str(study), "--compare", "trunk_bridge,regression"]) == 0
    out = capsys.readouterr().out
    for s in ablate.SETS:
        line = next(ln for ln in out.splitlines() if f" {s} " in ln)
        diff = float(rows[1][f"{s}_psnr_y"]) - float(rows[0][f"{s}_psnr_y"])
        assert f"{diff:+8.2f}" in line and (f"{int(diff > 0)}/1" in line)

    # one more sampler setting only evaluates; the checkpoint is reused
    more = [("regression" if a == "regression,trunk_bridge" else "2" if b == "--eval-steps"
             else a) for b, a in zip([None] + argv, argv)]
    assert ablate.main(more) == 0
    out = capsys.readouterr().out
    assert "training" not in out and out.count("evaluating") == 1
    assert [(r["variant"], r["sample_steps"]) for r in _rows(study / "results.csv")][2:] == \
        [("regression", "2")]


def test_unknown_variants_are_refused_by_name(capsys):
    with pytest.raises(SystemExit) as e:
        ablate.main(["--variants", "regression,no_such_thing"])
    assert e.value.code == 2 and "no_such_thing" in capsys.readouterr().err


def test_the_chart_keeps_every_variant_on_its_own_row(tmp_path, monkeypatch):
    # a variant evaluated at 1 step only must not shift the rows of the 2-step panels
    def row(v, seed, n, l, h):
        return {"variant": v, "seed": seed, "sample_steps": n, "Rain100L_psnr_y": l,
                "Rain100H_psnr_y": h, "Rain100L_input_psnr_y": 25.9, "Rain100H_input_psnr_y": 11.9}
    rows = [row("a", 0, 1, 27, 19), row("a", 0, 2, 27.5, 20), row("b", 0, 1, 26, 18),
            row("c", 0, 1, 25, 17), row("c", 1, 1, 25.4, 17.2), row("c", 0, 2, 25.5, 17.5)]
    seen = {}
    from helpers import figures
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: seen.setdefault("fig", fig))
    ablate.chart(rows, tmp_path / "r.png", [1, 2])
    axes = seen["fig"].axes
    assert len(axes) == 4 and {ax.get_ylim() for ax in axes} == {(2.5, -0.5)}
    bars = {round(p.get_y() + p.get_height() / 2): p.get_width() for p in axes[1].patches}
    assert bars == {0: 27.5, 2: 25.5}  # row 1 ("b") is empty at 2 steps, "c" stays on row 2
    assert axes[0].patches[2].get_width() == pytest.approx(25.2)  # the mean over c's seeds


def test_compare_pairs_images_and_averages_seeds():
    def sc(v, seed, image, p, q=0.5, steps=1, set_name="Rain100L"):
        return {"variant": v, "seed": str(seed), "sample_steps": str(steps), "pairs": "all",
                "set": set_name, "image": image, "psnr_y": str(p), "ssim_y": str(q)}
    scores = [sc("a", 0, "x", 30), sc("a", 1, "x", 32), sc("a", 0, "y", 20), sc("a", 1, "y", 20),
              sc("a", 0, "z", 25), sc("a", 0, "only_a", 99),
              sc("b", 0, "x", 29), sc("b", 0, "y", 21), sc("b", 0, "z", 25, 0.25),
              sc("b", 0, "x", 10, steps=2)]  # no 2-step scores of a: that setting is left out
    (row,) = ablate.compare(scores, "a", "b")
    assert (row["set"], row["sample_steps"], row["images"]) == ("Rain100L", 1, 3)
    assert (row["seeds_a"], row["seeds_b"]) == (2, 1)
    # differences: x 31 - 29 = 2, y 20 - 21 = -1, z 0 -> mean 1/3, one image won
    assert row["psnr_y_diff"] == pytest.approx(1 / 3) and row["wins"] == 1
    d = [2.0, -1.0, 0.0]
    se = (sum((v - 1 / 3) ** 2 for v in d) / 2) ** 0.5 / 3 ** 0.5
    assert row["psnr_y_se"] == pytest.approx(se)
    assert row["ssim_y_diff"] == pytest.approx(0.25 / 3)
    assert ablate.compare(scores, "a", "nobody") == []


def test_compare_reads_a_variant_from_another_study(tmp_path, capsys):
    fields = ["variant", "seed", "sample_steps", "pairs", "set", "image", "psnr_y", "ssim_y"]
    here, other = tmp_path / "here", tmp_path / "other"
    for study, psnr in ((here, {"x": 30, "y": 20}), (other, {"x": 31, "y": 22})):
        study.mkdir()
        ablate.write_results(study / "scores.csv", [
            {"variant": "a", "seed": 0, "sample_steps": 1, "pairs": "all", "set": "Rain100L",
             "image": i, "psnr_y": p, "ssim_y": 0.5} for i, p in psnr.items()], fields)
    assert ablate.main(["--study", str(here), "--compare", f"{other}:a,a"]) == 0
    out = capsys.readouterr().out
    assert f"{other}:a" in out and "+1.50" in out  # (31 - 30 + 22 - 20) / 2, image by image
    assert ablate.main(["--study", str(here), "--compare", f"{tmp_path / 'none'}:a,a"]) == 1
    assert "scores.csv" in capsys.readouterr().err
    # a variant's seeds trained in studies of their own pool: each image the mean of its seeds
    third = tmp_path / "third"
    third.mkdir()
    ablate.write_results(third / "scores.csv", [
        {"variant": "a", "seed": 1, "sample_steps": 1, "pairs": "all", "set": "Rain100L",
         "image": i, "psnr_y": p, "ssim_y": 0.5} for i, p in {"x": 33, "y": 24}.items()], fields)
    assert ablate.main(["--study", str(here), "--compare", f"{other}+{third}:a,a"]) == 0
    out = capsys.readouterr().out
    assert "+2.50" in out and " 2/1 " in out  # ((32 - 30) + (23 - 20)) / 2, 2 seeds and 1


def test_compare_without_scores_says_what_to_run(tmp_path, capsys):
    assert ablate.main(["--study", str(tmp_path), "--compare", "a,b"]) == 1
    assert "scores.csv" in capsys.readouterr().err


def test_launch_defaults_train_the_study_s_default_variant(capsys):
    """Every lever the study pins, resolved with the default variant's flags, is launch()'s
    default (the sampler's step count aside: the study evaluates at --eval-steps)."""
    import ddpm_conditional as D
    cfg, _ = D.resolve_config([*ablate.LEVERS, *ablate.VARIANTS[ablate.DEFAULT]["flags"]])
    defaults = D.launch()
    keys = [flag[2:].replace("-", "_") for flag in ablate.LEVERS[::2]]
    assert "bridge_end" in keys and "network" in keys
    ignored = {"sample_steps", "prediction"}  # the bridge predicts x0 whatever --prediction says
    assert {k: (cfg[k], defaults[k]) for k in keys
            if k not in ignored and cfg[k] != defaults[k]} == {}
    from diffusion import make_process
    assert make_process(cfg, None).prediction == make_process(defaults, None).prediction == "x0"
    assert make_process(cfg, None).end == make_process(defaults, None).end
    assert ablate.main(["--list"]) == 0
    assert f"{ablate.DEFAULT} " in next(ln for ln in capsys.readouterr().out.splitlines()
                                       if "launch()'s default" in ln)


def test_every_lever_a_variant_turns_is_pinned():
    """A lever a variant sets but the study does not pin would take launch()'s default in every
    other variant, so changing that default would change what those variants train (as
    --bridge-states would have, when the default became own)."""
    pinned = set(ablate.LEVERS[::2])
    turned = {f for spec in ablate.VARIANTS.values() for f in spec.get("flags", [])[::2]}
    assert turned - pinned == set()


def test_every_variant_is_a_valid_configuration():
    """Each variant's flags parse on top of the pinned levers (a typo in a flag or a value fails
    here, not after a calibration), and its sampling overrides are sampler settings."""
    import ddpm_conditional as D
    from sampling import SAMPLE_KEYS
    for name, spec in ablate.VARIANTS.items():
        assert set(spec) <= {"flags", "about", "sample", "train_as"}, name
        assert spec.get("train_as", name) in ablate.VARIANTS, name
        assert set(spec.get("sample", {})) <= set(SAMPLE_KEYS), name
        cfg, _ = D.resolve_config([*ablate.LEVERS, *spec.get("flags", [])])
        flags = spec.get("flags", [])
        for flag, value in dict(zip(flags[::2], flags[1::2])).items():  # the last one wins
            got = cfg[flag[2:].replace("-", "_")]
            if isinstance(got, (dict, list)):  # --model-args: JSON
                assert got == json.loads(value), (name, flag)
                continue
            assert str(got).lower() == value.lower() or float(got) == float(value), (name, flag)


def test_the_learning_curve_reads_studies_of_different_budgets(tmp_path, capsys):
    def study(name, rows):
        d = tmp_path / name
        d.mkdir()
        full = [{f: "" for f in ablate.FIELDS} | {"pairs": "all", "sample_steps": "1", **r}
                for r in rows]
        ablate.write_results(d / "results.csv", full)
        return d

    def row(v, seed, l, h):
        return {"variant": v, "seed": str(seed), "Rain100L_psnr_y": str(l),
                "Rain100H_psnr_y": str(h), "Rain100L_ssim_y": "0.9", "Rain100H_ssim_y": "0.7",
                "Rain100L_hf_err_db": "1.5", "Rain100H_hf_err_db": "2.5"}
    a = study("ten", [row("x", 0, 28.0, 21.0), row("y", 0, 27.0, 20.0)])
    b = study("long", [row("x", 0, 30.0, 23.0), row("x", 1, 31.0, 24.0), row("y", 0, 29.0, 22.0)])
    out = tmp_path / "out"
    assert ablate.main(["--study", str(out), "--curve", f"{b}:35,{a}:10", "--variants", "x,y",
                        "--eval-steps", "1"]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("x ") and " 35 " in ln
                and "Rain100L" in ln)
    assert line.split()[:7] == ["x", "Rain100L", "35", "2", "30.50", "30.00-", "31.00"]
    curve = ablate.learning_curve([(35.0, b), (10.0, a)], ["x"], 1)
    assert curve[("x", "Rain100L")] == [(10.0, 28.0, 28.0, 28.0, 0.9, 1.5, 1),
                                        (35.0, 30.5, 30.0, 31.0, 0.9, 1.5, 2)]
    # studies of the same budget pool their rows: one point of three seeds
    c = study("more", [row("x", 2, 32.0, 25.0)])
    curve = ablate.learning_curve([(35.0, b), (10.0, a), (35.0, c)], ["x"], 1)
    assert curve[("x", "Rain100L")][1] == (35.0, 31.0, 30.0, 32.0, 0.9, 1.5, 3)
    assert (out / "learning_curve.png").stat().st_size > 10000
    # a CSV of rows transcribed from the record, each with its minutes; an SSIM-Y the record
    # does not give per seed is left empty and out of the mean, not read as 0
    table = tmp_path / "points.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["minutes", "variant", "seed", "sample_steps",
                                          *row("x", 0, 0, 0)])
        w.writeheader()
        w.writerow({"minutes": "10", "sample_steps": "1", **row("x", 5, 26.0, 19.0)})
        w.writerow({"minutes": "120", "sample_steps": "1", **row("x", 5, 33.0, 25.0),
                    "Rain100L_ssim_y": ""})
        w.writerow({"minutes": "120", "sample_steps": "1", **row("x", 6, 34.0, 26.0),
                    "Rain100L_ssim_y": "0.95"})
    curve = ablate.learning_curve(ablate.curve_points(f"{b}:35,{a}:10,{table}"), ["x"], 1)
    assert curve[("x", "Rain100L")] == [(10.0, 27.0, 26.0, 28.0, 0.9, 1.5, 2),
                                        (35.0, 30.5, 30.0, 31.0, 0.9, 1.5, 2),
                                        (120.0, 33.5, 33.0, 34.0, 0.95, 1.5, 2)]
    # a study that is gone is named, not drawn without its points
    assert ablate.main(["--study", str(out), "--curve", f"{a}:10,{tmp_path / 'gone'}:35",
                        "--variants", "x"]) == 1
    assert "gone" in capsys.readouterr().err


def test_a_reference_calibration_sets_the_step_counts_without_timing(shared_data, tmp_path,
                                                                       capsys):
    ref = tmp_path / "calibration.json"
    ref.write_text(json.dumps({"regression": {"s_per_step": 1.5, "threads": 1}}))
    study = tmp_path / "study"
    argv = ["--study", str(study), "--variants", "regression", "--minutes", "0.05",
            "--eval-steps", "1", "--eval-pairs", "1", "--threads", "2",
            "--data-root", str(shared_data), "--calibration", str(ref)]
    assert ablate.main(argv) == 0
    out = capsys.readouterr().out
    assert "calibrating" not in out  # nothing was timed here
    assert "regression seed 0: 2 steps" in out  # 0.05 min * 60 / 1.5 s
    assert (study / "regression" / "seed0" / "ckpt_00000002.pt").exists()
    rec = json.loads((study / "calibration.json").read_text())["regression"]
    assert rec["s_per_step"] == 1.5 and rec["from"] == str(ref)
    # a variant the file does not time, and a file that contradicts the study's record
    assert ablate.main([*argv[:3], "trunk_bridge", *argv[4:]]) == 2
    err = capsys.readouterr().err
    assert str(ref) in err and "'trunk_bridge'" in err
    ref.write_text(json.dumps({"regression": {"s_per_step": 3.0}}))
    assert ablate.main(argv) == 2
    err = capsys.readouterr().err
    assert "calibration.json already times regression at 1.5" in err and "another --study" in err
    ref.write_text("{not json")
    assert ablate.main(argv) == 2
    assert "not a calibration.json" in capsys.readouterr().err


def test_calibration_rounds_alternate_the_order_and_keep_the_median(tmp_path, monkeypatch):
    # the timer is replaced (a real timing trains 120 steps); it drifts slower with every call,
    # as a machine whose load grows during the calibration
    calls = []

    def fake_time(args, study, variant, log):
        calls.append(variant)
        base = {"regression": 1.0, "trunk_bridge": 2.0, "naf_regression": 3.0}[variant]
        return base + 0.1 * len(calls)

    monkeypatch.setattr(ablate, "time_steps", fake_time)
    study = tmp_path / "study"
    argv = ["--study", str(study), "--variants", "regression,trunk_bridge", "--minutes", "1",
            "--calibrate-only", "--calibrate-rounds", "3", "--threads", "1"]
    assert ablate.main(argv) == 0
    assert calls == ["regression", "trunk_bridge", "trunk_bridge", "regression",
                     "regression", "trunk_bridge"]
    cal = json.loads((study / "calibration.json").read_text())
    assert cal["regression"]["rounds"] == [1.1, 1.4, 1.5]
    assert cal["trunk_bridge"]["rounds"] == [2.2, 2.3, 2.6]
    assert cal["regression"]["s_per_step"] == pytest.approx(1.4)  # the medians
    assert cal["trunk_bridge"]["s_per_step"] == pytest.approx(2.3)
    # calibrated variants are not timed again; a new one is, alone
    assert ablate.main([*argv[:3], "regression,naf_regression", *argv[4:]]) == 0
    assert calls[6:] == ["naf_regression"] * 3
    with pytest.raises(SystemExit):
        ablate.main([*argv[:-4], "--calibrate-rounds", "0"])


def test_step_times_taken_hours_apart_are_flagged(tmp_path, monkeypatch, capsys):
    # two step times from different sessions: a --minutes budget between them may not be equal
    # compute (the machine's speed drifts), so ablate.py says so before it trains
    study = tmp_path / "study"
    study.mkdir()
    cal = {"regression": {"s_per_step": 0.4, "threads": 1, "when": "2026-12-07 18:32:37"},
           "trunk_bridge": {"s_per_step": 0.5, "threads": 1, "when": "2026-12-07 21:18:12"},
           "naf_regression": {"s_per_step": 0.4, "threads": 1, "when": "derived: by hand"}}
    (study / "calibration.json").write_text(json.dumps(cal))
    assert ablate.calibration_span(cal, ["regression", "trunk_bridge"])[1:] == \
        ("regression", "trunk_bridge")
    assert ablate.calibration_span(cal, ["regression", "naf_regression"]) is None
    monkeypatch.setattr(ablate, "time_steps", lambda *a: pytest.fail("timed again"))
    argv = ["--study", str(study), "--minutes", "1", "--calibrate-only", "--threads", "1"]
    assert ablate.main([*argv, "--variants", "regression,trunk_bridge"]) == 0
    err = capsys.readouterr().err
    assert "2.8 h apart" in err and "regression" in err and "trunk_bridge" in err
    assert ablate.main([*argv, "--variants", "regression,naf_regression"]) == 0
    assert "apart" not in capsys.readouterr().err  # a derived entry has no time to compare


def test_the_reference_calibration_times_known_variants_and_the_default():
    cal = json.loads(ablate.REFERENCE_CALIBRATION.read_text())
    assert ablate.DEFAULT in cal and set(cal) <= set(ablate.VARIANTS)
    assert all(0 < v["s_per_step"] < 10 and v["threads"] == 1 for v in cal.values())


def test_lanes_run_the_jobs_side_by_side_into_one_study(shared_data, tmp_path, capsys):
    study = tmp_path / "study"
    argv = ["--study", str(study), "--variants", "regression,trunk_bridge", "--seeds", "0",
            "--steps", "2", "--eval-steps", "1", "--eval-pairs", "1", "--threads", "1",
            "--lanes", "2", "--data-root", str(shared_data)]
    assert ablate.main(argv) == 0
    rows = _rows(study / "results.csv")
    assert sorted((r["variant"], r["train_steps"]) for r in rows) == \
        [("regression", "2"), ("trunk_bridge", "2")]
    assert len(_rows(study / "scores.csv")) == 2 * len(ablate.SETS)
    for v in ("regression", "trunk_bridge"):
        assert "evaluating" in (study / "lanes" / f"{v}_seed0.log").read_text()
    capsys.readouterr()
    # a job that fails is reported with its log, and the study exits non-zero
    (study / "regression" / "seed0" / "ckpt_00000002.pt").write_bytes(b"damaged")
    more = [("regression" if a == "regression,trunk_bridge" else "3" if b == "--steps" else a)
            for b, a in zip([None] + argv, argv)]  # one more step: resumes the damaged one
    assert ablate.main(more) == 1
    out = capsys.readouterr().out
    assert "regression seed 0 FAILED" in out and "regression_seed0.log" in out
    assert "ckpt_00000002.pt" in (study / "regression" / "seed0.log").read_text()


@pytest.mark.parametrize("flag,expected", [([], "5"), (["--ckpt-every", "7"], "7")])
def test_ckpt_every_reaches_the_run(monkeypatch, tmp_path, flag, expected):
    # four checkpoints a run by default; --ckpt-every for a long run that spans sessions
    seen = []

    class Stop(Exception):
        pass

    def training(args, study, variant, seed, extra, log):
        seen.append(extra)
        raise Stop
    monkeypatch.setattr(ablate, "run_training", training)
    with pytest.raises(Stop):
        ablate.main(["--study", str(tmp_path / "s"), "--variants", "regression", "--steps",
                     "20", "--eval-steps", "1", "--threads", "1", *flag])
    assert seen == [["--max-steps", "20", "--ckpt-every", expected]]
