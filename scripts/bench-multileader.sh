#!/usr/bin/env bash
# Multi-leader versus single-leader across two emulated datacenters, in one run, on one machine.
#
# Every inter-datacenter link carries an extra WAN_DELAY_MS one way (`--wan-delay-ms`, applied in
# the transport, both directions, in order). Three set-ups, each benchmarked with `chorus bench`
# (SET of VALUE_SIZE-byte values, closed loop, CLIENTS connections, pipeline 1):
#
#   one-dc        a 3-node single-leader group in one datacenter; the client is local to it.
#                 The reference figure.
#   multi-leader  2 datacenters x 3 nodes (`--mode multi-leader`); the client is in dc2 and writes
#                 to dc2's leader. A visibility probe writes through dc2's leader every 100 ms and
#                 polls dc1's leader until the value shows: the cross-datacenter visibility lag.
#   single-leader one 6-node group spanning the two datacenters (nodes 1-3 in dc1, 4-6 in dc2,
#                 the same WAN delay between them), its leader in dc1; the client is in dc2, so
#                 every request crosses the WAN to the leader and back (`chorus bench
#                 --client-delay-ms WAN_DELAY_MS`: the client-to-server hop is not a node-to-node
#                 link, so the bench client applies that delay itself), and a quorum of 4 of 6
#                 always needs one dc2 node.
#
# Goals (issue 6): multi-leader p50 within 2x of one-dc's; visibility lag under WAN delay + 20 ms.
#
# Environment (all optional):
#   WAN_DELAY_MS=50  BENCH_SECS=10  WARMUP_SECS=1  CLIENTS=8  VALUE_SIZE=64  KEYS=100000  SEED=1
#   FSYNC=always     the nodes' fsync policy
#   BASE_PORT=17401  client ports BASE_PORT.. (peer +100, admin +200)
#   CHORUS_BIN=path  use this binary instead of building target/release/chorus
#   RESULTS_DIR=bench-results
set -euo pipefail

readonly HOST=127.0.0.1
WAN_DELAY_MS=${WAN_DELAY_MS:-50}
BENCH_SECS=${BENCH_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-1}
CLIENTS=${CLIENTS:-8}
VALUE_SIZE=${VALUE_SIZE:-64}
KEYS=${KEYS:-100000}
SEED=${SEED:-1}
FSYNC=${FSYNC:-always}
BASE_PORT=${BASE_PORT:-17401}
RESULTS_DIR=${RESULTS_DIR:-bench-results}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

source "$ROOT/scripts/lib/bench-common.sh"

require_whole_numbers WAN_DELAY_MS BENCH_SECS WARMUP_SECS CLIENTS VALUE_SIZE KEYS SEED BASE_PORT
command -v redis-cli >/dev/null || die "redis-cli is needed (apt-get install redis-tools)"

if [[ -n ${CHORUS_BIN:-} ]]; then
    BIN=$CHORUS_BIN
else
    log "building chorus (release)..."
    cargo build --release -p chorus >&2
    BIN=target/release/chorus
fi
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chorus-bench-ml.XXXXXX")
mkdir -p "$RESULTS_DIR"
PIDS=()

stop_nodes() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_nodes; rm -rf "$WORK"' EXIT

# start_node ID DATACENTER INITIAL_CLUSTER EXTRA_ARGS...
start_node() {
    local id=$1 dc=$2 cluster=$3
    shift 3
    "$BIN" server --id "$id" --data-dir "$WORK/$SETUP/node$id" --fsync "$FSYNC" \
        --client-addr "$HOST:$((BASE_PORT + id - 1))" --peer-addr "$HOST:$((BASE_PORT + 100 + id - 1))" \
        --initial-cluster "$cluster" --datacenter "$dc" "$@" >"$WORK/$SETUP-node$id.log" 2>&1 &
    PIDS+=($!)
}

cluster_of() { # cluster_of N: the --initial-cluster of nodes 1..N
    local i out=""
    for ((i = 1; i <= $1; i++)); do out+="${out:+,}$i=$HOST:$((BASE_PORT + 100 + i - 1))"; done
    echo "$out"
}

# leader_among ID...: prints the client port of the ready leader among these nodes (30 s at most)
leader_among() {
    local deadline=$((SECONDS + 30)) id info
    while ((SECONDS < deadline)); do
        for id in "$@"; do
            info=$(redis-cli -h "$HOST" -p $((BASE_PORT + id - 1)) info replication 2>/dev/null | tr -d '\r') || continue
            if grep -qx 'chorus_role:leader' <<<"$info" && grep -qx 'chorus_leader_ready:1' <<<"$info"; then
                echo $((BASE_PORT + id - 1))
                return 0
            fi
        done
        sleep 0.1
    done
    die "$SETUP: no leader among nodes $* within 30 s (logs in $WORK)"
}

