"""train.sh and the salloc workflow on a running one-node Slurm cluster (tests/slurm/cluster.sh).

They run when Slurm can be set up here (root; the packages installed or installable) and the
environment variable DERAIN_SLURM is 1; otherwise they are skipped with the reason:

    DERAIN_SLURM=1 python -m pytest -q tests/slurm        # about 6 minutes on 2 cores

The checks use a tiny model on a few synthetic pairs on the CPU and override train.sh's
Great Lakes settings on the sbatch line, as a user would (--gres, --cpus-per-task, --mem,
--time, --signal).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoint import ckpt_paths, load_checkpoint
from tests.conftest import REPO
from tests.helpers_data import make_pairs

HERE = Path(__file__).resolve().parent
TINY = json.dumps({"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
                   "attn_levels": [1], "attn_heads": 2, "groups": 4})
# no GPU, the CPUs of a 2-core machine, a small memory request, and an account the test
# cluster does not check; the rest of train.sh's #SBATCH lines stay as they are
CPU_NODE = ["--gres=none", "--cpus-per-task=2", "--mem=2G"]


def _skip_reason():
    if os.environ.get("DERAIN_SLURM") != "1":
        return "set DERAIN_SLURM=1 to run the Slurm tests (about 6 minutes; they start daemons)"
    if os.geteuid() != 0:
        return "the Slurm daemons need root"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available"
    return None


pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
              pytest.mark.timeout(1800)]  # a job waits for the cluster; pytest.ini says 600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(HERE / "cluster.sh"), "start", str(state)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        subprocess.run(["bash", str(HERE / "cluster.sh"), "stop", str(state)])
        pytest.fail(f"could not start the one-node cluster:\n{r.stdout}\n{r.stderr}")
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PYTHONUNBUFFERED": "1",
           "VENV": str(Path(sys.executable).parents[1])}
    yield env
    subprocess.run(["bash", str(HERE / "cluster.sh"), "stop", str(state)], timeout=120)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("slurm_data"), n=6, size=(24, 28))


def training_args(pairs, steps, *extra):
    return ["--csv", str(pairs), "--val-csv", str(pairs), "--crop", "16", "--model-args", TINY,
            "--batch-size", "4", "--num-workers", "0", "--minutes", "0", "--max-steps",
            str(steps), "--eval-every", "0", "--final-eval", "false", "--log-every", "10",
            "--warmup-steps", "1", "--threads", "1", *extra]


def sbatch(env, name, sbatch_opts, script_args, **extra_env):
    r = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", *CPU_NODE, *sbatch_opts,
                        str(REPO / "train.sh"), *script_args], cwd=REPO, capture_output=True,
                       text=True, env={**env, **extra_env}, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_info(env, job):
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                         env=env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(env, job, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=600,
             until=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(env, job)
        if info.get("JobState") in states or (until is not None and until(info)):
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} still {job_info(env, job).get('JobState')} after "
                         f"{timeout} s")


def log_of(name, job):
    """The job's log where train.sh puts it (logs/ of the submission directory)."""
    return REPO / "logs" / f"{name}-{job}.out"


def read_log(name, job):
    path = log_of(name, job)
    text = path.read_text(encoding="utf-8", errors="replace")  # progress bars cut mid-character
    path.unlink()  # the repository's logs/ stays empty
    return text


def reference_run(pairs, run_dir, steps, *extra):
    r = subprocess.run([sys.executable, str(REPO / "ddpm_conditional.py"), "--preset", "custom",
                        "--run-dir", str(run_dir), *training_args(pairs, steps, *extra)],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return load_checkpoint(ckpt_paths(run_dir)[-1])


def assert_same_weights(a, b, atol=1e-6):
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=1e-5, atol=atol, msg=f"{part} {k}")


