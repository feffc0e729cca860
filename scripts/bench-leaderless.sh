#!/usr/bin/env bash
# Leaderless mode on loopback, in one run, on the same machine:
#
#   chorus   3 nodes (`chorus server --mode leaderless` x3, n = 3, --fsync always on every node);
#            for each (w, r) of QUORUMS, set per connection with `--on-connect "CHORUS.QUORUM 3 w r"`:
#            SET and GET throughput and p50/p99 (`chorus bench`, CLIENTS connections to node 1;
#            the GETs read a key space preloaded with w = 3), then the stale-read rate
#            (scripts/ll_stale_reads.py: a fresh key written through node 1 with w, read at once
#            through node 2 with r), once on an idle cluster and once while `chorus bench` SETs
#            with the same (w, r) through node 3
#   redis    one redis-server, `appendonly yes appendfsync always` (the peer; no replication),
#            the same SET and GET loads: the ratio chorus / redis per row
#
# Prints a table and writes JSON under ./bench-results/. Everything listens on and connects to
# 127.0.0.1. Servers and temp dirs are removed on exit.
#
# Environment (all optional):
#   BENCH_SECS=10 WARMUP_SECS=1   measured seconds per run, and unmeasured before each
#   CLIENTS=50  VALUE_SIZE=100  KEYS=100000  SEED=1
#   QUORUMS="1/1 2/2 3/1"         the (w/r) pairs, n = 3
#   STALE_ROUNDS=2000             write-then-read rounds of each stale-read probe (at most
#                                 BENCH_SECS seconds each)
#   REDIS=1                       0 skips Redis
#   CHORUS_PORT=7401 REDIS_PORT=6401   client ports (chorus peer ports +100, admin +200)
#   CHORUS_BIN=path               use this chorus binary instead of building one (skips the build)
#   RESULTS_DIR=bench-results
set -euo pipefail

readonly HOST=127.0.0.1
readonly PORT_VARS=CHORUS_PORT/REDIS_PORT
BENCH_SECS=${BENCH_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-1}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-100}
KEYS=${KEYS:-100000}
SEED=${SEED:-1}
QUORUMS=${QUORUMS:-"1/1 2/2 3/1"}
STALE_ROUNDS=${STALE_ROUNDS:-2000}
REDIS=${REDIS:-1}
CHORUS_PORT=${CHORUS_PORT:-7401}
REDIS_PORT=${REDIS_PORT:-6401}
RESULTS_DIR=${RESULTS_DIR:-bench-results}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

source "$ROOT/scripts/lib/bench-common.sh"

require_whole_numbers BENCH_SECS WARMUP_SECS CLIENTS VALUE_SIZE KEYS SEED STALE_ROUNDS REDIS CHORUS_PORT REDIS_PORT
((BENCH_SECS > 0 && CLIENTS > 0 && STALE_ROUNDS > 0)) || die "BENCH_SECS, CLIENTS and STALE_ROUNDS must be at least 1"
for quorum in $QUORUMS; do
    [[ $quorum =~ ^[1-3]/[1-3]$ ]] || die "QUORUMS holds w/r pairs with 1 <= w, r <= 3, got '$quorum'"
done
command -v redis-cli >/dev/null || die "redis-cli is needed (Debian: redis-tools)"
((REDIS == 0)) || command -v redis-server >/dev/null || die "redis-server is needed (or REDIS=0)"
python3 -c 'import redis' 2>/dev/null || die "python3 with redis-py is needed (pip install -r tests/e2e/requirements.txt)"

if [[ -n ${CHORUS_BIN:-} ]]; then
    [[ -x $CHORUS_BIN ]] || die "CHORUS_BIN=$CHORUS_BIN is not an executable"
else
    log "building chorus (release)"
    cargo build --release -p chorus
    CHORUS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/chorus
fi
"$CHORUS_BIN" bench --help 2>/dev/null | grep -q -- --on-connect || die "$CHORUS_BIN bench has no --on-connect (build this checkout)"

