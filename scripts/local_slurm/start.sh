#!/usr/bin/env bash
# Start a REAL SLURM on this machine: a private munged, slurmctld and two slurmd "nodes" (node1, node2: both this
# host, different ports) in one partition `debug`. For tests and for trying `--profile slurm` / `dst launch` locally.
#
#   scripts/local_slurm/start.sh          # idempotent: reuses a cluster that is already up
#   export SLURM_CONF=/tmp/dst-slurm/etc/slurm.conf   # printed at the end; also linked to /etc/slurm/slurm.conf
#   scripts/local_slurm/stop.sh           # stops it and removes the state directory
#
# Environment:
#   DST_SLURM_DIR        state directory (config, munge key/socket, spool, logs, pid files)   [/tmp/dst-slurm]
#   DST_SLURM_CTLD_PORT  slurmctld port                                                          [16817]
#   DST_SLURM_NODE_PORTS slurmd ports of node1 and node2                                         ["17001 17002"]
#   DST_SLURM_CPUS       CPUs per node                                                           [nproc]
#   DST_SLURM_MEM_MB     memory per node                                                         [RAM - 1 GiB]
#   DST_SLURM_WAIT_S     how long to wait for both nodes to be idle                              [90]
#   DST_SLURM_NO_INSTALL set to 1 to never apt-get install missing packages
#
# Must run as root (the daemons run as root; SlurmUser=root). Installs the Debian packages slurm-wlm and munge when
# they are missing. Exit status: 0 up and idle, 1 failed to come up, 3 cannot run here (not root, no packages).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"
CTLD_PORT=${DST_SLURM_CTLD_PORT:-16817}
read -r NODE1_PORT NODE2_PORT <<<"${DST_SLURM_NODE_PORTS:-17001 17002}"
WAIT_S=${DST_SLURM_WAIT_S:-90}
NODES=(node1 node2)
MUNGE_SOCKET=$STATE_DIR/munge/munge.socket

die() { log "error: $1"; exit "${2:-1}"; }

ensure_packages() {
    local missing=()
    for exe in munged munge unmunge slurmctld slurmd sinfo sbatch srun squeue scontrol scancel; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) != 0 || ${DST_SLURM_NO_INSTALL:-0} == 1 ]]; then
        die "missing ${missing[*]}; install the Debian packages as root: apt-get install -y slurm-wlm munge" 3
    fi
    log "installing slurm-wlm and munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts may try to start the system services; that fails harmlessly without init and is not used.
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } >&2 \
        || die "apt-get install slurm-wlm munge failed" 3
    for exe in munged slurmctld slurmd sinfo; do
        command -v "$exe" >/dev/null 2>&1 || die "$exe still missing after apt-get install" 3
    done
}

