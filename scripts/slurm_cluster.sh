#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests: scripts/slurm_cluster.sh up | down | status
#
#   up      install Debian's slurmctld, slurmd, slurm-client and munge if missing (needs root and apt),
#           write a minimal slurm.conf (one node with this machine's cores, one partition "debug",
#           no cgroups, no accounting: sacct does not work, as on some real clusters), start munged,
#           slurmctld and slurmd by hand (package scripts cannot start services here), wait until the
#           node is idle, and record the daemons' PIDs in $STATE/pids
#   down    stop every daemon `up` started, by its PID (also after a failed `up`)
#   status  sinfo's view of the node
#
# STATE (default /tmp/ntk-slurm) holds slurm.conf, the daemons' logs, spool directories and PIDs.
# .ci/run brings the cluster up before the tests and down at the end, also on failure.
set -euo pipefail
STATE="${NTK_SLURM_STATE:-/tmp/ntk-slurm}"
CONF=/etc/slurm/slurm.conf

down() {
    if [[ -f "$STATE/pids" ]]; then
        while read -r name pid; do
            if kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
                echo "stopped $name (pid $pid)"
            fi
        done < "$STATE/pids"
        rm -f "$STATE/pids"
    fi
}

start() {  # start NAME CMD...: run a daemon in the foreground mode in the background, keep its PID
    local name=$1; shift
    "$@" > "$STATE/$name.log" 2>&1 &
    echo "$name $!" >> "$STATE/pids"
}

up() {
    if [[ $EUID -ne 0 ]]; then echo "error: scripts/slurm_cluster.sh up needs root (it installs packages and starts daemons)" >&2; exit 2; fi
    if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v sinfo > /dev/null || ! command -v munged > /dev/null; then
        echo "installing slurmctld slurmd slurm-client munge"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge) > "${TMPDIR:-/tmp}/ntk-slurm-apt.log" 2>&1 \
            || { echo "error: installing SLURM failed; see ${TMPDIR:-/tmp}/ntk-slurm-apt.log" >&2; exit 2; }
    fi
    down  # a cluster left over from an earlier run
    mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" /etc/slurm /run/munge /var/log/munge /var/lib/munge
    : > "$STATE/pids"
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /etc/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    start munged runuser -u munge -- munged --foreground
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cat > "$CONF" <<CONFEOF
# written by scripts/slurm_cluster.sh: a one-node test cluster
ClusterName=ntk
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
AuthType=auth/munge
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONFEOF
    for _ in $(seq 50); do [[ -S /run/munge/munge.socket.2 ]] && break; sleep 0.1; done
    start slurmctld slurmctld -D -f "$CONF"
    start slurmd slurmd -D -f "$CONF"
    for _ in $(seq 100); do
        state=$(sinfo -h -o %T 2> /dev/null | head -1 || true)
        if [[ "$state" == idle* ]]; then
            echo "slurm cluster up: node $host, $cpus CPUs, partition debug (state in $STATE)"
            return 0
        fi
        sleep 0.2
    done
    echo "error: the SLURM node did not become idle within 20 s (state: ${state:-none}); logs in $STATE" >&2
    tail -5 "$STATE"/slurmctld.log "$STATE"/slurmd.log >&2 || true
    down
    exit 2
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo ;;
    *) echo "usage: scripts/slurm_cluster.sh up | down | status" >&2; exit 2 ;;
esac
