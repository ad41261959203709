"""ddpm_conditional.py: configuration, checkpoints, exact resume after a kill, NaN handling,
and DDP under torchrun (two CPU processes, gloo)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint as C
import ddpm_conditional as D
from helpers.errors import ConfigError
from training.parts import TrainStep
from training.parts import LRPlan
from training.distributed import Distributed
from training.data import prepare_data
from tests.conftest import REPO
from tests.helpers_data import make_pairs, tiny_model_args

TINY = json.dumps(tiny_model_args())  # a tiny model of launch()'s network


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    return make_pairs(folder, n=6, size=(24, 28))


def _args(data, run_dir, *extra):
    """The training flags of a tiny run; the tiny model is of the network `extra` names, if any."""
    network = next((extra[i + 1] for i, a in enumerate(extra[:-1]) if a == "--network"), None)
    tiny = json.dumps(tiny_model_args(network)) if network else TINY
    return ["--csv", str(data), "--val-csv", str(data), "--crop", "16", "--model-args", tiny,
            "--batch-size", "4", "--num-workers", "0", "--run-dir", str(run_dir),
            "--eval-every", "0", "--final-eval", "false", "--minutes", "0", "--log-every", "1",
            "--warmup-steps", "1", "--lr-min-ratio", "1.0", "--threads", "1", *extra]


def _run(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "ddpm_conditional.py"), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300, **kw)


def test_config_precedence_and_dry_run(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.01\nbatch_size: 3\nprediction: eps\n")
    cfg, dry = D.resolve_config(["--config", str(cfg_file), "--batch-size", "5", "--dry-run"])
    assert dry and cfg["lr"] == 0.01 and cfg["batch_size"] == 5 and cfg["prediction"] == "eps"
    assert cfg["minutes"] == D.launch()["minutes"]
    cfg, _ = D.resolve_config(["--preset", "rain100l"])
    assert cfg["preset"] == "rain100l" and cfg["run_dir"].endswith("rain100l-fft")
    r = _run(["--dry-run", "--crop", "32", "--model-args", '{"base_channels": 48}'])
    assert r.returncode == 0 and json.loads(r.stdout)["model_args"] == {"base_channels": 48}
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 1}')
    r = _run(["--config", str(bad), "--dry-run"])
    assert r.returncode != 0 and "learning_rate" in r.stderr


def _final_state(run_dir):
    return C.load_checkpoint(C.ckpt_paths(run_dir)[-1])


def test_resume_after_kill_continues_exactly(data, tmp_path):
    # uninterrupted reference: 8 steps
    ref_dir = tmp_path / "ref"
    r = _run(_args(data, ref_dir, "--max-steps", "8", "--ckpt-every", "4"))
    assert r.returncode == 0, r.stderr[-2000:]
    ref = _final_state(ref_dir)
    assert ref["step"] == 8
    # the same run, killed hard after its step-4 checkpoint...
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(REPO / "ddpm_conditional.py"),
                          *_args(data, run_dir, "--max-steps", "8", "--ckpt-every", "4",
                                 "--keep-ckpts", "10")],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt4 = run_dir / "ckpt_00000004.pt"
    deadline = time.time() + 240
    while not ckpt4.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt4.exists()
    for later in C.ckpt_paths(run_dir):  # it may have got further: resume from step 4
        if later != ckpt4:
            later.unlink()
    # ...then resumed: same step, optimiser state, EMA and data stream
    r = _run(_args(data, run_dir, "--max-steps", "8", "--ckpt-every", "4", "--resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "at step 4" in r.stdout
    got = _final_state(run_dir)
    assert got["step"] == 8
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            torch.testing.assert_close(got[part][k], v, rtol=1e-5, atol=1e-6, msg=f"{part} {k}")
    ref_m = ref["optimizer"]["state"]
    for k in ref_m:
        torch.testing.assert_close(got["optimizer"]["state"][k]["exp_avg"], ref_m[k]["exp_avg"],
                                   rtol=1e-4, atol=1e-7)
    # resolved config written beside the run; the tail of the log continues from step 5
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 8
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert 5 in steps and steps[-1] == 8


def test_damaged_and_foreign_checkpoints_are_refused(data, tmp_path):
    run_dir = tmp_path / "run"
    r = _run(_args(data, run_dir, "--max-steps", "2", "--ckpt-every", "0"))
    assert r.returncode == 0, r.stderr[-2000:]
    good = C.ckpt_paths(run_dir)[-1]
    model, rep, diffusion, cfg = C.model_from_checkpoint(C.load_checkpoint(good))
    assert rep.crop == 16 and cfg["crop"] == 16 and not model.training
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(C.CheckpointError, match="damaged.pt.*truncated or damaged"):
        C.load_checkpoint(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(C.CheckpointError, match="foreign.pt: not a checkpoint of this repo"):
        C.load_checkpoint(foreign)
    r = _run(_args(data, tmp_path / "r2", "--max-steps", "3", "--resume", str(damaged)))
    assert r.returncode == 2 and "damaged.pt" in r.stderr
    # nothing half-written: only complete checkpoints in the run dir
    assert not list(run_dir.glob("*.tmp"))


def test_non_finite_losses_are_skipped_then_stop_the_run(data, tmp_path, monkeypatch):
    # a skipped step is masked on the device (no host check per step): it leaves weights, EMA
    # and optimiser moments as they were; the log point after max_bad_steps in a row stops
    cfg, _ = D.resolve_config(_args(data, tmp_path / "nan", "--max-steps", "50",
                                    "--max-bad-steps", "3", "--ckpt-every", "5"))
    trainer = D.setup(cfg, Distributed("cpu"), log=lambda m: None)
    real = trainer.parts.loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        if calls["n"] == 3 or calls["n"] >= 6:  # one isolated NaN, then NaN for ever
            return loss * float("nan")
        return loss
    trainer.parts.loss = flaky
    assert trainer.train() == 4
    log = [json.loads(line) for line in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("skipped")] == [3, 6, 7, 8]
    assert [r["skipped_in_a_row"] for r in log if r.get("skipped")] == [1, 1, 2, 3]
    assert trainer.step == 8  # stopped at the log point of the third in a row
    good = C.load_checkpoint(tmp_path / "nan" / "ckpt_00000005.pt")  # after the last good step
    assert C.ckpt_paths(tmp_path / "nan")[-1].name == "ckpt_00000005.pt"
    p = trainer.parts
    for k, v in p.model.state_dict().items():
        assert torch.equal(v, good["model"][k]), k  # the three skipped updates changed nothing
    for k, v in p.ema.state_dict().items():
        if k != "n_averaged":
            assert torch.equal(v, good["ema"][k]), k
    for i, state in p.opt.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], good["optimizer"]["state"][i]["exp_avg"])
        assert state["step"] == good["optimizer"]["state"][i]["step"] == 4  # 5 steps, 1 skipped


def test_torchrun_two_cpu_ranks_train_like_one_process_with_the_same_batch(data, tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(REPO / "ddpm_conditional.py"),
                        *_args(data, run_dir, "--max-steps", "3", "--device", "cpu")],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    sync = [rec for rec in log if "ranks_in_sync" in rec]
    assert sync and sync[-1]["ranks_in_sync"] is True and len(sync[-1]["weights_digest"]) == 2
    ddp = C.load_checkpoint(C.ckpt_paths(run_dir)[-1])
    assert ddp["world"] == 2
    # only rank 0 writes: one log line per step
    assert [rec["step"] for rec in log if "loss" in rec] == [1, 2, 3]
    # two ranks of 4 samples = one process of 8: the same samples, crops and noise (all derive
    # from each sample's position in the run), the gradient of the same mean loss
    single_dir = tmp_path / "single"
    args = _args(data, single_dir, "--max-steps", "3", "--device", "cpu")
    args[args.index("--batch-size") + 1] = "8"
    r = _run(args)
    assert r.returncode == 0, r.stderr[-2000:]
    single = C.load_checkpoint(C.ckpt_paths(single_dir)[-1])
    for part in ("model", "ema"):
        for k, v in single[part].items():
            torch.testing.assert_close(ddp[part][k], v, rtol=1e-4, atol=1e-6, msg=f"{part} {k}")
    # and grad_accum 2 x 4 samples is the same again
    accum_dir = tmp_path / "accum"
    r = _run(_args(data, accum_dir, "--max-steps", "3", "--device", "cpu", "--grad-accum", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    accum = C.load_checkpoint(C.ckpt_paths(accum_dir)[-1])
    for k, v in single["model"].items():
        torch.testing.assert_close(accum["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_stop_file_checkpoints_and_exits(data, tmp_path):
    run_dir = tmp_path / "stop"
    run_dir.mkdir()
    (run_dir / "STOP").touch()
    r = _run(_args(data, run_dir, "--max-steps", "100"))
    assert r.returncode == 3 and "stop requested at step 0" in r.stdout
    assert C.ckpt_paths(run_dir)


def test_real_data_presets_split_by_number_without_leakage(shared_data, tmp_path, monkeypatch):
    import training.data
    monkeypatch.setattr(training.data, "REPO", tmp_path)  # the preset's CSVs and statistics
    cfg, _ = D.resolve_config(["--preset", "rain100", "--data-root", str(shared_data)])
    cfg["stats"] = str(tmp_path / "unused.json")  # only the split is tested here
    (tmp_path / "unused.json").write_text("{}")
    cfg = prepare_data(cfg, log=lambda m: None)
    import pandas as pd
    train, val = pd.read_csv(cfg["csv"]), pd.read_csv(cfg["val_csv"])
    number = lambda ids: {int("".join(c for c in str(i) if c.isdigit())) for i in ids}
    assert len(train) == 100 and len(val) == 20  # pairs 1-50 and 51-60 of Rain100L and Rain100H
    assert number(train.clean_id) == set(range(1, 51))
    assert number(val.clean_id) == set(range(51, 61))
    assert set(train.dataset) == set(val.dataset) == {"Rain100L", "Rain100H"}
    for name in ("Rain100L", "Rain100H"):  # and one validation CSV per set, for the tables
        per_set = pd.read_csv(tmp_path / "data" / "presets" / "rain100" / f"val_{name}.csv")
        assert len(per_set) == 10 and set(per_set.dataset) == {name}
        assert number(per_set.clean_id) == set(range(51, 61))


SKEWED_CLOCK = '''import os, time
if os.environ.get("RANK") == "1":  # rank 1's clock runs 1.5 times too fast
    _real, _t0 = time.time, time.time()
    time.time = lambda: _t0 + 1.5 * (_real() - _t0)
'''


def test_torchrun_with_a_time_budget_plans_from_rank_0s_clock(data, tmp_path):
    # Under --minutes the learning rate follows the clock. If each rank read its own, ranks with
    # different clocks (here rank 1's runs 1.5x fast, through a sitecustomize on PYTHONPATH)
    # would get different learning rates and their weights would drift apart; rank 0 decides
    # for all, and the weights are compared at every checkpoint.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SKEWED_CLOCK)
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"),
                                          os.environ.get("PYTHONPATH", "")])}
    args = _args(data, run_dir, "--device", "cpu", "--ckpt-every", "5", "--keep-ckpts", "10")
    args[args.index("--minutes") + 1] = "0.1"
    args[args.index("--lr-min-ratio") + 1] = "0.1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(REPO / "ddpm_conditional.py"), *args],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    sync = [rec for rec in log if "ranks_in_sync" in rec]
    assert len(sync) >= 2 and all(rec["ranks_in_sync"] for rec in sync)
    lrs = [rec["lr"] for rec in log if "lr" in rec]
    assert len(lrs) > 5 and lrs[-1] < 0.5 * max(lrs)  # and the run ended with a decayed rate


def test_the_trainer_is_released_when_training_ends(data, tmp_path):
    # Its SIGTERM/SIGUSR1 handlers are put back. Left installed, they held the trainer (and
    # under torchrun DDP's process group) until the interpreter shut down, where gloo's
    # threads aborted a rank after a run that had succeeded, now and then (CI, 2026-12-06).
    import gc
    import signal
    import weakref
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    cfg, _ = D.resolve_config(_args(data, tmp_path / "r", "--max-steps", "2"))
    trainer = D.setup(cfg, Distributed("cpu"), log=lambda m: None)
    assert trainer.train() == 0
    assert {s: signal.getsignal(s) for s in before} == before
    ref = weakref.ref(trainer.parts.model)
    del trainer
    gc.collect()
    assert ref() is None


def test_ranks_out_of_sync_stop_the_run():
    from types import SimpleNamespace
    records = []
    fake = SimpleNamespace(env=SimpleNamespace(ddp=True, gather_object=lambda obj: ["a", "b"]),
                           parts=SimpleNamespace(model=torch.nn.Linear(1, 1)), step=7,
                           log=SimpleNamespace(write=records.append))
    with pytest.raises(D.RanksOutOfSync, match="step 7: the ranks hold different weights"):
        D.Trainer.check_sync(fake)
    assert records == [{"step": 7, "ranks_in_sync": False, "weights_digest": ["a", "b"]}]


def test_bench_times_the_training_step(monkeypatch):
    import bench
    calls = []
    real = TrainStep.__call__

    def spy(self, stream):
        calls.append(type(self.parts.loss).__name__)
        return real(self, stream)
    monkeypatch.setattr(TrainStep, "__call__", spy)
    args = bench.parse_args(["--device", "cpu", "--models", "small", "--batch", "2", "--size",
                             "16", "--steps", "2", "--warmup", "1", "--threads", "1",
                             "--loss", "image"])
    res = bench.run_model(args, "small")
    assert calls == ["ImageLoss"] * 3  # the warm-up and the timed steps, through TrainStep
    assert res["s_per_step"] > 0 and res["channels_last"]
    assert res["network"] == D.launch()["network"] and res["process"] == D.launch()["process"]
    assert res["representation"] == D.launch()["representation"] and res["loss"] == "image"
    other = next(n for n in ("pixel_trunk", "naf") if n != D.launch()["network"])
    argv = ["--device", "cpu", "--models", "small", "--batch", "2", "--size", "16", "--steps",
            "1", "--warmup", "0", "--threads", "1", "--network", other]
    first, res = res, bench.run_model(bench.parse_args(argv), "small")
    # --network times another network at the same size name: another model was built
    assert res["network"] == other and res["params_M"] != first["params_M"]
    # --bridge-states: the step times the own states' extra pass (launch()'s) or not (clean)
    from diffusion import Bridge
    passes = []
    real_own = Bridge.own_states
    monkeypatch.setattr(Bridge, "own_states", lambda self, *a, **k: passes.append(1) or
                        real_own(self, *a, **k))
    for states in ("own", "clean"):
        passes.clear()
        res = bench.run_model(bench.parse_args(argv[:-2] + ["--bridge-states", states]), "small")
        assert res["bridge_states"] == states and len(passes) == (1 if states == "own" else 0)
    assert bench.parse_args(argv).bridge_states == D.launch()["bridge_states"]


def test_a_step_budget_shorter_than_its_warm_up_still_ends_decayed():
    # warm-up lasts warmup_steps or 5 % of the run, whichever ends first
    short = LRPlan(1e-3, warmup_steps=200, lr_min_ratio=0.05, max_steps=199)
    lrs = [short.factor(s) for s in range(199)]
    peak = max(range(199), key=lrs.__getitem__)
    assert peak == 9  # ceil(0.05 * 199) = 10 warm-up steps
    assert lrs[-1] < 0.06 and all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    long = LRPlan(1e-3, warmup_steps=200, lr_min_ratio=0.05, max_steps=50000)
    assert long.factor(0) == 1 / 200 and long.factor(199) == 1.0  # long runs: unchanged
    assert long.factor(49999) < 0.06
    assert LRPlan(1e-3, 200, 0.05).factor(10 ** 6) == 1.0  # no end: constant after warm-up


class _PlainSGD(torch.optim.Optimizer):
    """w -= grad (no found_inf handling, which TrainStep sets as an attribute only)."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                p -= p.grad


