"""The resolved configuration: launch()'s defaults < a preset < a --config file (JSON or YAML) <
--key value flags, every flag generated from launch() with its comment as the help text. The
choices of a key come from the registry that defines them (CHOICES), never typed twice."""
import argparse
import inspect
import json
import re
from pathlib import Path

import representations
from diffusion import PREDICTIONS, PROCESSES, SAMPLERS, SCHEDULES, Bridge
from helpers.errors import ConfigError
from losses import LOSSES
from modules import MODEL_PRESETS, NETWORKS, X0_NETWORKS
from sampling import FLIP_COUNTS
from training.parts import AMP

# Keys whose value must be one of a list, from the registries (the presets are the caller's).
CHOICES = {"representation": representations.names(), "target": representations.TARGETS,
           "norm": representations.NORMS, "schedule": SCHEDULES, "prediction": PREDICTIONS,
           "loss": tuple(LOSSES), "network": tuple(NETWORKS), "process": PROCESSES,
           "model": tuple(MODEL_PRESETS), "sampler": SAMPLERS, "amp": tuple(AMP),
           "bridge_states": Bridge.STATES}


def parse_value(text, default):
    """A flag's text as the type of its launch() default."""
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, (dict, list)):
        return json.loads(text)
    return text


def load_config_file(path):
    """A JSON or YAML mapping of overrides; ConfigError names the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            if str(path).endswith((".yaml", ".yml")):
                import yaml
                data = yaml.safe_load(f) or {}
            else:
                data = json.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from e
    except ValueError as e:  # JSONDecodeError; yaml's errors are not ValueErrors
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    except Exception as e:  # noqa: BLE001  (yaml.YAMLError, without importing yaml up front)
        if type(e).__module__.startswith("yaml"):
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        raise
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys to values")
    return data


def launch_comments(launch):
    """{key: its comment in launch()} (continuation lines joined): the --help text, written
    once beside the default it explains."""
    comments, key = {}, None
    for line in inspect.getsource(launch).splitlines():
        m = re.match(r"\s*(\w+)=.*?#\s?(.*)$", line)
        if m:
            key = m.group(1)
            comments[key] = m.group(2).strip()
        elif key and re.match(r"\s*#\s?(.*)$", line) and not line.strip().startswith("# ----"):
            comments[key] += " " + re.match(r"\s*#\s?(.*)$", line).group(1).strip()
        else:
            key = None
    return comments


def resolve_config(argv, launch, presets, description=""):
    """launch() < presets[preset] < --config file < --key value. Returns (config, dry_run)."""
    cfg = launch()
    choices = {**CHOICES, "preset": tuple(presets)}
    ap = argparse.ArgumentParser(
        description=description, allow_abbrev=False,
        epilog="Every flag is a key of launch() (its comment above, its default in brackets); a "
               "preset, then --config, then the flags override the defaults. Presets: "
               + ", ".join(f"{k} ({', '.join(f'{a}={b}' for a, b in v.items()) or 'launch()'})"
                           for k, v in presets.items()))
    ap.add_argument("--config", help="JSON or YAML file of overrides")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the resolved config (with the data paths a preset will use) and "
                         "exit")
    comments = launch_comments(launch)
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        text = f"{comments.get(key, '')} [{json.dumps(value)}]".replace("%", "%%")
        if key == "resume":
            ap.add_argument(flag, nargs="?", const="auto", default=None, help=text)
        else:
            kind = "BOOL" if isinstance(value, bool) else "JSON" if isinstance(value, (dict, list)) \
                else type(value).__name__.upper()
            ap.add_argument(flag, dest=key, default=None, help=text, choices=choices.get(key),
                            metavar=None if key in choices else kind)
    args = ap.parse_args(argv)
    try:
        file_cfg = load_config_file(args.config) if args.config else {}
    except ConfigError as e:
        ap.error(str(e))
    given = {k: v for k, v in vars(args).items() if k in cfg and v is not None}
    preset = given.get("preset", file_cfg.get("preset", cfg["preset"]))
    if preset not in presets:
        ap.error(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    cfg.update(presets[preset])
    unknown = sorted(set(file_cfg) - set(cfg))
    if unknown:
        ap.error(f"{args.config}: unknown key(s) {unknown}; see launch() for the keys")
    cfg.update(file_cfg)
    defaults = launch()
    for key, text in given.items():
        try:
            cfg[key] = parse_value(text, defaults[key]) if isinstance(text, str) else text
        except ValueError as e:
            ap.error(f"--{key.replace('_', '-')}: {e}")
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            ap.error(f"--{key.replace('_', '-')} {cfg[key]!r}: choose one of {', '.join(allowed)}")
    if cfg["network"] in X0_NETWORKS and cfg["process"] == "diffusion" and \
            cfg["prediction"] != "x0":
        ap.error(f"--network {cfg['network']} outputs an x0 estimate: use --prediction x0 (or "
                 "--process bridge / regression)")
    if cfg["flips"] not in FLIP_COUNTS:
        ap.error(f"--flips {cfg['flips']}: choose one of {', '.join(map(str, FLIP_COUNTS))}")
    if not 0.0 <= cfg["adam_beta2"] < 1.0:
        ap.error(f"--adam-beta2 {cfg['adam_beta2']}: AdamW's second-moment decay lies in [0, 1)")
    if cfg["csv"] and preset == "synthetic" and "preset" not in given \
            and "preset" not in file_cfg:
        cfg["preset"] = "custom"
    if not cfg["run_dir"]:
        domain = representations.get_class(cfg["representation"]).domain
        cfg["run_dir"] = str(Path("runs") / f"{cfg['preset']}-{domain}")
    return cfg, args.dry_run
