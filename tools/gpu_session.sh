#!/bin/bash
# A lent GPU's session as one prepared call (../shared/GPU.md; README "Tests and GPU status").
# Device time is short (15 minutes a session, machine start included), so everything runs from
# one command, each phase under its own time limit, and whatever finished comes back in $OUT.
#
#   bash tools/gpu_session.sh pack [DATA]     # here: Rain100L and Rain100H's rainy inputs into
#                                             # gpu_kit/ (ignored; 48 MB, under the 64 MiB carry)
#   device run: command "bash tools/gpu_session.sh run", carry ["gpu_kit"], timeout_s 580
#
# Rain100H's clean images are the top-left crops of Rain100L's (../shared/data/README.md; checked
# pixel for pixel for pairs 1-60), so `run` rebuilds them there instead of carrying them.
# Phases, in this order (GPU.md's list first, then issue 19's equal-compute table); PHASES picks
# some, so a session can split them over two calls:
#   env      nvidia-smi, torch and its CUDA
#   smoke    30 training steps on CUDA (rain100 preset), resume to 40, derain and score 2 pairs
#   suite    python -m pytest -q -x with CUDA visible (DERAIN_DATA: the kit)
#   bench    bench.py for small, default and large at batch 64 and 256 (bf16), large compiled,
#            small and default at 64 with clean states (what the default's own states cost)
#   study    ablate.py at the 2026-12-01 machine's step counts (--calibration) for $MINUTES
#            CPU-minutes, $LANES jobs at once on the GPU: $VARIANTS, seeds $SEEDS, 1 and 4 steps;
#            with STEPS set, every variant trains STEPS steps instead (equal steps: that file
#            charges the Fourier state's FFTs 10-14 % of a step that later timings put at about
#            nothing, STUDY.md, eighth session, so a Fourier variant and its pixel twin are
#            compared fairly at the twin's count, e.g. STEPS=20809 for 120 minutes)
#   derain   bench_sampling.py on 5 Rain100L pairs with the study's first variant's checkpoint
# Environment: PHASES ("env smoke suite bench study derain"), DEVICE (cuda), MINUTES (35),
# STEPS (unset), SEEDS (0), LANES (8), VARIANTS, PYTHON (python3), OUT (gpu_out; the device
# tool sets it), and each phase's limit LIMIT_<PHASE> in seconds. The log: $OUT/gpu_session.log, $OUT/phases.txt.
set -u
cd "$(dirname "$0")/.."
mode=${1:-run}
KIT=gpu_kit
if [ "$mode" = pack ]; then
    SRC=${2:-../shared/data}
    rm -rf "$KIT"
    mkdir -p "$KIT/data/Rain100L" "$KIT/data/Rain100H"
    cp -r "$SRC/Rain100L/input" "$SRC/Rain100L/target" "$KIT/data/Rain100L/" &&
        cp -r "$SRC/Rain100H/input" "$KIT/data/Rain100H/" || exit 1
    du -sh "$KIT"
    exit 0
fi
export OUT=${OUT:-gpu_out}
export PY=${PYTHON:-python3}
export DEVICE=${DEVICE:-cuda}
export MINUTES=${MINUTES:-35}
export STEPS=${STEPS:-}
export SEEDS=${SEEDS:-0}
export LANES=${LANES:-8}
# the default (own states + skip, PSNR loss), the default before it (clean states, x0), its
# pixel twin, the 2x2 table's FFT cells with those levers, the regression references with
# that loss (and the Fourier regression); issue 19's 2x2 table with the NAF trunk ({Fourier,
# pixels} x {spatial, + Res-FFT}), regression, the frequency loss in either state, the skip
# parametrisation, and the U-Net-trunk pair of the earlier tables (all with the image MSE)
export VARIANTS=${VARIANTS:-trunk_bridge_end90_naf_own_skip_psnr,trunk_bridge_end90_naf_psnr,pixel_bridge_end90_naf_psnr,trunk_bridge_end90_naf_fft_own_skip_psnr,pixel_bridge_end90_naf_fft_psnr,naf_regression_psnr,trunk_regression_naf_psnr,trunk_bridge_end90_naf,pixel_bridge_end90_naf,trunk_bridge_end90_naf_fft,pixel_bridge_end90_naf_fft,naf_regression,trunk_bridge_end90_naf_fftloss,pixel_bridge_end90_naf_fftloss,trunk_bridge_end90_naf_skip,trunk_bridge_end90,pixel_bridge_end90}
export DATA=$KIT/data
export WORK=runs/gpu_session
export PHASES=${PHASES-env smoke suite bench study derain}
export LOG=$OUT/gpu_session.log
export PYTHONUNBUFFERED=1

latest() {  # the last checkpoint of a run directory (empty if none)
    "$PY" -c "import checkpoint, sys; print(checkpoint.latest_checkpoint(sys.argv[1]) or '')" "$1"
}

