# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced, not run). Expects HOST (and PORT_VARS for
# check_ports_free); stop_all expects a PIDS array, fail a FAILURES counter.

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# require_whole_numbers NAME...: every named variable holds a whole number.
require_whole_numbers() {
    local number
    for number in "$@"; do
        [[ ${!number} =~ ^[0-9]+$ ]] || die "$number must be a whole number, got '${!number}'"
    done
}

# A warning that also marks the run as failed (the scripts exit non-zero at the end).
fail() {
    log "warning: $*"
    FAILURES=$((FAILURES + 1))
}

# A field of `chorus bench --json` output (a flat object).
json_field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p" <<<"$2" | tr -d '"'; }

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# check_ports_free PORT...: dies if one is taken, naming PORT_VARS (the variables that move them).
check_ports_free() {
    local port
    for port in "$@"; do
        ! port_in_use "$port" || die "$HOST:$port is already in use; stop what listens there or set $PORT_VARS"
    done
}

wait_for_ping() { # port pid log
    local port=$1 pid=$2 logfile=$3
    for _ in $(seq 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the server on port $port exited at start; the end of its log:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        [[ $(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    log "port $port did not answer PING within 30 s"
    return 1
}

# Kills the servers started so far (SIGKILL: their data dirs are thrown away anyway).
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        { wait "$pid"; } 2>/dev/null || true # braces: also silences bash's "Killed" notice
    done
    PIDS=()
}
