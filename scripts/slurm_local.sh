#!/usr/bin/env bash
# A one-node Slurm on this machine, to try `hydra/launcher=slurm` without a cluster (and for tests/test_slurm.py).
#
#   scripts/slurm_local.sh start    # munged, slurmctld and slurmd; returns once `sinfo` shows the node idle
#   scripts/slurm_local.sh status   # the daemons and `sinfo`
#   scripts/slurm_local.sh stop     # ends the daemons this script started
#
# Needs root and the Debian/Ubuntu packages: apt-get install -y slurm-wlm munge. Each start is a fresh cluster
# (slurmctld -c: no jobs carried over). The config, state, spool and logs live in $SLURM_LOCAL_DIR
# (default /tmp/slurm_local); clients find the config through SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf, and through
# /etc/slurm/slurm.conf (a link this script makes, and removes on stop) when no other config is there.
# $SLURM_LOCAL_TIMEOUT: seconds to wait for the node to come up (default 30).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm_local}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-30}
CONF=$DIR/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF

die() { echo "slurm_local: cannot $1: $2" >&2; exit 1; }
say() { echo "slurm_local: $*"; }

ours() { # ours PID: the process is one this script starts (a pid file under /tmp can outlive a reboot)
    [[ $(cat "/proc/$1/comm" 2>/dev/null) =~ ^(munged|runuser|slurmctld|slurmd|setsid)$ ]]
}

alive() { # alive NAME: the daemon this script started is running
    local pid
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null && ours "$pid"
}

node_state() { timeout 5 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

last_line() { # last_line NAME: the daemon's last error (its log, else its output), for one-line messages
    local line
    line=$(grep -h -i "error\|fatal" "$DIR/log/$1.log" "$DIR/log/$1.out" 2>/dev/null | tail -n 1)
    echo "${line:-$(tail -q -n 1 "$DIR/log/$1.out" 2>/dev/null)} (logs in $DIR/log)"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

write_conf() { # write_conf FILE: the smallest slurm.conf for this host (one node, one partition, no accounting)
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)  # MB, 10% left to the system
    cat >"$1" <<EOF
# Written by scripts/slurm_local.sh for host $NODE: a one-node cluster for trying hydra/launcher=slurm.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# KILL right after TERM when a job is cancelled: submitit ignores TERM, so with a cluster's usual 30 s a cancelled
# chain runs on (and a GMM chain finishes) before it stops
KillWait=0
# finished jobs stay in squeue/scontrol this many seconds (there is no accounting: sacct says it is disabled)
MinJobAge=300
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.daemon.pid
SlurmdPidFile=$DIR/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() { # start_daemon NAME COMMAND...: in the background, its pid in $DIR/NAME.pid
    local name=$1
    shift
    setsid "$@" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
}

start() {
    [[ $(id -u) -eq 0 ]] || die start "not root (slurmd runs jobs as their users; rerun with sudo)"
    local missing=() cmd
    for cmd in munged munge unmunge slurmctld slurmd sinfo sbatch scancel; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) || die start "${missing[*]} not found (apt-get install -y slurm-wlm munge)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    write_conf "$CONF.new"
    if alive slurmctld && alive slurmd && cmp -s "$CONF.new" "$CONF" \
        && [[ $(node_state) == idle* || $(node_state) == mix* || $(node_state) == alloc* ]]; then
        rm -f "$CONF.new"
        say "already running ($CONF; node $NODE $(node_state))"
        return 0
    fi
    stop_slurm  # half a cluster, or one with another config, from an earlier start: begin again
    if ! munge_works; then
        [[ -r /etc/munge/munge.key ]] || die start "munged has no key: /etc/munge/munge.key (reinstall munge)"
        mkdir -p /run/munge
        chown munge:munge /run/munge
        chmod 0755 /run/munge
        start_daemon munged runuser -u munge -- munged -F
        local i
        for i in $(seq 50); do munge_works && break; sleep 0.2; done
        munge_works || { stop; die start "munged did not start: $(last_line munged)"; }
    fi
    mv "$CONF.new" "$CONF"
    if [[ ! -e $ETC_CONF || -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
        mkdir -p "$(dirname "$ETC_CONF")"
        ln -sfn "$CONF" "$ETC_CONF"
    else
        say "$ETC_CONF is another cluster's: export SLURM_CONF=$CONF to reach this one"
    fi
    start_daemon slurmctld slurmctld -D -c -f "$CONF"
    start_daemon slurmd slurmd -D -f "$CONF"
    local deadline=$((SECONDS + TIMEOUT)) state="" why=""
    while ((SECONDS < deadline)); do  # a wall-clock bound: each sinfo may itself take seconds
        state=$(node_state)
        [[ $state == idle* ]] && break
        alive slurmctld || { why="slurmctld exited: $(last_line slurmctld)"; break; }
        alive slurmd || { why="slurmd exited: $(last_line slurmd)"; break; }
        sleep 0.5
    done
    if [[ $state != idle* ]]; then
        stop  # never leave half a cluster (or munged) behind a failed start
        die start "${why:-node $NODE not idle after ${TIMEOUT}s (state '${state:-none}'); logs in $DIR/log}"
    fi
    say "running: node $NODE idle, partition debug ($CONF)"
}

stop_one() { # stop_one NAME: end the daemon this script started (TERM, then KILL after 10 s)
    local pid i
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 0
    if kill -0 "$pid" 2>/dev/null && ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        say "stopped $1 ($pid)"
    fi
    rm -f "$DIR/$1.pid"
}

stop_slurm() {
    stop_one slurmd
    stop_one slurmctld
}

stop() {
    stop_slurm
    stop_one munged
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
        rm -f "$ETC_CONF"
    fi
}

status() {
    local name
    for name in munged slurmctld slurmd; do
        if alive "$name"; then say "$name running ($(cat "$DIR/$name.pid"))"; else say "$name not running"; fi
    done
    if alive slurmctld; then sinfo; fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (a one-node Slurm on this machine; state in $DIR)" >&2; exit 2 ;;
esac
