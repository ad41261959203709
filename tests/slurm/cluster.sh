#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/slurm/test_slurm.py.
#
#   tests/slurm/cluster.sh start DIR    # install Slurm and munge if missing, write DIR/slurm.conf,
#                                       # start munged, slurmctld and slurmd, wait for the node
#   tests/slurm/cluster.sh stop DIR     # stop the daemons this script started
#
# Needs root (the daemons, and apt-get when the packages are missing). The partition is named
# like Great Lakes' GPU partition (spgpu) so train.sh's defaults apply unchanged; the node has
# this machine's CPUs and memory and no GPU. Clients find the cluster through
# SLURM_CONF=DIR/slurm.conf. Exit status 0 when the node is idle, 1 otherwise (with the reason).
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export SLURM_CONF="$dir/slurm.conf"

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    sleep 1
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if [ -f "$pidfile" ]; then
            kill -9 "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "Slurm's daemons need root" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge authenticates the daemons and clients to each other: a key of our own, its own sockets
mkdir -p "$dir/munge"
[ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 700 "$dir/munge"
chmod 400 "$dir/munge/munge.key"
mkdir -p /run/munge
munged --force --key-file="$dir/munge/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"

node=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$dir/state" "$dir/spool"
cat > "$SLURM_CONF" <<EOF
ClusterName=localtest
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$((6817 + RANDOM % 100))
SlurmdPort=$((6918 + RANDOM % 100))
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=10
MinJobAge=600
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=spgpu Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

slurmctld -i
slurmd
for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    if [ "$state" = idle ]; then
        echo "one-node Slurm cluster up: $node, $cpus CPUs, ${mem} MB, partition spgpu ($SLURM_CONF)"
        exit 0
    fi
    sleep 1
done
echo "the node did not become idle (state: ${state:-unknown}); see $dir/slurmctld.log and $dir/slurmd.log" >&2
stop
exit 1
