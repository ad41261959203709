"""Every setting has one default, in launch(): the code reads each key of the resolved config
without a fallback, so a config that lacks a key fails with a KeyError naming it instead of
quietly using a second default somewhere else."""
import ast
import json

import pytest
import torch

import ddpm_conditional as D
from tests.conftest import REPO
from tests.helpers_data import make_pairs, tiny_model_args
from tests.test_layers import project_modules
from training.distributed import Distributed



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    csv = make_pairs(root / "pairs", n=2, size=(20, 24))
    shared = root / "shared"  # a stand-in for ../shared/data, for the rain100l preset
    make_pairs(shared / "Rain100L", n=2, size=(20, 24))
    return {"csv": str(csv), "shared": str(shared), "root": root}


def _config(tiny, name, **variant):
    """launch()'s config with a tiny data set, model and run (one step, a derain of the two
    pairs), then the variant's settings."""
    cfg = {**D.launch(), "csv": tiny["csv"], "val_csv": tiny["csv"], "crop": 16,
           "batch_size": 2, "num_workers": 0, "minutes": 0.0,
           "max_steps": 1, "eval_points": 1, "threads": 1, "device": "cpu",
           "run_dir": str(tiny["root"] / "runs" / name), "ckpt_every": 1, "log_every": 1}
    cfg.update(variant)
    cfg["model_args"] = tiny_model_args(cfg["network"])
    return cfg


# Each key is read under at least one of these (the first being launch()'s own levers).
VARIANTS = {
    "default": {},
    "diffusion": {"process": "diffusion", "network": "unet", "prediction": "v",
                  "freq_schedule": 0.5, "sampler": "ddim", "sample_steps": 2, "eta": 0.5},
    "mix": {"loss": "mix", "bridge_param": "x0"},  # mix compares the output with x0
    "blockdct": {"representation": "blockdct", "block": 8, "network": "unet"},
    "preset": {"preset": "rain100l", "csv": "", "val_csv": "", "final_eval": False},
}


def _run(cfg, tiny, monkeypatch):
    """What `python ddpm_conditional.py` does with a resolved config: its device, data, levers,
    one training step and the final derain and scores."""
    import training.data
    monkeypatch.setattr(training.data, "REPO", tiny["root"])  # a preset's files go there
    env = Distributed(cfg["device"])
    return D.run(cfg, env)


def test_a_config_without_any_one_key_fails_naming_it(tiny, monkeypatch):
    quiet = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: quiet.append(a))
    missing = {}
    for key in D.launch():
        for name, variant in VARIANTS.items():
            cfg = _config(tiny, name, **variant, data_root=tiny["shared"])
            del cfg[key]
            try:
                _run(cfg, tiny, monkeypatch)
            except KeyError as e:
                if key in str(e):
                    break
                missing[key] = f"KeyError for another key: {e}"
                break
        else:
            missing[key] = "ran without it: a default elsewhere, or a key nothing reads"
    assert missing == {}
    # and with every key, every variant runs (so the KeyErrors above are the missing keys')
    for name, variant in VARIANTS.items():
        cfg = _config(tiny, name, **variant, data_root=tiny["shared"])
        assert _run(cfg, tiny, monkeypatch) == 0, name


CONFIGS = ("cfg", "config", "defaults", "d", "s", "settings")  # what configs are called here


def test_no_module_reads_a_setting_with_a_fallback():
    # cfg.get("network", "unet") is a second default; the loop above only sees it when no other
    # reader of the key fails first, so read the code too
    keys = set(D.launch())
    found = []
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("get", "setdefault") and len(node.args) == 2 and \
                    isinstance(node.args[0], ast.Constant) and node.args[0].value in keys and \
                    ast.unparse(node.func.value).split(".")[-1] in CONFIGS:
                found.append(f"{name}:{node.lineno} .{node.func.attr}({node.args[0].value!r}, ...)")
    assert found == []


def test_choices_come_from_the_registries():
    import representations
    from diffusion import PREDICTIONS, PROCESSES, SAMPLERS, SCHEDULES, Bridge
    from losses import LOSSES
    from modules import MODEL_PRESETS, NETWORKS
    from training.config import CHOICES
    from training.parts import AMP
    assert CHOICES == {"representation": representations.names(),
                       "target": representations.TARGETS, "norm": representations.NORMS,
                       "schedule": SCHEDULES, "prediction": PREDICTIONS, "loss": tuple(LOSSES),
                       "network": tuple(NETWORKS), "process": PROCESSES,
                       "model": tuple(MODEL_PRESETS),
                       "sampler": SAMPLERS, "amp": tuple(AMP),
                       "bridge_states": Bridge.STATES}
    for key, allowed in CHOICES.items():
        assert D.launch()[key] in allowed, key
    text = json.dumps(D.launch())
    assert "REPLACE" not in text and torch  # (imports used)
