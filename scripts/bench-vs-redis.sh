#!/usr/bin/env bash
# Compares a single Chorus node with Redis on loopback, at matched durability settings:
#
#   always    Redis --appendonly yes --appendfsync always    vs  chorus --fsync always
#   everysec  Redis --appendonly yes --appendfsync everysec  vs  chorus --fsync periodic:1000
#   none      Redis --save '' --appendonly no (reference)    vs  chorus --fsync never
#
# For each pair it starts each server fresh (new temp dir), measures resident memory per key after
# SETting KEYS keys, then runs the same load against it with both `chorus bench` and
# `redis-benchmark` (SET then GET, pipeline 1 and 16). It prints a table of ops/s and the ratio
# chorus/redis for each matched pair, and writes the same data as JSON under ./bench-results/.
#
# Everything listens on and connects to 127.0.0.1 only. Servers are killed on exit.
#
# Environment (all optional):
#   BENCH_SECS=10          seconds per measured run
#   KEYS=100000            key space (and keys preloaded for the memory measurement)
#   VALUE_SIZE=100         value bytes
#   CLIENTS=50             connections
#   PIPELINES="1 16"       pipeline depths
#   WORKLOADS="set get"    workloads, in this order (GET runs preload every key first)
#   DURABILITIES="always everysec none"
#   SERVERS="redis chorus" which servers to run (SERVERS=redis to test the Redis half alone)
#   TOOLS="chorus-bench redis-benchmark"
#   SEED=1                 seed of `chorus bench` key choice
#   REDIS_PORT=6390 CHORUS_PORT=7390
#   CHORUS_BIN=path        use this chorus binary instead of building one (skips the build)
#   RESULTS_DIR=bench-results
set -euo pipefail

readonly HOST=127.0.0.1
readonly PORT_VARS=REDIS_PORT/CHORUS_PORT
BENCH_SECS=${BENCH_SECS:-10}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
CLIENTS=${CLIENTS:-50}
PIPELINES=${PIPELINES:-"1 16"}
WORKLOADS=${WORKLOADS:-"set get"}
DURABILITIES=${DURABILITIES:-"always everysec none"}
SERVERS=${SERVERS:-"redis chorus"}
TOOLS=${TOOLS:-"chorus-bench redis-benchmark"}
SEED=${SEED:-1}
REDIS_PORT=${REDIS_PORT:-6390}
CHORUS_PORT=${CHORUS_PORT:-7390}
RESULTS_DIR=${RESULTS_DIR:-bench-results}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

source "$ROOT/scripts/lib/bench-common.sh"

require_whole_numbers BENCH_SECS KEYS VALUE_SIZE CLIENTS SEED REDIS_PORT CHORUS_PORT
for pipeline in $PIPELINES; do
    [[ $pipeline =~ ^[1-9][0-9]*$ ]] || die "PIPELINES must be whole numbers, got '$pipeline'"
done
for workload in $WORKLOADS; do
    [[ $workload == set || $workload == get ]] || die "WORKLOADS may hold set and get, got '$workload'"
done
for durability in $DURABILITIES; do
    [[ $durability =~ ^(always|everysec|none)$ ]] || die "unknown durability '$durability'"
done

# --- tools -------------------------------------------------------------------------------------

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null ||
    ! command -v redis-cli >/dev/null; then
    log "installing redis-server and redis-tools with apt-get"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server redis-tools >/dev/null
fi

if [[ -n ${CHORUS_BIN:-} ]]; then
    [[ -x $CHORUS_BIN ]] || die "CHORUS_BIN=$CHORUS_BIN is not an executable"
else
    log "building chorus (release)"
    cargo build --release -p chorus
    CHORUS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/chorus
fi
"$CHORUS_BIN" bench --help >/dev/null 2>&1 || die "$CHORUS_BIN has no 'bench' command"

