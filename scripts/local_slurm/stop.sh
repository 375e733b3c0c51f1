#!/usr/bin/env bash
# Stop the SLURM started by scripts/local_slurm/start.sh: cancel its jobs, stop slurmd x2, slurmctld and the private
# munged (by their pid files, nothing else), remove the /etc/slurm/slurm.conf link if it is ours and delete the
# state directory. Safe to run when nothing is running.
#
# Environment: DST_SLURM_DIR [/tmp/dst-slurm]; DST_SLURM_KEEP=1 keeps the state directory (logs) for inspection.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

stop_daemon() {  # pidfile program
    local pid i
    pid=$(live_pid "$1" "$2") || return 0
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do
        alive "$pid" || return 0
        sleep 0.1
    done
    log "$2 (pid $pid) did not stop in 10s: killing it"
    kill -KILL "$pid" 2>/dev/null
}

if live_pid "$STATE_DIR/run/slurmctld.pid" slurmctld >/dev/null && [[ -f $CONF ]]; then
    export SLURM_CONF=$CONF
    # Cancel what still runs so no slurmstepd/job process outlives the cluster.
    jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING,REQUEUED -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 60); do
            [[ -z $(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

for n in node1 node2; do stop_daemon "$STATE_DIR/run/slurmd-$n.pid" slurmd; done
stop_daemon "$STATE_DIR/run/slurmctld.pid" slurmctld
stop_daemon "$STATE_DIR/run/munged.pid" munged

if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
    rm -f "$SYSTEM_CONF"
fi
if [[ ${DST_SLURM_KEEP:-0} == 1 ]]; then
    log "stopped; state kept in $STATE_DIR"
else
    # Only a directory that start.sh made (it has our config template's output) is removed.
    if [[ -d $STATE_DIR && ( -f $CONF || -d $STATE_DIR/spool ) ]]; then
        rm -rf "$STATE_DIR"
    fi
    log "stopped"
fi