def _one_sgd_step(clip):
    """One TrainStep of a 3-weight linear model with plain SGD at lr 1 and a loss whose gradient
    norm is 50: -> the change of the weights."""
    from types import SimpleNamespace
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    x = torch.tensor([[30.0, 40.0, 0.0]])  # d(out)/dw = x, |x| = 50
    parts = SimpleNamespace(
        net=model, model=model, amp_dtype=None,
        loss=lambda net, batch: net(batch["target"]).sum().reshape(1, 1),
        opt=_PlainSGD(model.parameters()),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        ema=SimpleNamespace(update=lambda m, keep: None))
    env = SimpleNamespace(device=torch.device("cpu"), ddp=False, world=1,
                          any_on_device=lambda flag: flag)
    cfg = {"grad_accum": 1, "grad_clip": clip, "channels_last": False}
    before = model.weight.detach().clone()
    _, gnorm, skipped, _ = TrainStep(cfg, parts, env)(iter([{"target": x}]))
    assert float(gnorm) == pytest.approx(50.0) and not bool(skipped)
    return model.weight.detach() - before


def test_grad_clip_bounds_the_update_and_zero_turns_it_off():
    clipped = _one_sgd_step(1.0)
    assert clipped.norm().item() == pytest.approx(1.0, rel=1e-4)  # scaled down to norm 1
    free = _one_sgd_step(0.0)  # 0: the whole gradient, not a zero one
    torch.testing.assert_close(free, -torch.tensor([[30.0, 40.0, 0.0]]))
    with pytest.raises(ConfigError, match="--grad-clip must be >= 0"):
        _one_sgd_step(-1.0)


def test_adam_beta2_reaches_the_optimiser_and_the_checkpoint(data, tmp_path):
    """--adam-beta2 (NAFNet's recipe trains with 0.9) is the optimiser's second-moment decay,
    recorded in the checkpoint's config and optimiser state; a value outside [0, 1) is refused
    before anything runs."""
    run = tmp_path / "beta2"
    r = _run(_args(data, run, "--max-steps", "2", "--adam-beta2", "0.9"))
    assert r.returncode == 0, r.stderr[-2000:]
    state = _final_state(run)
    assert state["config"]["adam_beta2"] == 0.9
    assert tuple(state["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.9)
    assert D.launch()["adam_beta2"] == 0.99 == C.HISTORICAL["adam_beta2"]  # the default unchanged
    r = _run(["--dry-run", "--adam-beta2", "1"])
    assert r.returncode == 2 and "--adam-beta2" in r.stderr and "[0, 1)" in r.stderr