ensure_hosts() {
    # MASTER_ADDR of a 2-node job is "node1": the node names must resolve (to this host).
    local n unresolved=()
    for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null || unresolved+=("$n"); done
    ((${#unresolved[@]} == 0)) && return 0
    [[ -w /etc/hosts ]] || die "${unresolved[*]} do not resolve and /etc/hosts is not writable" 3
    log "adding '127.0.0.1 ${unresolved[*]}' to /etc/hosts"
    echo "127.0.0.1 ${unresolved[*]}  # dst local SLURM (scripts/local_slurm)" >>/etc/hosts
}

write_config() {
    local cpus mem_mb total_mb
    cpus=${DST_SLURM_CPUS:-$(nproc)}
    total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    # Each "node" offers the whole machine's memory (less 1 GiB), as each slurmd would report it: nothing enforces
    # memory here (no cgroups), and workflow rules asking 8-16 GB must still be schedulable.
    mem_mb=${DST_SLURM_MEM_MB:-$((total_mb > 2048 ? total_mb - 1024 : total_mb))}
    mkdir -p "$STATE_DIR"/{etc,state,log,run,munge} "$STATE_DIR"/spool/{node1,node2}
    sed -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@NODE1_PORT@|$NODE1_PORT|g" -e "s|@NODE2_PORT@|$NODE2_PORT|g" \
        -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" -e "s|@DEF_MEM_PER_CPU@|$((mem_mb / cpus / 2))|g" \
        "$HERE/slurm.conf.in" >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
}

link_system_conf() {
    # Plain `sinfo`/`sbatch` (and every tool that shells out to them) read /etc/slurm/slurm.conf unless SLURM_CONF
    # is set: point it at ours, but never replace a site's real config.
    if [[ -L $SYSTEM_CONF || ! -e $SYSTEM_CONF ]]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -sfn "$CONF" "$SYSTEM_CONF"
    elif ! cmp -s "$SYSTEM_CONF" "$CONF"; then
        log "note: $SYSTEM_CONF exists and is not ours; use: export SLURM_CONF=$CONF"
    fi
}

start_munge() {
    local key=$STATE_DIR/munge/munge.key
    if ! live_pid "$STATE_DIR/run/munged.pid" munged >/dev/null; then
        if [[ ! -s $key ]]; then
            (umask 077; head -c 1024 /dev/urandom >"$key")
        fi
        chmod 755 "$STATE_DIR/munge"; chmod 400 "$key"
        rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
        log "starting munged"
        # --force: the state dir lives under /tmp (sticky, world-writable), which munged otherwise refuses.
        munged --force --key-file="$key" --socket="$MUNGE_SOCKET" --pid-file="$STATE_DIR/run/munged.pid" \
            --log-file="$STATE_DIR/log/munged.log" --seed-file="$STATE_DIR/munge/munged.seed" --num-threads=2 \
            || die "munged failed to start; see $STATE_DIR/log/munged.log"
    fi
    local i
    for i in $(seq 50); do
        munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munge credential round trip fails; see $STATE_DIR/log/munged.log"
}

start_slurm_daemons() {
    if ! live_pid "$STATE_DIR/run/slurmctld.pid" slurmctld >/dev/null; then
        log "starting slurmctld (port $CTLD_PORT)"
        # -c: start clean. A controller that is not running left only jobs whose processes are gone (killed machine,
        # CI); recovering them would keep the nodes busy or down. -i: ignore half-written state files.
        slurmctld -f "$CONF" -c -i || die "slurmctld failed to start; see $STATE_DIR/log/slurmctld.log"
    fi
    local n
    for n in "${NODES[@]}"; do
        if ! live_pid "$STATE_DIR/run/slurmd-$n.pid" slurmd >/dev/null; then
            log "starting slurmd -N $n"
            slurmd -f "$CONF" -N "$n" || die "slurmd $n failed to start; see $STATE_DIR/log/slurmd-$n.log"
        fi
    done
}

all_running() {
    live_pid "$STATE_DIR/run/munged.pid" munged >/dev/null &&
        live_pid "$STATE_DIR/run/slurmctld.pid" slurmctld >/dev/null &&
        live_pid "$STATE_DIR/run/slurmd-node1.pid" slurmd >/dev/null &&
        live_pid "$STATE_DIR/run/slurmd-node2.pid" slurmd >/dev/null
}

wait_idle() {
    local deadline=$((SECONDS + WAIT_S)) states="" resumed=0
    while ((SECONDS < deadline)); do
        states=$(sinfo -h -N -p debug -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        # Busy nodes (a reused cluster running jobs) are up too.
        if [[ $states =~ node1\ (idle|mixed|allocated|completing) && $states =~ node2\ (idle|mixed|allocated|completing) ]]; then
            log "up: $states(SLURM_CONF=$CONF)"
            return 0
        fi
        # A node marked down/drained by an earlier life of this state dir: resume it once.
        if ((resumed == 0)) && [[ $states =~ (down|drain) ]]; then
            scontrol update nodename=node1,node2 state=resume >/dev/null 2>&1 || true
            resumed=1
        fi
        sleep 0.5
    done
    log "nodes not idle after ${WAIT_S}s: ${states:-sinfo gave no answer}"
    for f in slurmctld slurmd-node1 slurmd-node2 munged; do
        [[ -f $STATE_DIR/log/$f.log ]] && { log "--- tail $STATE_DIR/log/$f.log"; tail -n 15 "$STATE_DIR/log/$f.log" >&2; }
    done
    exit 1
}

main() {
    export SLURM_CONF=$CONF
    if all_running && [[ -f $CONF ]]; then
        log "reusing the running cluster in $STATE_DIR"
        wait_idle
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "must run as root to start SLURM daemons (no running cluster in $STATE_DIR)" 3
    ensure_packages
    ensure_hosts
    # Keep the config of a live controller; otherwise (re)write it from the template.
    live_pid "$STATE_DIR/run/slurmctld.pid" slurmctld >/dev/null && [[ -f $CONF ]] || write_config
    link_system_conf
    start_munge
    start_slurm_daemons
    wait_idle
    echo "export SLURM_CONF=$CONF"
}

main "$@"