# bench NAME PORT EXTRA_ARGS...: one measured run, JSON kept under RESULTS_DIR
bench() {
    local name=$1 port=$2
    shift 2
    log "  $name: chorus bench against port $port $*"
    "$BIN" bench --host "$HOST" --port "$port" --workload set --clients "$CLIENTS" --pipeline 1 \
        --keys "$KEYS" --value-size "$VALUE_SIZE" --duration "$BENCH_SECS" --warmup "$WARMUP_SECS" \
        --seed "$SEED" --json "$@" >"$RESULTS_DIR/multileader-$name.json"
}

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$1" "$2"; }

log "one datacenter: a 3-node single-leader group, local client"
SETUP=one-dc
CLUSTER=$(cluster_of 3)
for id in 1 2 3; do start_node "$id" dc1 "$CLUSTER"; done
LEADER=$(leader_among 1 2 3)
bench one-dc "$LEADER"
stop_nodes

log "multi-leader: 2 datacenters x 3 nodes, wan delay $WAN_DELAY_MS ms, client in dc2"
SETUP=multi-leader
CLUSTER=$(cluster_of 6)
for id in 1 2 3; do start_node "$id" dc1 "$CLUSTER" --mode multi-leader --wan-delay-ms "$WAN_DELAY_MS"; done
for id in 4 5 6; do start_node "$id" dc2 "$CLUSTER" --mode multi-leader --wan-delay-ms "$WAN_DELAY_MS"; done
DC1_LEADER=$(leader_among 1 2 3)
DC2_LEADER=$(leader_among 4 5 6)
bench multi-leader "$DC2_LEADER" --visibility-addr "$HOST:$DC1_LEADER"
stop_nodes

log "single-leader across datacenters: 6 nodes (dc1: 1-3, dc2: 4-6), leader in dc1, client in dc2"
SETUP=single-leader
CLUSTER=$(cluster_of 6)
for id in 1 2 3; do start_node "$id" dc1 "$CLUSTER" --wan-delay-ms "$WAN_DELAY_MS"; done
for id in 4 5 6; do start_node "$id" dc2 "$CLUSTER" --wan-delay-ms "$WAN_DELAY_MS"; done
LEADER=$(leader_among 1 2 3 4 5 6)
if ((LEADER - BASE_PORT + 1 > 3)); then
    log "  the leader is in dc2 (port $LEADER): transferring leadership to node 1"
    redis-cli -h "$HOST" -p "$LEADER" CHORUS.LEADER TRANSFER 1 >/dev/null
    LEADER=$(leader_among 1 2 3)
fi
bench single-leader "$LEADER" --client-delay-ms "$WAN_DELAY_MS"
stop_nodes

printf '\nmulti-leader benchmark: wan delay %s ms, %s clients, pipeline 1, %s s, fsync %s, commit %s\n' \
    "$WAN_DELAY_MS" "$CLIENTS" "$BENCH_SECS" "$FSYNC" "$COMMIT"
printf '%-46s %10s %10s %10s %12s\n' "set-up (client in dc2 unless one-dc)" "ops/s" "p50 ms" "p99 ms" "errors"
for name in one-dc multi-leader single-leader; do
    file="$RESULTS_DIR/multileader-$name.json"
    printf '%-46s %10.0f %10.2f %10.2f %12s\n' "$name" "$(field "$file" ops_per_sec)" \
        "$(python3 -c "print($(field "$file" p50_us) / 1000)")" "$(python3 -c "print($(field "$file" p99_us) / 1000)")" \
        "$(field "$file" errors)"
done
file="$RESULTS_DIR/multileader-multi-leader.json"
printf 'visibility dc2 -> dc1: %s probes, %s timed out, p50 %.2f ms, p99 %.2f ms, max %.2f ms (goal: < %s ms)\n' \
    "$(field "$file" visibility_probes)" "$(field "$file" visibility_timeouts)" \
    "$(python3 -c "print($(field "$file" visibility_p50_us) / 1000)")" \
    "$(python3 -c "print($(field "$file" visibility_p99_us) / 1000)")" \
    "$(python3 -c "print($(field "$file" visibility_max_us) / 1000)")" "$((WAN_DELAY_MS + 20))"
python3 - "$RESULTS_DIR" <<'EOF'
import json, sys
d = sys.argv[1]
one = json.load(open(f"{d}/multileader-one-dc.json"))
ml = json.load(open(f"{d}/multileader-multi-leader.json"))
ratio = ml["p50_us"] / max(one["p50_us"], 1)
print(f"multi-leader p50 / one-dc p50 = {ratio:.2f} (goal: <= 2)")
EOF
