"""The GPU paths, tested on a machine without a GPU.

* Fake CUDA: under PyTorch's FakeTensorMode, tensors on device "cuda" exist without a GPU and
  a CPU tensor meeting a CUDA one raises FakeTensorDeviceMismatchError; reading a value
  (.item(), bool()) raises too. The training step's forward and loss and every process's
  sampler through the Derainer run there, with bf16 autocast and channels_last, and a dispatch
  mode counts the copies between host and device.
* Host reads: a dispatch mode counts aten._local_scalar_dense (every .item(), int(), bool() of a
  tensor) over real CPU training steps, and tensors made from NumPy inside the step.
* Device resolution and resume with torch.cuda patched or a non-CPU (meta) device.
"""
import contextlib
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import ddpm_conditional as D
import checkpoint as C
from utils import get_data
from training.parts import Parts
from training.distributed import Distributed
import helpers.seeding as seeding
import representations
from diffusion import make_process
from helpers.devices import DeviceError, resolve_device
from losses import make_loss
from modules import build_network
from sampling import Derainer, sample_settings
from tests.conftest import REPO
from tests.helpers_data import make_pairs, tiny_model_args

COPY_OPS = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


class Transfers(TorchDispatchMode):
    """Counts host reads (aten._local_scalar_dense) and copies between devices."""

    def __init__(self):
        super().__init__()
        self.reads, self.to_device, self.to_host = 0, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        elif func in COPY_OPS:
            src, dst = (args[1], args[0]) if func is torch.ops.aten.copy_.default else (args[0], out)
            if src.device.type != dst.device.type:
                (self.to_host if dst.device.type == "cpu" else self.to_device).append(
                    tuple(src.shape))
        return out


def _cfg(**over):
    """launch()'s config with a tiny model of the network it ends up with."""
    cfg = {**D.launch(), "crop": 16, **over}
    return {**cfg, "model_args": tiny_model_args(cfg["network"])}


def _representation(cfg):
    rep = representations.from_config(cfg)
    if not rep.needs_statistics:
        return rep
    rng = np.random.default_rng(0)
    shape = rep.shape(cfg["crop"], cfg["crop"])
    lo, hi = -1 - rng.random(shape), 1 + rng.random(shape)
    return representations.from_config(cfg, {"ranges": {"target": (lo, hi), "cond": (lo, hi)}})


def _batch(rep, b=4, crop=16):
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(b, 3, crop, crop, generator=g, dtype=torch.float64)
    rain = (clean + 0.3 * (torch.rand(b, 3, crop, crop, generator=g) < 0.1)).clamp(0, 1)
    target, cond = rep.encode(clean, rain)
    return {"target": target.float(), "cond": cond.float(), "rain": rain.float(),
            "clean": clean.float(), "position": torch.arange(b)}


class FakeCuda(FakeTensorMode):
    # never run a real kernel on "cuda", also while torch.cuda is patched to say it is there
    avoid_device_init = True


@contextlib.contextmanager
def fake_cuda(monkeypatch, *modules):
    """FakeTensorMode with `modules` moved to "cuda" (channels_last, as training and sampling
    do), CUDA reported as present for autocast, and every device generator recorded (made on
    the CPU: a real CUDA generator needs a driver; fake kernels ignore the generator)."""
    made = []

    def generator(seed, device):
        made.append(torch.device(device).type)
        return torch.Generator().manual_seed(int(seed))
    monkeypatch.setattr(seeding, "make_generator", generator)
    with FakeCuda(allow_non_fake_inputs=True):
        for m in modules:  # one move each: a fake parameter cannot be swapped a second time
            m.to("cuda", memory_format=torch.channels_last)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        yield made


# ===================================================================== fake CUDA
@pytest.mark.parametrize("over", [
    {},  # the default: bridge (own states, skip), NAF trunk, PSNR loss
    {"bridge_states": "clean", "bridge_param": "x0"},  # the default before it
    {"loss": "image"},
    {"process": "diffusion"},
    {"process": "regression"},
    {"process": "diffusion", "network": "unet", "prediction": "v", "loss": "mix",
     "p_uncond": 0.2, "freq_schedule": 0.5},
    {"representation": "pixels", "network": "unet", "bridge_end": 0.5},
    {"representation": "magphase", "signed_log": True, "network": "ffc"},
    {"network": "pixel_trunk_fft", "loss": "image_fft", "bridge_param": "skip"},
    {"network": "naf_fft"},
    {"network": "naf_conv"},
    {"network": "naf_gf"},
    {"bridge_states": "own", "bridge_end": 0.5},
], ids=["default", "clean_states_x0", "image_loss", "diffusion", "regression", "spectral_unet",
        "pixels", "magphase_ffc", "fft_branch_fft_loss_skip", "naf_fft", "naf_conv", "naf_gf",
        "own_states"])
