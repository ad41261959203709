#!/bin/bash
# Train on Great Lakes (University of Michigan) with Slurm:
#
#   sbatch train.sh                                   # 1 GPU, preset rain100l
#   sbatch train.sh --model large --max-steps 200000 --minutes 0     # flags for the training
#   PRESET=rain100h sbatch train.sh --model-args '{"base_channels": 64}'
#   sbatch --nodes=2 --gres=gpu:2 --time=24:00:00 train.sh     # 2 nodes x 2 GPUs, DDP
#
# Every #SBATCH line can be overridden on the sbatch command line; the variables below by the
# environment; arguments after train.sh go to ddpm_conditional.py unchanged (EXTRA, the older
# way, is split like a shell command line, quotes respected). About 5 minutes before the time
# limit Slurm sends USR1 to this script, which asks the training to checkpoint (a STOP file in
# the run directory), waits for it, and requeues the job; the requeued job resumes from the
# latest checkpoint of the same run directory. The job's exit status is the training's (0 done,
# 3 stopped and requeued, see ddpm_conditional.py for the others). Logs go to logs/ in the
# directory sbatch was run from (the repository keeps an empty logs/ so that Slurm, which opens
# the file before this script runs, finds the folder).
#SBATCH --job-name=fft-derain
#SBATCH --account=eecs556w25_class
#SBATCH --partition=spgpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=40G
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -uo pipefail

PRESET=${PRESET:-rain100l}                  # synthetic | rain100l | rain100h | custom
RUN_DIR=${RUN_DIR:-runs/${PRESET}-${SLURM_JOB_ID:-local}}  # same dir after a requeue: resumes
CONFIG=${CONFIG:-}                          # optional --config file (JSON or YAML)
EXTRA=${EXTRA:-}                            # more flags for ddpm_conditional.py (or after
                                            # train.sh on the sbatch line)
VENV=${VENV:-.venv}                         # virtual environment with requirements.txt
MODULES=${MODULES:-}                        # e.g. "python/3.11 cuda" to `module load` first
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"
mkdir -p logs "$RUN_DIR"
[ -n "$MODULES" ] && module load $MODULES
[ -f "$VENV/bin/activate" ] && source "$VENV/bin/activate"
rm -f "$RUN_DIR/STOP" "$RUN_DIR/exit_status"  # left by the previous (pre-empted) attempt

MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1)
MASTER_ADDR=${MASTER_ADDR:-localhost}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-8} / GPUS_PER_NODE ))}

REQUEUE=0
on_usr1() {
    echo "$(date): time limit near: asking the training to checkpoint and stop"
    REQUEUE=1
    touch "$RUN_DIR/STOP"
}
trap on_usr1 USR1

ARGS=(--preset "$PRESET" --run-dir "$RUN_DIR" --resume)
[ -n "$CONFIG" ] && ARGS+=(--config "$CONFIG")
eval "EXTRA_ARGS=($EXTRA)"                  # quotes in EXTRA keep a JSON value in one piece
ARGS+=("${EXTRA_ARGS[@]}" "$@")
echo "$(date): job ${SLURM_JOB_ID:-?} on ${SLURM_NNODES:-1} node(s) x $GPUS_PER_NODE GPU(s), run dir $RUN_DIR"

# one torchrun per node; the c10d rendezvous on the first node joins them (--nodes=2 works)
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \
    torchrun --nnodes="${SLURM_NNODES:-1}" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="${SLURM_JOB_ID:-0}" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    ddpm_conditional.py "${ARGS[@]}" &
PID=$!
# `wait` returns early when USR1 arrives; keep waiting until the training has checkpointed
while true; do
    wait $PID
    STATUS=$?
    kill -0 $PID 2>/dev/null || break
done
# torchrun turns any failure of its processes into status 1: the training's own status is in
# the run directory (absent if it died before writing it, e.g. killed for memory)
[ -f "$RUN_DIR/exit_status" ] && STATUS=$(cat "$RUN_DIR/exit_status")
echo "$(date): training exited with status $STATUS"
if [ "$REQUEUE" = 1 ] && [ "$STATUS" = 3 ]; then  # it stopped early at our request
    rm -f "$RUN_DIR/STOP"
    echo "requeueing job $SLURM_JOB_ID; it will resume from $RUN_DIR"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit $STATUS
