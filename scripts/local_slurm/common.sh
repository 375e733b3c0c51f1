# Shared by start.sh and stop.sh (sourced, not run).
STATE_DIR=${DST_SLURM_DIR:-/tmp/dst-slurm}
CONF=$STATE_DIR/etc/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf

log() { echo "local_slurm: $*" >&2; }

# True if the process exists and is not a zombie (PID 1 of some containers never reaps orphans, so a killed daemon
# can linger as a zombie that `kill -0` still finds).
alive() {
    local st
    st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# Print the pid from a pid file if that process is alive and is the expected program (pid files survive a killed
# machine, and pids get reused).
live_pid() {  # pidfile program
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(</proc/$pid/comm) == "$2"* ]] || return 1
    alive "$pid" || return 1
    echo "$pid"
}