def test_the_training_forward_and_loss_stay_on_the_device(monkeypatch, over):
    cfg = _cfg(**over)
    rep = _representation(cfg)
    net, batch = build_network(cfg, rep), _batch(rep)
    sizes = []
    net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    with fake_cuda(monkeypatch, rep, net) as made:
        loss_fn = make_loss(cfg, make_process(cfg, rep), rep)
        on_device = {k: v if k == "position" else v.to("cuda") for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_fn(net, on_device)  # the first call copies the process's tables, once
            sizes.clear()
            with Transfers() as seen:
                loss = loss_fn(net, on_device).mean()
    assert loss.device.type == "cuda"
    assert seen.to_host == [] and seen.reads == 0
    ends = cfg["process"] == "bridge" and cfg["bridge_end"] > 0
    # the bridge's one upload: which draws the host sent to the rainy end (B integers)
    assert seen.to_device == ([(4,)] if ends else [])
    assert set(made) <= {"cuda"}  # per-sample generators, made on the device
    if cfg["process"] != "regression":
        assert len(made) == 2 * 4
    assert sizes[-1] == 4  # the training forward: the whole batch
    if cfg["process"] == "bridge" and cfg["bridge_states"] == "own":
        # the own states' forward ran on the draws not sent to the end only, which the host
        # knows from its own draws: each sample's first uniform from its seed
        kept = sum(random.Random(seeding.hash_seed("noise", cfg["seed"], p)).random()
                   >= cfg["bridge_end"] for p in range(4))
        assert sizes[:-1] == ([kept] if kept else [])
    else:
        assert sizes == [4]


@pytest.mark.parametrize("over,settings", [
    ({}, {}),  # the default: bridge, one step
    ({}, {"sample_steps": 3, "eta": 0.5, "ensemble": 2}),
    ({}, {"sample_steps": 2, "coupled": True}),
    ({"bridge_states": "clean", "bridge_param": "x0"}, {"sample_steps": 2}),
    ({"process": "diffusion"}, {"sample_steps": 2, "eta": 0.5}),
    ({"process": "diffusion"}, {"sampler": "ddpm", "sample_steps": 3, "coupled": True}),
    ({"process": "diffusion", "network": "unet", "prediction": "v"},
     {"sample_steps": 2, "guidance": 2.0}),
    ({"process": "regression"}, {}),
    ({"representation": "rfft2"}, {"sample_steps": 2}),
    ({"network": "pixel_trunk_fft", "bridge_param": "skip"}, {"sample_steps": 4}),
    ({"network": "naf_fft"}, {"sample_steps": 2}),
    ({}, {"flips": 4}),
], ids=["bridge", "bridge_eta_ensemble", "bridge_coupled", "bridge_x0", "ddim_eta",
        "ddpm_coupled", "ddim_guided", "regression", "rfft2", "fft_branch_skip", "naf_fft",
        "bridge_flips"])
def test_every_sampler_derains_on_the_device(monkeypatch, over, settings):
    cfg = _cfg(**over)
    rep = _representation(cfg)
    net = build_network(cfg, rep)
    rain = np.random.default_rng(1).random((3, 37, 29))  # several windows, a padded edge
    with fake_cuda(monkeypatch, rep, net):
        derainer = Derainer(net, rep, make_process(cfg, rep),
                            sample_settings(cfg, sample_batch=3, **settings), "cuda")
        derainer.derain_on_device(rain, seed=0)  # the first call also uploads the window weight
        with Transfers() as seen, torch.autocast("cuda", dtype=torch.bfloat16):
            out = derainer.derain_on_device(rain, seed=1)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert tuple(out.shape) == (3, 37, 29)
    assert seen.to_device == [(3, 37, 29)]  # the image, once; nothing else crosses
    assert seen.to_host == [] and seen.reads == 0


def test_the_harness_catches_a_cpu_tensor_or_a_copy_in_the_hot_path(monkeypatch):
    # the harness must be able to fail: a CPU tensor in the network, and statistics copied
    # from the host at every call (what the representation did before its buffers)
    cfg = _cfg()
    rep = _representation(cfg)
    net, batch = build_network(cfg, rep), _batch(rep)
    real_forward = type(net.trunk).forward

    def planted(self, x, t, cond=None):
        return real_forward(self, x, t, cond) * torch.ones(1, 3, 1, 1)  # a CPU tensor
    with fake_cuda(monkeypatch, rep, net):
        loss_fn = make_loss(cfg, make_process(cfg, rep), rep)
        on_device = {k: v if k == "position" else v.to("cuda") for k, v in batch.items()}
        monkeypatch.setattr(type(net.trunk), "forward", planted)
        with pytest.raises(FakeTensorDeviceMismatchError):
            loss_fn(net, on_device)
        monkeypatch.setattr(type(net.trunk), "forward", real_forward)

        def from_host(like, role):  # the old _range: numpy -> the device, every call
            lo, hi = rep.ranges[role]
            return (torch.as_tensor(lo, dtype=like.dtype, device=like.device),
                    torch.as_tensor(hi, dtype=like.dtype, device=like.device))
        monkeypatch.setattr(rep, "_range", from_host)
        with Transfers() as seen:
            loss_fn(net, on_device)
    assert len(seen.to_device) >= 4


# ===================================================================== host reads
def _counting_numpy(monkeypatch):
    """Count tensors made from NumPy arrays (torch.from_numpy / as_tensor / tensor)."""
    made = []
    for name in ("from_numpy", "as_tensor", "tensor"):
        real = getattr(torch, name)

        def wrapped(data, *a, _real=real, **k):
            if isinstance(data, np.ndarray):
                made.append(data.shape)
            return _real(data, *a, **k)
        monkeypatch.setattr(torch, name, wrapped)
    return made


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), n=6, size=(24, 28))