# --- servers -----------------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-redis.XXXXXX")
PIDS=()     # servers
TOOL_PID="" # the benchmark tool running now
cleanup() {
    local pid
    if [[ -n $TOOL_PID ]]; then
        kill -TERM "$TOOL_PID" 2>/dev/null || true
        wait "$TOOL_PID" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM

# Runs a benchmark tool in the background with stdout in $TMP/out and stderr in $TMP/err, and
# waits for it. In the background, because bash runs an INT trap at once while in `wait`, but
# after a foreground command only if that command died of SIGINT (chorus bench catches it to
# report, redis-benchmark exits with an error when the server goes first). `timeout` bounds a
# tool that hangs on a dead server (redis-benchmark retries forever).
run_tool() {
    timeout -k 5 $((BENCH_SECS * 3 + 120)) "$@" >"$TMP/out" 2>"$TMP/err" &
    TOOL_PID=$!
    local status=0
    wait "$TOOL_PID" || status=$?
    TOOL_PID=""
    return "$status"
}

check_ports_free "$REDIS_PORT" "$CHORUS_PORT"

redis_args() {
    case $1 in
        always) echo "--save '' --appendonly yes --appendfsync always" ;;
        everysec) echo "--save '' --appendonly yes --appendfsync everysec" ;;
        none) echo "--save '' --appendonly no" ;;
    esac
}

chorus_fsync() {
    case $1 in
        always) echo always ;;
        everysec) echo periodic:1000 ;;
        none) echo never ;;
    esac
}

server_port() { if [[ $1 == redis ]]; then echo "$REDIS_PORT"; else echo "$CHORUS_PORT"; fi; }

server_config() {
    if [[ $1 == redis ]]; then redis_args "$2"; else echo "--fsync $(chorus_fsync "$2")"; fi
}