# --- processes ---------------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-leaderless.XXXXXX")
PIDS=()     # servers
TOOL_PIDS=() # load tools running now
cleanup() {
    local pid
    for pid in "${TOOL_PIDS[@]}" "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM

start_chorus() {
    local dir="$TMP/chorus" i cluster="" ports=()
    for i in 1 2 3; do cluster+="${cluster:+,}$i=$HOST:$((CHORUS_PORT + 99 + i))"; done
    for i in 1 2 3; do ports+=($((CHORUS_PORT + i - 1)) $((CHORUS_PORT + 99 + i)) $((CHORUS_PORT + 199 + i))); done
    check_ports_free "${ports[@]}"
    local pids=()
    for i in 1 2 3; do
        mkdir -p "$dir/node$i"
        "$CHORUS_BIN" server --id "$i" --data-dir "$dir/node$i" --client-addr "$HOST:$((CHORUS_PORT + i - 1))" \
            --peer-addr "$HOST:$((CHORUS_PORT + 99 + i))" --admin-addr "$HOST:$((CHORUS_PORT + 199 + i))" \
            --initial-cluster "$cluster" --mode leaderless --leaderless-quorum 3/2/2 --fsync always \
            >"$dir/node$i.log" 2>&1 &
        pids+=($!)
        PIDS+=($!)
    done
    for i in 1 2 3; do
        wait_for_ping $((CHORUS_PORT + i - 1)) "${pids[i - 1]}" "$dir/node$i.log" || return 1
    done
    # Every node reaches both peers: a write with w = 3 through each is acknowledged.
    for i in 1 2 3; do
        for attempt in $(seq 300); do
            [[ $(printf 'CHORUS.QUORUM 3 3 3\nSET bench:ready:%s 1\n' "$i" |
                redis-cli -h "$HOST" -p $((CHORUS_PORT + i - 1)) 2>/dev/null | tail -n 1) == OK ]] && break
            ((attempt < 300)) || { log "node $i: a write with w = 3 failed for 30 s"; return 1; }
            sleep 0.1
        done
    done
}

start_redis() {
    local dir="$TMP/redis"
    check_ports_free "$REDIS_PORT"
    mkdir -p "$dir"
    redis-server --port "$REDIS_PORT" --bind "$HOST" --dir "$dir" --save "" --appendonly yes --appendfsync always \
        --logfile "$dir/redis.log" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_for_ping "$REDIS_PORT" "$!" "$dir/redis.log"
}

# --- measurements ------------------------------------------------------------------------------

RESULTS="$TMP/results.tsv" # system config workload ops p50_ms p99_ms errors
STALE="$TMP/stale.tsv"     # config load rounds stale rate errors
: >"$RESULTS"
: >"$STALE"
FAILURES=0

# chorus bench against port $4 for (system $1, config $2, workload $3) + extra flags.
bench() {
    local system=$1 config=$2 workload=$3 port=$4 out ops p50 p99 errors
    shift 4
    if timeout -k 5 $((BENCH_SECS * 3 + WARMUP_SECS + 120)) "$CHORUS_BIN" bench --host "$HOST" --port "$port" \
        --workload "$workload" --clients "$CLIENTS" --value-size "$VALUE_SIZE" --keys "$KEYS" \
        --duration "$BENCH_SECS" --warmup "$WARMUP_SECS" --seed "$SEED" --json "$@" >"$TMP/out" 2>"$TMP/err"; then
        out=$(<"$TMP/out")
        ops=$(awk -v x="$(json_field ops_per_sec "$out")" 'BEGIN { printf "%.0f", x }')
        p50=$(awk -v x="$(json_field p50_us "$out")" 'BEGIN { printf "%.3f", x / 1000 }')
        p99=$(awk -v x="$(json_field p99_us "$out")" 'BEGIN { printf "%.3f", x / 1000 }')
        errors=$(json_field errors "$out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$system" "$config" "$workload" "$ops" "$p50" "$p99" "$errors" >>"$RESULTS"
        log "  $workload: $ops ops/s, p50 $p50 ms, p99 $p99 ms, $errors errors"
        if [[ $errors != 0 ]]; then fail "$system $config $workload: $errors errors: $(json_field first_error "$out")"; fi
    else
        fail "$system $config $workload: chorus bench failed: $(tail -n 3 "$TMP/err")"
    fi
}

# The stale-read probe for w $1, r $2, under load $3 (idle or loaded).
stale_probe() {
    local w=$1 r=$2 load=$3 out
    if out=$(timeout -k 5 $((BENCH_SECS * 2 + 60)) python3 "$ROOT/scripts/ll_stale_reads.py" --host "$HOST" \
        --write-port "$CHORUS_PORT" --read-port $((CHORUS_PORT + 1)) --n 3 --w "$w" --r "$r" \
        --rounds "$STALE_ROUNDS" --seconds "$BENCH_SECS" --prefix "stale:$load"); then
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "3/$w/$r" "$load" "$(json_field rounds "$out")" "$(json_field stale "$out")" \
            "$(json_field stale_rate "$out")" "$(json_field errors "$out")" >>"$STALE"
        log "  stale reads ($load): $out"
    else
        fail "stale probe 3/$w/$r ($load) failed: $out"
    fi
}

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "about $((($(wc -w <<<"$QUORUMS") * (3 * (BENCH_SECS + WARMUP_SECS + 2) + BENCH_SECS) + 2 * REDIS * (BENCH_SECS + WARMUP_SECS + 2)) / 60 + 1)) minutes"

log "== chorus leaderless, 3 nodes, n = 3, --fsync always"
start_chorus || die "chorus did not start"
log "  preloading $KEYS keys with w = 3"
timeout -k 5 600 "$CHORUS_BIN" bench --host "$HOST" --port "$CHORUS_PORT" --workload set --preload-only \
    --keys "$KEYS" --value-size "$VALUE_SIZE" --clients "$CLIENTS" --on-connect "CHORUS.QUORUM 3 3 1" \
    --no-progress >/dev/null 2>"$TMP/err" || die "preload failed: $(tail -n 3 "$TMP/err")"
for quorum in $QUORUMS; do
    w=${quorum%/*}
    r=${quorum#*/}
    log "== n=3 w=$w r=$r"
    bench chorus "3/$w/$r" set "$CHORUS_PORT" --on-connect "CHORUS.QUORUM 3 $w $r"
    bench chorus "3/$w/$r" get "$CHORUS_PORT" --on-connect "CHORUS.QUORUM 3 $w $r"
    stale_probe "$w" "$r" idle
    # The same probe while node 3 coordinates SETs with the same (w, r) from CLIENTS connections.
    "$CHORUS_BIN" bench --host "$HOST" --port $((CHORUS_PORT + 2)) --workload set --clients "$CLIENTS" \
        --value-size "$VALUE_SIZE" --keys "$KEYS" --duration $((BENCH_SECS + 5)) --seed "$SEED" --json \
        --on-connect "CHORUS.QUORUM 3 $w $r" >"$TMP/load.out" 2>"$TMP/load.err" &
    TOOL_PIDS=($!)
    stale_probe "$w" "$r" loaded
    wait "${TOOL_PIDS[0]}" || fail "background load for 3/$w/$r failed: $(tail -n 3 "$TMP/load.err")"
    TOOL_PIDS=()
    log "  (background load: $(json_field ops_per_sec "$(<"$TMP/load.out")") SET/s through node 3)"
done
METRICS=$(curl -s "http://$HOST:$((CHORUS_PORT + 200))/metrics" 2>/dev/null | grep '^chorus_ll_' | tr '\n' ' ' || true)
stop_all

if ((REDIS)); then
    log "== redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), one node, appendonly yes appendfsync always"
    if start_redis; then
        timeout -k 5 600 "$CHORUS_BIN" bench --host "$HOST" --port "$REDIS_PORT" --workload set --preload-only \
            --keys "$KEYS" --value-size "$VALUE_SIZE" --clients "$CLIENTS" --no-progress >/dev/null 2>"$TMP/err" ||
            fail "redis preload failed: $(tail -n 3 "$TMP/err")"
        bench redis aof-always set "$REDIS_PORT"
        bench redis aof-always get "$REDIS_PORT"
    else
        fail "redis did not start"
    fi
    stop_all
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ------------------------------------------------------------------------------------

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
echo
echo "Leaderless chorus on $HOST: 3 nodes, n = 3, --fsync always; $CLIENTS clients to node 1, ${VALUE_SIZE}-byte"
echo "values, $KEYS keys, ${BENCH_SECS} s per run; redis: one node, appendfsync always. $(nproc) cores,"
echo "load average $LOAD_BEFORE before, $LOAD_AFTER after; commit $COMMIT"
echo
awk -F'\t' '
    $1 == "redis" { redis[$3] = $4 }
    { rows[++n] = $0 }
    END {
        f = "%-7s %-8s %-4s | %9s %8s %8s %7s\n"
        printf f, "system", "n/w/r", "op", "op/s", "p50 ms", "p99 ms", "x redis"
        for (i = 1; i <= n; i++) {
            split(rows[i], c, "\t")
            ratio = (c[3] in redis && redis[c[3]] > 0) ? sprintf("%.2fx", c[4] / redis[c[3]]) : "-"
            printf f, c[1], c[2], c[3], c[4], c[5], c[6], ratio
        }
    }' "$RESULTS"
echo
echo "Stale reads (write through node 1 with w, read at once through node 2 with r; loaded: node 3"
echo "coordinating SETs with the same w/r from $CLIENTS connections meanwhile):"
awk -F'\t' '{ printf "  %-6s %-7s %6s of %6s rounds stale (%.2f%%), %s errors\n", $1, $2, $4, $3, 100 * $5, $6 }' "$STALE"
[[ -n $METRICS ]] && echo && echo "node 1 at the end: $METRICS"

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/bench-leaderless-$(date -u +%Y%m%dT%H%M%SZ).json"
{
    printf '{"started":"%s","bench_secs":%s,"warmup_secs":%s,"clients":%s,"value_size":%s,"keys":%s,"cores":%s,' \
        "$STARTED" "$BENCH_SECS" "$WARMUP_SECS" "$CLIENTS" "$VALUE_SIZE" "$KEYS" "$(nproc)"
    printf '"load_before":"%s","load_after":"%s","chorus_commit":"%s","results":[' "$LOAD_BEFORE" "$LOAD_AFTER" "$COMMIT"
    awk -F'\t' 'BEGIN { ORS = "" }
        { if (NR > 1) print ","
          printf "{\"system\":\"%s\",\"config\":\"%s\",\"workload\":\"%s\",\"ops_per_sec\":%s,\"p50_ms\":%s,\"p99_ms\":%s,\"errors\":%s}", $1, $2, $3, $4, $5, $6, $7 }' "$RESULTS"
    printf '],"stale_reads":['
    awk -F'\t' 'BEGIN { ORS = "" }
        { if (NR > 1) print ","
          printf "{\"quorum\":\"%s\",\"load\":\"%s\",\"rounds\":%s,\"stale\":%s,\"stale_rate\":%s,\"errors\":%s}", $1, $2, $3, $4, $5, $6 }' "$STALE"
    printf '],"failures":%s}\n' "$FAILURES"
} | tr -d '\n' >"$OUT"
echo >>"$OUT"
echo
echo "wrote $OUT"
((FAILURES == 0)) || die "$FAILURES measurement(s) failed (see the warnings above)"