if [ "$mode" = _smoke ]; then  # the smoke phase (run calls it under its time limit)
    R=$WORK/smoke
    rm -rf "$R" "$WORK/pairs" "$WORK/derained"
    train() {
        "$PY" ddpm_conditional.py --preset rain100 --data-root "$DATA" --device "$DEVICE" \
            --run-dir "$R" --minutes 0 --eval-every 0 --eval-points 0 --final-eval false \
            --log-every 10 "$@"
    }
    train --max-steps 30 --ckpt-every 30 &&
        train --max-steps 40 --ckpt-every 10 --resume auto || exit 1
    mkdir -p "$WORK/pairs" && cp "$DATA"/Rain100L/input/rain-05[12].png "$WORK/pairs/" || exit 1
    "$PY" derain.py "$WORK/pairs" --ckpt "$(latest "$R")" --device "$DEVICE" \
        --out "$WORK/derained" --eval "$DATA/Rain100L/target" --quiet
    exit $?
fi
[ "$mode" = run ] || { echo "usage: $0 pack [DATA] | run" >&2; exit 2; }
mkdir -p "$OUT" "$WORK"  # a second call (other PHASES) resumes the study

phase() {  # NAME LIMIT_S CMD...: run with a time limit, the output to the log
    local name=$1 limit=$2 rc
    shift 2
    echo "=== $(date +%T) $name (limit ${limit} s): $*" >> "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    echo "=== $(date +%T) $name rc=$rc" >> "$LOG"
    echo "$name rc=$rc" >> "$OUT/phases.txt"
    return $rc
}

if [ ! -d "$DATA/Rain100L/target" ] || [ ! -d "$DATA/Rain100H/input" ]; then
    echo "$DATA: no data; run 'bash tools/gpu_session.sh pack' here and carry $KIT" | tee "$LOG"
    exit 2
fi
mkdir -p "$DATA/Rain100H/target"
"$PY" - "$DATA" <<'EOF' >> "$LOG" 2>&1 || exit 1
import sys
from pathlib import Path

from PIL import Image

data = Path(sys.argv[1])
for rain in sorted((data / "Rain100H" / "input").glob("*.png")):
    n = int(rain.stem)
    with Image.open(rain) as r, Image.open(data / "Rain100L" / "target" / f"rain-{n:03d}.png") as c:
        c.crop((0, 0, *r.size)).save(data / "Rain100H" / "target" / rain.name)
print("rebuilt", len(list((data / "Rain100H" / "target").glob("*.png"))), "Rain100H targets")
EOF

want() { [[ " $PHASES " == *" $1 "* ]]; }

want env && phase env 60 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"

want smoke && phase smoke "${LIMIT_SMOKE:-150}" bash "$0" _smoke

want suite && phase suite "${LIMIT_SUITE:-240}" env DERAIN_DATA="$DATA" "$PY" -m pytest -q -x \
    -p no:cacheprovider

want bench && phase bench "${LIMIT_BENCH:-150}" bash -c "
    $PY bench.py --device $DEVICE --models small,default,large --batch 64 --size 64 --amp bf16 &&
    $PY bench.py --device $DEVICE --models small,default,large --batch 256 --size 64 --amp bf16 &&
    $PY bench.py --device $DEVICE --models large --batch 256 --size 64 --amp bf16 --compile &&
    $PY bench.py --device $DEVICE --models small,default --batch 64 --size 64 --amp bf16 \
        --bridge-states clean"

if want study; then
    if [ -n "$STEPS" ]; then
        budget=(--steps "$STEPS")
    else
        budget=(--calibration tools/calibration_2026-12-01.json --minutes "$MINUTES")
    fi
    phase study "${LIMIT_STUDY:-240}" "$PY" ablate.py --study "$WORK/study" "${budget[@]}" \
        --seeds "$SEEDS" \
        --variants "$VARIANTS" --eval-steps 1,4 --lanes "$LANES" --threads 2 \
        --device "$DEVICE" --data-root "$DATA"
    for f in results.csv scores.csv calibration.json; do
        [ -f "$WORK/study/$f" ] && cp "$WORK/study/$f" "$OUT/study_$f"
    done
fi

if want derain && CKPT=$(latest "$WORK/study/${VARIANTS%%,*}/seed${SEEDS%%,*}") &&
        [ -n "$CKPT" ]; then
    phase derain "${LIMIT_DERAIN:-60}" "$PY" bench_sampling.py --ckpt "$CKPT" \
        --csv data/presets/rain100/val_Rain100L.csv --limit 5 --settings ddim:1,ddim:4 \
        --device "$DEVICE" --out "$OUT/derain_speed.json"
fi
tail -n 60 "$LOG"
