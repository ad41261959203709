"""tools/gpu_session.sh, the prepared call for a lent GPU, up to where it needs one: `pack` copies
the data it carries, `run` rebuilds Rain100H's clean images from Rain100L's and refuses to start
without the kit. Its phases themselves need CUDA (and run on the CPU only slowly), so here it runs
with no phases, or with a stand-in for ablate.py; and every variant its study phase trains by
default has a step time in the reference calibration file."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ablate
from tests.conftest import REPO


def _script_in(tmp_path):
    (tmp_path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "gpu_session.sh", tmp_path / "tools")
    return tmp_path / "tools" / "gpu_session.sh"


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_run_without_the_kit_says_to_pack_it(tmp_path):
    script = _script_in(tmp_path)
    r = subprocess.run(["bash", str(script), "run"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PHASES": "", "OUT": str(tmp_path / "out")})
    assert r.returncode == 2
    assert "gpu_kit/data: no data" in r.stdout and "gpu_session.sh pack" in r.stdout


def test_pack_then_run_rebuilds_the_heavy_sets_clean_images(tmp_path):
    script = _script_in(tmp_path)
    rng = np.random.default_rng(0)
    src = tmp_path / "shared"
    clean = {n: rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for n in (1, 2)}
    for n, img in clean.items():
        _png(src / "Rain100L" / "target" / f"rain-{n:03d}.png", img)
        _png(src / "Rain100L" / "input" / f"rain-{n:03d}.png", img // 2)
    # Rain100H: the top-left crops (one landscape, one portrait), with heavier rain
    _png(src / "Rain100H" / "input" / "1.png", clean[1][:30, :50] // 3)
    _png(src / "Rain100H" / "input" / "2.png", clean[2][:40, :20] // 3)
    r = subprocess.run(["bash", str(script), "pack", str(src)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kit = tmp_path / "gpu_kit" / "data"
    assert sorted(p.name for p in (kit / "Rain100L" / "target").iterdir()) == \
        ["rain-001.png", "rain-002.png"]
    assert not (kit / "Rain100H" / "target").exists()  # not carried: rebuilt there

    env = {"PATH": "/usr/bin:/bin", "PHASES": "", "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(script), "run"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rebuilt 2 Rain100H targets" in (tmp_path / "out" / "gpu_session.log").read_text()
    for name, want in (("1.png", clean[1][:30, :50]), ("2.png", clean[2][:40, :20])):
        got = np.asarray(Image.open(kit / "Rain100H" / "target" / name))
        assert np.array_equal(got, want)


@pytest.mark.parametrize("steps", ["", "20809"])
def test_the_study_phase_trains_equal_steps_when_steps_is_set(tmp_path, steps):
    # a stand-in interpreter records what ablate.py would be asked and runs everything else
    script = _script_in(tmp_path)
    _png(tmp_path / "gpu_kit" / "data" / "Rain100L" / "target" / "rain-001.png",
         np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "gpu_kit" / "data" / "Rain100H" / "input" / "1.png",
         np.zeros((4, 4, 3), np.uint8))
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\nif [ "$1" = ablate.py ]; then echo "$@" > '
                    f'{tmp_path / "ablate_args"}; exit 0; fi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PHASES": "study", "OUT": str(tmp_path / "out"),
           "PYTHON": str(fake), "STEPS": steps, "MINUTES": "120"}
    r = subprocess.run(["bash", str(script), "run"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    args = (tmp_path / "ablate_args").read_text().split()
    if steps:
        assert args[args.index("--steps") + 1] == "20809"
        assert "--calibration" not in args and "--minutes" not in args
    else:
        assert args[args.index("--minutes") + 1] == "120" and "--steps" not in args
        assert args[args.index("--calibration") + 1] == "tools/calibration_2026-12-01.json"
    assert "study rc=0" in (tmp_path / "out" / "phases.txt").read_text()


def test_every_default_variant_of_the_study_phase_has_a_reference_step_time():
    # without STEPS the study phase takes each variant's step count from the reference
    # calibration file, and ablate.py stops before training anything when one is missing there
    import json
    import re

    import ablate
    text = (REPO / "tools" / "gpu_session.sh").read_text()
    default = re.search(r"VARIANTS=\$\{VARIANTS:-([^}]*)\}", text).group(1).split(",")
    assert "trunk_bridge_end90_naf_own_skip_psnr" in default  # the launch() default is there
    reference = json.loads(ablate.REFERENCE_CALIBRATION.read_text())
    missing = [v for v in default
               if ablate.VARIANTS[v].get("train_as", v) not in reference]
    assert missing == []