def test_requeue_on_the_time_limit_resumes_to_the_same_weights(cluster, pairs, tmp_path):
    # a 1-minute limit with USR1 30 s before it: the job checkpoints, requeues itself and the
    # requeued job (same id, same run directory) resumes, until the run is done. The run's
    # budget is 45 s of training, more than one job can give it however fast the machine is
    # (at most 30 s less start-up), so it is requeued at least once on any machine; a constant
    # learning rate makes its weights those of a reference run of the same number of steps.
    name = "derain-requeue"
    run_dir = tmp_path / "run"
    constant = ["--ckpt-every", "100", "--lr-min-ratio", "1.0"]
    args = training_args(pairs, 0, *constant)
    args[args.index("--minutes") + 1] = "0.75"
    job = sbatch(cluster, name, ["--time=1", "--signal=B:USR1@30"], args, PRESET="custom",
                 RUN_DIR=str(run_dir))
    info = wait_for(cluster, job, timeout=900)
    log = read_log(name, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-3000:])
    assert int(info["Restarts"]) >= 1, log[-3000:]  # it was requeued at least once
    assert "requeueing job" in log and "resumed from" in log and "time budget" in log
    got = load_checkpoint(ckpt_paths(run_dir)[-1])
    assert_same_weights(reference_run(pairs, tmp_path / "ref", got["step"], *constant), got)


def test_scancel_leaves_a_loadable_checkpoint_and_resume_continues(cluster, pairs, tmp_path):
    steps, name = 3000, "derain-scancel"
    run_dir = tmp_path / "run"
    job = sbatch(cluster, name, ["--time=10"], training_args(pairs, steps, "--ckpt-every", "20"),
                 PRESET="custom", RUN_DIR=str(run_dir))
    wait_for(cluster, job, until=lambda i: len(ckpt_paths(run_dir)) >= 2, timeout=300)
    subprocess.run(["scancel", job], env=cluster, check=True)
    info = wait_for(cluster, job)
    assert info["JobState"] == "CANCELLED"
    last = load_checkpoint(ckpt_paths(run_dir)[-1])  # complete: written atomically
    assert 0 < last["step"] < steps
    r = subprocess.run([sys.executable, str(REPO / "ddpm_conditional.py"), "--preset", "custom",
                        "--run-dir", str(run_dir), "--resume",
                        *training_args(pairs, last["step"] + 20)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"at step {last['step']}" in r.stdout, r.stderr[-2000:]
    assert load_checkpoint(ckpt_paths(run_dir)[-1])["step"] == last["step"] + 20


def test_two_tasks_on_one_node_train_like_one_process_with_the_same_batch(cluster, pairs,
                                                                           tmp_path):
    # train.sh's srun ... torchrun line with two processes (gloo on the CPU), batch 4 each,
    # against one process with batch 8: the same samples, crops and noise (they derive from each
    # sample's position in the run), gradients averaged over the same 8 samples
    steps, name = 12, "derain-ddp"
    run_dir = tmp_path / "run"
    job = sbatch(cluster, name, ["--time=5"], training_args(pairs, steps, "--device", "cpu"),
                 PRESET="custom", RUN_DIR=str(run_dir), GPUS_PER_NODE="2")
    info = wait_for(cluster, job)
    log = read_log(name, job)
    assert info["JobState"] == "COMPLETED", (info, log[-3000:])
    assert "x2" in log  # two processes
    ddp = load_checkpoint(ckpt_paths(run_dir)[-1])
    assert ddp["world"] == 2
    cfg = ddp["config"]
    assert cfg["batch_size"] == 4  # per process, as given
    # one process, twice the batch
    single = reference_run(pairs, tmp_path / "single", steps, "--batch-size", "8")
    assert_same_weights(single, ddp, atol=1e-5)


def test_salloc_then_srun_runs_the_training(cluster, pairs, tmp_path):
    run_dir = tmp_path / "interactive"
    r = subprocess.run(["salloc", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--time=5",
                        "--gres=none", "--mem=1G", "--partition=spgpu", "srun", sys.executable,
                        str(REPO / "ddpm_conditional.py"), "--preset", "custom", "--run-dir",
                        str(run_dir), *training_args(pairs, 5)],
                       cwd=REPO, capture_output=True, text=True, env=cluster, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Granted job allocation" in r.stderr
    assert (run_dir / "config.json").exists() and load_checkpoint(ckpt_paths(run_dir)[-1])


def test_the_jobs_exit_status_is_the_trainings_and_its_log_is_in_logs(cluster, tmp_path):
    name = "derain-bad"
    job = sbatch(cluster, name, ["--time=5"], ["--csv", str(tmp_path / "missing.csv")],
                 PRESET="custom", RUN_DIR=str(tmp_path / "run"))
    info = wait_for(cluster, job)
    log = read_log(name, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"].startswith("2:"), (info, log)
    assert "missing.csv" in log and "training exited with status 2" in log