def _trainer(pairs, run_dir, *extra):
    args = ["--csv", str(pairs), "--val-csv", str(pairs), "--crop", "16", "--model-args",
            json.dumps(tiny_model_args()), "--batch-size", "4", "--num-workers", "0", "--run-dir",
            str(run_dir), "--eval-points", "0", "--final-eval", "false", "--minutes", "0",
            "--warmup-steps", "2", "--threads", "1", "--ckpt-every", "0", *extra]
    cfg, _ = D.resolve_config(args)
    return D.setup(cfg, Distributed("cpu"), log=lambda m: None)


@pytest.mark.parametrize("extra", [[], ["--grad-clip", "0", "--psnr-floor", "1e-3"]],
                         ids=["default", "no_clip_floor"])
def test_the_training_step_reads_nothing_back_and_makes_nothing_from_numpy(pairs, tmp_path,
                                                                         monkeypatch, extra):
    trainer = _trainer(pairs, tmp_path / "step", "--grad-accum", "2", *extra)
    stream = iter(get_data_batches(trainer, 12))  # loaded first: the step alone is counted
    made = _counting_numpy(monkeypatch)
    with Transfers() as seen:
        for _ in range(6):
            loss, gnorm, skipped, _ = trainer.step_fn(stream)
    assert seen.reads == 0 and made == []
    assert torch.isfinite(loss) and not skipped  # (read after counting)


def get_data_batches(trainer, n):
    stream = iter(get_data(trainer.cfg, trainer.parts.rep, train=True, seed=0))
    return [next(stream) for _ in range(n)]


def test_the_training_loop_reads_the_device_only_at_log_points(pairs, tmp_path):
    trainer = _trainer(pairs, tmp_path / "loop", "--max-steps", "20", "--log-every", "5")
    with Transfers() as seen:
        assert trainer.train() == 0
    # log points at steps 1, 5, 10, 15, 20 read one stacked tensor each (tolist, not counted
    # here on the CPU); a step read back once would count 20 or more
    assert seen.reads <= 2
    log = [json.loads(line) for line in (tmp_path / "loop" / "log.jsonl").read_text()
           .splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 5, 10, 15, 20]


# ===================================================================== devices and resume
@pytest.fixture
def one_gpu(monkeypatch):
    """torch.cuda reporting GPUs (as many as the test says), recording set_device."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return calls


def test_auto_resolves_to_an_indexed_cuda_device(one_gpu, monkeypatch):
    env = Distributed("auto")
    assert env.device == torch.device("cuda", 0) and not env.ddp
    assert len(one_gpu) == 1 and torch.device(one_gpu[0]).index == 0  # set_device(cuda:0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0", ddp=True) == torch.device("cuda", 1)  # each rank its own
    with pytest.raises(DeviceError, match="GPU 5"):
        resolve_device("cuda:5")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("gpu")


def test_cuda_without_cuda_is_one_line_and_exit_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(image)
    for cmd in (["ddpm_conditional.py", "--device", "cuda", "--run-dir", str(tmp_path / "r")],
                ["derain.py", "--device", "cuda", "--ckpt", str(tmp_path / "none.pt"),
                 str(image), "--out", str(tmp_path / "o")],
                ["bench.py", "--device", "cuda", "--models", "small"],
                ["ablate.py", "--device", "cuda", "--study", str(tmp_path / "s"),
                 "--variants", "pixel"]):
        r = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, (cmd, r.stderr)
        assert "CUDA is not available" in lines[-1] and "Traceback" not in r.stderr, cmd
        assert len([ln for ln in lines if "error" in ln]) == 1, (cmd, r.stderr)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_on_a_device_keeps_the_rng_states_on_the_cpu(pairs, tmp_path):
    # a checkpoint read for a run on a non-CPU device (meta here, which needs no GPU): the
    # weights and optimiser state go there, the RNG states stay on the CPU where set_rng_state
    # needs them (loading to the device made every resume on a GPU fail)
    run_dir = tmp_path / "run"
    trainer = _trainer(pairs, run_dir, "--max-steps", "2")
    assert trainer.train() == 0
    saved = C.load_checkpoint(C.ckpt_paths(run_dir)[-1])
    torch.manual_seed(123)  # something else than the saved state
    cfg = {**json.loads((run_dir / "config.json").read_text()), "resume": "auto"}
    env = Distributed("cpu")
    env.device = torch.device("meta")
    parts = Parts(cfg, env)
    resumed = D.Trainer(cfg, env, parts, log=lambda m: None)
    assert resumed.step == 2
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])
    assert next(parts.model.parameters()).device.type == "meta"
    state = parts.opt.state_dict()["state"]
    assert state and all(s["exp_avg"].device.type == "meta" for s in state.values())
    assert next(parts.ema.module.parameters()).device.type == "meta"
