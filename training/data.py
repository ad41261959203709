"""The data a training run reads: the pairs CSVs of its preset and the normalisation statistics
of its representation settings, made on first use under data/presets/ and reused afterwards.

    cfg = data_paths(cfg)                 # where they are (absolute paths); no I/O
    cfg = prepare_data(cfg, log)          # the same, after making whatever is missing
    rep = make_representation(cfg)        # the representation with its statistics
    portable(cfg)                         # paths relative to the repository (config.json,
                                          # --dry-run)
Paths given as flags are relative to the working directory.
"""
from pathlib import Path

import representations
from helpers.errors import PairsError
from helpers.pairs import background_number, find_pairs, write_pairs_csv
from representations.statistics import compute_statistics, load_statistics, save_statistics

REPO = Path(__file__).resolve().parents[1]
# (shared sets, last training number): numbers 1-50 train, 51-60 validate. Rain100L and Rain100H
# share their backgrounds by number, so one split by number serves both.
PRESET_SPLITS = {"rain100l": (("Rain100L",), 50), "rain100h": (("Rain100H",), 50),
                 "rain100": (("Rain100L", "Rain100H"), 50)}


PATH_KEYS = ("csv", "val_csv", "stats")


def portable(cfg):
    """cfg with its data paths relative to the repository where they lie inside it, so a
    config.json stays valid when the repository moves."""
    out = dict(cfg)
    for key in PATH_KEYS:
        if out[key]:
            try:
                out[key] = str(Path(out[key]).resolve().relative_to(REPO))
            except ValueError:
                pass
    return out


def preset_dir(preset):
    return REPO / "data" / "presets" / preset


def stats_path(cfg):
    """Where the statistics of cfg's training CSV and representation settings live."""
    stem = Path(cfg["csv"]).with_suffix("")
    linear = "" if cfg["signed_log"] else "_linear"
    opts = "".join(f"_{k}{v}" for k, v in representations.options_of(cfg).items())
    return f"{stem}_stats_{cfg['representation']}{linear}{opts}_{cfg['crop']}.json"


def data_paths(cfg):
    """cfg with the CSV and statistics paths it will use (a preset's under data/presets/), as
    absolute paths. Reads and writes nothing."""
    cfg = dict(cfg)
    if not cfg["csv"] and (cfg["preset"] == "synthetic" or cfg["preset"] in PRESET_SPLITS):
        out = preset_dir(cfg["preset"])
        cfg["csv"], cfg["val_csv"] = str(out / "train.csv"), str(out / "val.csv")
    for key in PATH_KEYS:
        if cfg[key]:
            cfg[key] = str(Path(cfg[key]).resolve())
    if cfg["csv"] and not cfg["stats"] and \
            representations.get_class(cfg["representation"]).needs_statistics:
        cfg["stats"] = stats_path(cfg)
    return cfg


def _make_synthetic():
    """The embedded default set (helpers/synth_rain.py) and its CSVs; a rebuilt set gets fresh
    CSVs and loses its old statistics."""
    from helpers.synth_rain import build_default
    info = build_default(REPO / "data" / "synthetic")
    out = preset_dir("synthetic")
    for split in ("train", "val"):
        csv = out / f"{split}.csv"
        if info["built"] or not csv.exists():
            write_pairs_csv(find_pairs(Path(info[split])), csv)
            if info["built"]:
                for old in out.glob(f"{split}_stats_*"):
                    old.unlink()


def _make_split(preset, data_root):
    """The CSVs of a preset over the shared sets, split by background number; one validation
    CSV per set as well when the preset mixes sets (val_Rain100L.csv, ...), so that each set is
    scored on its own."""
    names, n_train = PRESET_SPLITS[preset]
    out = preset_dir(preset)
    wanted = [out / "train.csv", out / "val.csv"] + \
        ([out / f"val_{name}.csv" for name in names] if len(names) > 1 else [])
    if all(f.exists() for f in wanted):
        return
    train, val = [], {}
    for name in names:
        src = (REPO / data_root / name).resolve()
        if not src.is_dir():
            raise PairsError(f"{src} not found: the {preset} preset reads the shared data in place "
                             f"(set --data-root to the folder holding {name}/)")
        pairs = find_pairs(src)
        train += [p for p in pairs if background_number(p.clean_id) <= n_train]
        val[name] = [p for p in pairs if background_number(p.clean_id) > n_train]
    write_pairs_csv(train, out / "train.csv", absolute=True)
    write_pairs_csv([p for name in names for p in val[name]], out / "val.csv", absolute=True)
    if len(names) > 1:
        for name in names:
            write_pairs_csv(val[name], out / f"val_{name}.csv", absolute=True)


def prepare_data(cfg, log=print):
    """data_paths(cfg), after making what is missing: the preset's CSVs, the statistics."""
    if not cfg["csv"]:
        if cfg["preset"] == "synthetic":
            _make_synthetic()
        elif cfg["preset"] in PRESET_SPLITS:
            _make_split(cfg["preset"], cfg["data_root"])
    cfg = data_paths(cfg)
    if not cfg["csv"]:
        raise PairsError("no training CSV: give --csv PAIRS.csv (see preprocess_csv.py) or a "
                         "--preset")
    if cfg["stats"] and not Path(cfg["stats"]).exists():
        log(f"computing statistics of {cfg['csv']} -> {cfg['stats']}")
        stats, freq, errors = compute_statistics(
            cfg["csv"], cfg["representation"], cfg["crop"], cfg["signed_log"],
            max(1, cfg["num_workers"]), representations.options_of(cfg))
        for e in errors:
            log(f"skipped: {e}")
        save_statistics(stats, freq, cfg["stats"])
    return cfg


def make_representation(cfg):
    """The representation of a resolved config, with its statistics when it needs them."""
    stats = None
    if representations.get_class(cfg["representation"]).needs_statistics:
        stats = load_statistics(cfg["stats"])
    return representations.from_config(cfg, stats)