# Starts server $1 with durability $2; sets SERVER_PID and SERVER_LOG.
start_server() {
    local server=$1 durability=$2 dir="$TMP/$1-$2"
    mkdir -p "$dir"
    SERVER_LOG="$dir/server.log"
    if [[ $server == redis ]]; then
        local -a args
        case $durability in
            always) args=(--appendonly yes --appendfsync always) ;;
            everysec) args=(--appendonly yes --appendfsync everysec) ;;
            none) args=(--appendonly no) ;;
        esac
        redis-server --port "$REDIS_PORT" --bind "$HOST" --dir "$dir" --save "" "${args[@]}" \
            --logfile "$SERVER_LOG" >/dev/null 2>&1 &
    else
        "$CHORUS_BIN" server --id 1 --data-dir "$dir/chorus" --client-addr "$HOST:$CHORUS_PORT" \
            --fsync "$(chorus_fsync "$durability")" >"$SERVER_LOG" 2>&1 &
    fi
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    local port
    port=$(server_port "$server")
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$server ($durability) exited at start; the end of its log:"
            tail -n 20 "$SERVER_LOG" >&2 || true
            return 1
        fi
        if [[ $(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "$server ($durability) did not answer PING within 30 s; the end of its log:"
    tail -n 20 "$SERVER_LOG" >&2 || true
    return 1
}

stop_server() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local kept=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

used_memory() {
    redis-cli -h "$HOST" -p "$1" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'
}

# --- measurements ------------------------------------------------------------------------------

# redis-benchmark -r writes `key:` and 12 digits: chorus bench uses the same keys, so the GET
# preload of either tool serves both and key sizes match.
readonly KEY_DIGITS=12
RESULTS="$TMP/results.tsv" # durability server tool workload pipeline ops p50_ms p99_ms errors
MEMORY="$TMP/memory.tsv"   # durability server rss_before_kb rss_after_kb rss_B_per_key used_before used_after used_B_per_key
: >"$RESULTS"
: >"$MEMORY"
FAILURES=0

# SETs every key once and records memory per key for server $1 (pid $2) with durability $3.
measure_memory() {
    local server=$1 pid=$2 durability=$3 port rss_before rss_after used_before="" used_after=""
    port=$(server_port "$server")
    sleep 0.5
    rss_before=$(rss_kb "$pid")
    if [[ $server == redis ]]; then used_before=$(used_memory "$port"); fi
    if ! run_tool "$CHORUS_BIN" bench --host "$HOST" --port "$port" --workload set --keys "$KEYS" \
        --key-digits "$KEY_DIGITS" --value-size "$VALUE_SIZE" --clients "$CLIENTS" --preload-only --json; then
        fail "$server ($durability): preloading $KEYS keys failed: $(tail -n 3 "$TMP/err")"
        return
    fi
    sleep 1
    rss_after=$(rss_kb "$pid")
    if [[ $server == redis ]]; then used_after=$(used_memory "$port"); fi
    local rss_per_key used_per_key=""
    rss_per_key=$(awk -v a="$rss_after" -v b="$rss_before" -v k="$KEYS" 'BEGIN { printf "%.1f", (a - b) * 1024 / k }')
    if [[ -n $used_before && -n $used_after ]]; then
        used_per_key=$(awk -v a="$used_after" -v b="$used_before" -v k="$KEYS" 'BEGIN { printf "%.1f", (a - b) / k }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$durability" "$server" "$rss_before" "$rss_after" "$rss_per_key" \
        "${used_before:--}" "${used_after:--}" "${used_per_key:--}" >>"$MEMORY"
    log "  memory: $rss_per_key B/key resident${used_per_key:+, $used_per_key B/key used_memory}"
}

# Last ops/s measured by chorus bench for (durability, server, workload, pipeline), or empty.
measured_ops() {
    awk -F'\t' -v d="$1" -v s="$2" -v w="$3" -v p="$4" \
        '$1 == d && $2 == s && $3 == "chorus-bench" && $4 == w && $5 == p { ops = $6 } END { print ops }' "$RESULTS"
}

run_chorus_bench() {
    local durability=$1 server=$2 workload=$3 pipeline=$4 port preload=()
    port=$(server_port "$server")
    if [[ $workload == get ]]; then preload=(--preload); fi
    if ! run_tool "$CHORUS_BIN" bench --host "$HOST" --port "$port" --workload "$workload" --pipeline "$pipeline" \
        --clients "$CLIENTS" --keys "$KEYS" --key-digits "$KEY_DIGITS" --value-size "$VALUE_SIZE" --duration "$BENCH_SECS" --seed "$SEED" \
        "${preload[@]}" --json; then
        fail "$server ($durability): chorus bench $workload -P $pipeline failed: $(tail -n 3 "$TMP/err")"
        return
    fi
    local out ops p50 p99 errors
    out=$(<"$TMP/out")
    ops=$(json_field ops_per_sec "$out")
    p50=$(json_field p50_us "$out")
    p99=$(json_field p99_us "$out")
    errors=$(json_field errors "$out")
    ops=$(awk -v x="$ops" 'BEGIN { printf "%.0f", x }')
    p50=$(awk -v x="$p50" 'BEGIN { printf "%.3f", x / 1000 }')
    p99=$(awk -v x="$p99" 'BEGIN { printf "%.3f", x / 1000 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$durability" "$server" chorus-bench "$workload" "$pipeline" \
        "$ops" "$p50" "$p99" "$errors" >>"$RESULTS"
    log "  chorus bench     $workload -P $pipeline: $ops ops/s, p50 $p50 ms, p99 $p99 ms"
    if [[ $errors != 0 ]]; then
        fail "$server ($durability): chorus bench $workload -P $pipeline had $errors errors: $(json_field first_error "$out")"
    fi
}

run_redis_benchmark() {
    local durability=$1 server=$2 workload=$3 pipeline=$4 port ops_hint requests out line
    port=$(server_port "$server")
    # Size -n for about BENCH_SECS from the rate chorus bench just measured (or a guess).
    ops_hint=$(measured_ops "$durability" "$server" "$workload" "$pipeline")
    requests=$(awk -v o="${ops_hint:-50000}" -v s="$BENCH_SECS" -v c="$CLIENTS" -v p="$pipeline" \
        'BEGIN { n = int(o * s); m = c * p * 20; print (n > m ? n : m) }')
    if ! run_tool redis-benchmark -h "$HOST" -p "$port" -c "$CLIENTS" -P "$pipeline" -d "$VALUE_SIZE" -r "$KEYS" \
        -t "$workload" -n "$requests" --csv; then
        fail "$server ($durability): redis-benchmark $workload -P $pipeline failed: $(tail -n 3 "$TMP/err")"
        return
    fi
    out=$(<"$TMP/out")
    line=$(tr -d '"\r' <<<"$out" | grep -i "^$workload," | tail -n 1 || true)
    if [[ -z $line ]]; then
        fail "$server ($durability): no $workload line in redis-benchmark's output: $(tail -n 3 <<<"$out")"
        return
    fi
    # test, rps, avg, min, p50, p95, p99, max (latencies in ms)
    local rps p50 p99
    IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$line"
    rps=$(awk -v x="$rps" 'BEGIN { printf "%.0f", x }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$durability" "$server" redis-benchmark "$workload" "$pipeline" \
        "$rps" "$p50" "$p99" "-" >>"$RESULTS"
    log "  redis-benchmark  $workload -P $pipeline: $rps ops/s, p50 $p50 ms, p99 $p99 ms ($requests requests)"
}

runs=0
for _ in $DURABILITIES; do for _ in $SERVERS; do for _ in $PIPELINES; do for _ in $WORKLOADS; do
    for _ in $TOOLS; do runs=$((runs + 1)); done
done; done; done; done
log "about $((runs * BENCH_SECS / 60 + 1)) minutes: $runs runs of ${BENCH_SECS} s, $CLIENTS clients, $KEYS keys, ${VALUE_SIZE}-byte values"

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for durability in $DURABILITIES; do
    for server in $SERVERS; do
        log "== $server, durability $durability: $(server_config "$server" "$durability")"
        if ! start_server "$server" "$durability"; then
            fail "$server ($durability) did not start"
            continue
        fi
        pid=$SERVER_PID
        measure_memory "$server" "$pid" "$durability"
        for pipeline in $PIPELINES; do
            for workload in $WORKLOADS; do
                if ! kill -0 "$pid" 2>/dev/null; then
                    fail "$server ($durability) died; skipping its remaining runs (log: $(tail -n 3 "$SERVER_LOG"))"
                    break 2
                fi
                if [[ " $TOOLS " == *" chorus-bench "* ]]; then
                    run_chorus_bench "$durability" "$server" "$workload" "$pipeline"
                fi
                if [[ " $TOOLS " == *" redis-benchmark "* ]]; then
                    run_redis_benchmark "$durability" "$server" "$workload" "$pipeline"
                fi
            done
        done
        stop_server "$pid"
    done
done

# --- report ------------------------------------------------------------------------------------

echo
echo "Throughput on $HOST, $CLIENTS clients, ${VALUE_SIZE}-byte values, $KEYS keys, ${BENCH_SECS} s per run ($(nproc) cores)"
echo "  always   = Redis appendfsync always    vs chorus --fsync always"
echo "  everysec = Redis appendfsync everysec  vs chorus --fsync periodic:1000"
echo "  none     = Redis without persistence   vs chorus --fsync never"
echo
awk -F'\t' '
    function show(v, unit) { return v == "" ? "-" : v unit }
    { key = $1 SUBSEP $3 SUBSEP $4 SUBSEP $5
      if (!(key in seen)) { seen[key] = 1; order[++n] = key }
      ops[key, $2] = $6; p99[key, $2] = $8 }
    END {
        format = "%-10s %-15s %-4s %3s %12s %12s %7s %11s %11s\n"
        printf format, "durability", "tool", "work", "P", "redis ops/s", "chorus ops/s", "ratio", "redis p99", "chorus p99"
        for (i = 1; i <= n; i++) {
            split(order[i], k, SUBSEP)
            r = ops[order[i], "redis"]; c = ops[order[i], "chorus"]
            ratio = (r > 0 && c != "") ? sprintf("%.2f", c / r) : "-"
            printf format, k[1], k[2], k[3], k[4], show(r), show(c), ratio,
                show(p99[order[i], "redis"], " ms"), show(p99[order[i], "chorus"], " ms")
        }
    }' "$RESULTS"
echo
echo "Memory after SETting $KEYS keys of ${VALUE_SIZE} bytes (resident set growth per key; Redis used_memory growth per key)"
awk -F'\t' '
    { if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
      rss[$1, $2] = $5; if ($2 == "redis") used[$1] = $8 }
    END {
        printf "%-10s %16s %18s %17s %9s\n", "durability", "redis RSS B/key", "redis used B/key", "chorus RSS B/key", "ratio"
        for (i = 1; i <= n; i++) {
            d = order[i]; r = rss[d, "redis"]; c = rss[d, "chorus"]
            ratio = (r > 0 && c != "") ? sprintf("%.2f", c / r) : "-"
            printf "%-10s %16s %18s %17s %9s\n", d, (r == "" ? "-" : r), (used[d] == "" ? "-" : used[d]),
                (c == "" ? "-" : c), ratio
        }
    }' "$MEMORY"

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/bench-vs-redis-$(date -u +%Y%m%dT%H%M%SZ).json"
{
    printf '{"started":"%s","host":"%s","bench_secs":%s,"keys":%s,"value_size":%s,"clients":%s,"seed":%s,' \
        "$STARTED" "$HOST" "$BENCH_SECS" "$KEYS" "$VALUE_SIZE" "$CLIENTS" "$SEED"
    printf '"cores":%s,"redis_version":"%s","chorus_commit":"%s",' "$(nproc)" \
        "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
    printf '"configs":{'
    first=1
    for durability in always everysec none; do
        ((first)) || printf ','
        first=0
        printf '"%s":{"redis":"%s","chorus":"%s"}' "$durability" "$(redis_args "$durability")" \
            "--fsync $(chorus_fsync "$durability")"
    done
    printf '},"results":['
    awk -F'\t' 'BEGIN { ORS = "" }
        { if (NR > 1) print ","
          printf "{\"durability\":\"%s\",\"server\":\"%s\",\"tool\":\"%s\",\"workload\":\"%s\",\"pipeline\":%s,", $1, $2, $3, $4, $5
          printf "\"ops_per_sec\":%s,\"p50_ms\":%s,\"p99_ms\":%s,\"errors\":%s}", $6, $7, $8, ($9 == "-" ? "null" : $9) }' "$RESULTS"
    printf '],"ratios":['
    awk -F'\t' 'BEGIN { ORS = "" }
        { key = $1 SUBSEP $3 SUBSEP $4 SUBSEP $5; if (!(key in seen)) { seen[key] = 1; order[++n] = key }; ops[key, $2] = $6 }
        END { m = 0
            for (i = 1; i <= n; i++) {
                r = ops[order[i], "redis"]; c = ops[order[i], "chorus"]
                if (r == "" || c == "" || r == 0) continue
                split(order[i], k, SUBSEP)
                if (m++) print ","
                printf "{\"durability\":\"%s\",\"tool\":\"%s\",\"workload\":\"%s\",\"pipeline\":%s,\"chorus_over_redis\":%.3f}", k[1], k[2], k[3], k[4], c / r
            } }' "$RESULTS"
    printf '],"memory":['
    awk -F'\t' 'BEGIN { ORS = "" }
        { if (NR > 1) print ","
          printf "{\"durability\":\"%s\",\"server\":\"%s\",\"rss_before_kb\":%s,\"rss_after_kb\":%s,\"rss_bytes_per_key\":%s,", $1, $2, $3, $4, $5
          printf "\"used_memory_bytes_per_key\":%s}", ($8 == "-" ? "null" : $8) }' "$MEMORY"
    printf '],"failures":%s}\n' "$FAILURES"
} >"$OUT"
echo
echo "JSON: $OUT"
if ((FAILURES > 0)); then
    log "$FAILURES step(s) failed; see the warnings above"
    exit 1
fi
