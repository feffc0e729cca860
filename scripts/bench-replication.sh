#!/usr/bin/env bash
# Compares replicated writes on loopback, in one run, on the same machine:
#
#   chorus   3 voters (`chorus server` x3), --fsync always on every node, under each commit rule
#            of DURABILITIES (async, semi-sync:1, quorum, all)
#   etcd     3 members (Debian's etcd-server), each with its own data dir; etcd fsyncs its WAL
#            before it acknowledges a write (no option turns that off)
#   redis    a primary + 2 replicas (redis-server), every SET followed by `WAIT <n> 0` in the same
#            round trip, with persistence `appendonly yes appendfsync always` on all three (the
#            match for "fsync on every write") and without persistence (the reference figure)
#
# Load: SET of VALUE_SIZE-byte values to random keys out of KEYS, closed loop, with each count of
# CLIENTS connections (throughput) and with 1 connection (latency), against the leader / primary.
#   chorus, redis  `chorus bench` (redis: `--wait-replicas N`)
#   etcd           `chorus bench --protocol etcd-http` (PUT through etcd's JSON gateway) and
#                  scripts/etcd_load.py (PUT over etcd's native gRPC API, Python grpcio); the
#                  ratios use the better etcd figure of the two (the one less favourable to chorus)
# Then the failover time of chorus (quorum, default timeouts): FAILOVER_RUNS times, a fresh group,
# a writer on the leader, kill -9 of the leader, time to the first acknowledged write through a
# survivor (scripts/chorus_failover.py).
#
# Prints a table with ratios to etcd and to Redis, and writes JSON under ./bench-results/.
# Everything listens on and connects to 127.0.0.1. Servers and temp dirs are removed on exit.
#
# Environment (all optional):
#   BENCH_SECS=10            measured seconds per run (WARMUP_SECS=1 unmeasured before each)
#   CLIENTS=50               connections of the throughput runs (latency runs use 1); a list
#                            ("50 200") runs each count and prints a table and the goals for each
#   VALUE_SIZE=64  KEYS=100000
#   DURABILITIES="async semi-sync:1 quorum all"
#   SYSTEMS="chorus etcd redis"
#   ETCD_TOOLS="http grpc"   http: chorus bench --protocol etcd-http; grpc: scripts/etcd_load.py
#   REDIS_WAITS="2 1"        replicas each WAIT waits for (2: both, 1: a majority with the primary)
#   REDIS_PERSISTENCE="aof-always none"
#   FAILOVER_RUNS=3          0 skips the failover measurement
#   SEED=1
#   CHORUS_PORT=7301 ETCD_PORT=23791 REDIS_PORT=6391   first client port of each system (3 each;
#                            chorus peer ports +100, admin +200; etcd peer ports +100)
#   CHORUS_BIN=path          use this chorus binary instead of building one (skips the build)
#   RESULTS_DIR=bench-results
set -euo pipefail

readonly HOST=127.0.0.1
readonly PORT_VARS=CHORUS_PORT/ETCD_PORT/REDIS_PORT
BENCH_SECS=${BENCH_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-1}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-64}
KEYS=${KEYS:-100000}
DURABILITIES=${DURABILITIES:-"async semi-sync:1 quorum all"}
SYSTEMS=${SYSTEMS:-"chorus etcd redis"}
ETCD_TOOLS=${ETCD_TOOLS:-"http grpc"}
REDIS_WAITS=${REDIS_WAITS:-"2 1"}
REDIS_PERSISTENCE=${REDIS_PERSISTENCE:-"aof-always none"}
FAILOVER_RUNS=${FAILOVER_RUNS:-3}
SEED=${SEED:-1}
CHORUS_PORT=${CHORUS_PORT:-7301}
ETCD_PORT=${ETCD_PORT:-23791}
REDIS_PORT=${REDIS_PORT:-6391}
RESULTS_DIR=${RESULTS_DIR:-bench-results}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

source "$ROOT/scripts/lib/bench-common.sh"

require_whole_numbers BENCH_SECS WARMUP_SECS VALUE_SIZE KEYS FAILOVER_RUNS SEED CHORUS_PORT ETCD_PORT REDIS_PORT
((BENCH_SECS > 0)) || die "BENCH_SECS must be at least 1"
[[ -n ${CLIENTS// /} ]] || die "CLIENTS must name at least one count"
for clients in $CLIENTS; do
    [[ $clients =~ ^[0-9]+$ ]] && ((clients > 0)) || die "CLIENTS must be whole numbers of at least 1, got '$clients'"
done
for durability in $DURABILITIES; do
    [[ $durability =~ ^(async|semi-sync:[0-9]+|quorum|all)$ ]] || die "unknown durability '$durability'"
done
for system in $SYSTEMS; do
    [[ $system =~ ^(chorus|etcd|redis)$ ]] || die "SYSTEMS may hold chorus, etcd and redis, got '$system'"
done
for tool in $ETCD_TOOLS; do [[ $tool =~ ^(http|grpc)$ ]] || die "ETCD_TOOLS may hold http and grpc, got '$tool'"; done
for wait in $REDIS_WAITS; do [[ $wait =~ ^[0-2]$ ]] || die "REDIS_WAITS may hold 0, 1 and 2, got '$wait'"; done
for p in $REDIS_PERSISTENCE; do [[ $p =~ ^(aof-always|none)$ ]] || die "unknown REDIS_PERSISTENCE '$p'"; done
has() { [[ " $1 " == *" $2 "* ]]; }

# --- tools -------------------------------------------------------------------------------------

sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
apt_updated=0
apt_install() {
    log "installing $* with apt-get"
    if ((!apt_updated)); then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
fi
if has "$SYSTEMS" etcd; then
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        apt_install etcd-server etcd-client
        # Debian's package enables a system etcd on 2379; ours use their own ports and dirs.
    fi
    if has "$ETCD_TOOLS" grpc && ! python3 -c 'import grpc' 2>/dev/null; then
        log "installing grpcio with pip (for scripts/etcd_load.py)"
        python3 -m pip install -q grpcio >/dev/null 2>&1 || die "cannot install grpcio; set ETCD_TOOLS=http"
    fi
fi

if [[ -n ${CHORUS_BIN:-} ]]; then
    [[ -x $CHORUS_BIN ]] || die "CHORUS_BIN=$CHORUS_BIN is not an executable"
else
    log "building chorus (release)"
    cargo build --release -p chorus
    CHORUS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/chorus
fi
"$CHORUS_BIN" bench --help 2>/dev/null | grep -q -- --wait-replicas ||
    die "$CHORUS_BIN bench has no --wait-replicas (build this checkout)"

# --- processes ---------------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-replication.XXXXXX")
PIDS=()     # servers
TOOL_PID="" # the load tool running now
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

# Runs a tool in the background (stdout in $TMP/out, stderr in $TMP/err) and waits for it, so an
# INT trap runs at once (see bench-vs-redis.sh); `timeout` bounds a tool that hangs.
run_tool() {
    timeout -k 5 $((BENCH_SECS * 3 + WARMUP_SECS + 120)) "$@" >"$TMP/out" 2>"$TMP/err" &
    TOOL_PID=$!
    local status=0
    wait "$TOOL_PID" || status=$?
    TOOL_PID=""
    return "$status"
}

# Starts a fresh 3-voter chorus group with durability $1; sets NODE_PIDS and LEADER_PORT.
start_chorus() {
    local durability=$1 dir="$TMP/chorus-${1//:/-}-$RANDOM" i cluster=""
    for i in 1 2 3; do cluster+="${cluster:+,}$i=$HOST:$((CHORUS_PORT + 99 + i))"; done
    local ports=()
    for i in 1 2 3; do ports+=($((CHORUS_PORT + i - 1)) $((CHORUS_PORT + 99 + i)) $((CHORUS_PORT + 199 + i))); done
    check_ports_free "${ports[@]}"
    NODE_PIDS=()
    for i in 1 2 3; do
        mkdir -p "$dir/node$i"
        "$CHORUS_BIN" server --id "$i" --data-dir "$dir/node$i" --client-addr "$HOST:$((CHORUS_PORT + i - 1))" \
            --peer-addr "$HOST:$((CHORUS_PORT + 99 + i))" --admin-addr "$HOST:$((CHORUS_PORT + 199 + i))" \
            --initial-cluster "$cluster" --durability "$durability" --fsync always >"$dir/node$i.log" 2>&1 &
        NODE_PIDS+=($!)
        PIDS+=($!)
    done
    for i in 1 2 3; do
        wait_for_ping $((CHORUS_PORT + i - 1)) "${NODE_PIDS[i - 1]}" "$dir/node$i.log" || return 1
    done
    LEADER_PORT=""
    for _ in $(seq 300); do
        for i in 1 2 3; do
            if redis-cli -h "$HOST" -p $((CHORUS_PORT + i - 1)) info replication 2>/dev/null | tr -d '\r' |
                grep -qx 'chorus_role:leader'; then
                LEADER_PORT=$((CHORUS_PORT + i - 1))
                return 0
            fi
        done
        sleep 0.1
    done
    log "chorus ($durability): no leader within 30 s"
    return 1
}

# Starts a fresh 3-member etcd cluster; sets LEADER_PORT (the leader's client port).
start_etcd() {
    local dir="$TMP/etcd-$RANDOM" i cluster="" endpoints="" pids=()
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://$HOST:$((ETCD_PORT + 99 + i))"
        endpoints+="${endpoints:+,}$HOST:$((ETCD_PORT + i - 1))"
    done
    local ports=()
    for i in 1 2 3; do ports+=($((ETCD_PORT + i - 1)) $((ETCD_PORT + 99 + i))); done
    check_ports_free "${ports[@]}"
    for i in 1 2 3; do
        mkdir -p "$dir/m$i"
        etcd --name "m$i" --data-dir "$dir/m$i" \
            --listen-client-urls "http://$HOST:$((ETCD_PORT + i - 1))" --advertise-client-urls "http://$HOST:$((ETCD_PORT + i - 1))" \
            --listen-peer-urls "http://$HOST:$((ETCD_PORT + 99 + i))" --initial-advertise-peer-urls "http://$HOST:$((ETCD_PORT + 99 + i))" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench-replication \
            >"$dir/m$i.log" 2>&1 &
        pids+=($!)
        PIDS+=($!)
    done
    LEADER_PORT=""
    for _ in $(seq 300); do
        for i in 1 2 3; do
            if ! kill -0 "${pids[i - 1]}" 2>/dev/null; then
                log "etcd member m$i exited at start; the end of its log:"
                tail -n 20 "$dir/m$i.log" >&2 || true
                return 1
            fi
        done
        LEADER_PORT=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=1s endpoint status -w json 2>/dev/null |
            python3 -c '
import json, sys
for e in json.load(sys.stdin):
    s = e["Status"]
    if s.get("leader") and s["leader"] == s["header"]["member_id"]:
        print(e["Endpoint"].rsplit(":", 1)[1])
' 2>/dev/null || true)
        [[ -n $LEADER_PORT ]] && return 0
        sleep 0.1
    done
    log "etcd: no leader within 30 s"
    return 1
}

# Starts a fresh Redis primary (REDIS_PORT) + 2 replicas with persistence $1; waits until both
# replicas are online.
start_redis() {
    local persistence=$1 dir="$TMP/redis-$1-$RANDOM" i port pid args
    case $persistence in
        aof-always) args=(--appendonly yes --appendfsync always) ;;
        none) args=(--appendonly no) ;;
    esac
    check_ports_free "$REDIS_PORT" $((REDIS_PORT + 1)) $((REDIS_PORT + 2))
    for i in 0 1 2; do
        port=$((REDIS_PORT + i))
        mkdir -p "$dir/r$i"
        local replica=()
        ((i == 0)) || replica=(--replicaof "$HOST" "$REDIS_PORT")
        redis-server --port "$port" --bind "$HOST" --dir "$dir/r$i" --save "" "${args[@]}" "${replica[@]}" \
            --logfile "$dir/r$i.log" >/dev/null 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_for_ping "$port" "$pid" "$dir/r$i.log" || return 1
    done
    for _ in $(seq 300); do
        if [[ $(redis-cli -h "$HOST" -p "$REDIS_PORT" info replication | tr -d '\r' | grep -c 'state=online') == 2 ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "redis: the replicas did not come online within 30 s"
    return 1
}

# --- measurements ------------------------------------------------------------------------------

RESULTS="$TMP/results.tsv" # system config tool clients ops p50_ms p99_ms errors extra
FAILOVERS="$TMP/failover.tsv"
: >"$RESULTS"
: >"$FAILOVERS"
FAILURES=0

# Records the JSON report in $TMP/out of a run of system $1, config $2, tool $3, clients $4.
record() {
    local system=$1 config=$2 tool=$3 clients=$4 out ops p50 p99 errors extra=""
    out=$(<"$TMP/out")
    ops=$(awk -v x="$(json_field ops_per_sec "$out")" 'BEGIN { printf "%.0f", x }')
    p50=$(awk -v x="$(json_field p50_us "$out")" 'BEGIN { printf "%.3f", x / 1000 }')
    p99=$(awk -v x="$(json_field p99_us "$out")" 'BEGIN { printf "%.3f", x / 1000 }')
    errors=$(json_field errors "$out")
    if [[ $tool == grpc ]]; then extra="client_cpu=$(awk -v x="$(json_field client_cpu "$out")" 'BEGIN { printf "%.2f", x }')"; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$system" "$config" "$tool" "$clients" "$ops" "$p50" "$p99" \
        "$errors" "${extra:--}" >>"$RESULTS"
    log "  $tool, $clients clients: $ops ops/s, p50 $p50 ms, p99 $p99 ms, $errors errors${extra:+, $extra}"
    if [[ $errors != 0 ]]; then fail "$system $config: $errors errors: $(json_field first_error "$out")"; fi
}

# chorus bench against port $5 for (system $1, config $2, tool-name $3, clients $4) + extra flags.
run_chorus_bench() {
    local system=$1 config=$2 tool=$3 clients=$4 port=$5
    shift 5
    if run_tool "$CHORUS_BIN" bench --host "$HOST" --port "$port" --workload set --clients "$clients" \
        --value-size "$VALUE_SIZE" --keys "$KEYS" --duration "$BENCH_SECS" --warmup "$WARMUP_SECS" --seed "$SEED" \
        --json "$@"; then
        record "$system" "$config" "$tool" "$clients"
    else
        fail "$system $config: chorus bench ($clients clients) failed: $(tail -n 3 "$TMP/err")"
    fi
}

run_etcd_grpc() {
    local clients=$1 port=$2
    if run_tool python3 "$ROOT/scripts/etcd_load.py" --addr "$HOST:$port" --clients "$clients" \
        --value-size "$VALUE_SIZE" --keys "$KEYS" --duration "$BENCH_SECS" --warmup "$WARMUP_SECS" --seed "$SEED"; then
        record etcd default grpc "$clients"
    else
        fail "etcd: etcd_load.py ($clients clients) failed: $(tail -n 3 "$TMP/err")"
    fi
}

runs=0
loads=$(($(wc -w <<<"$CLIENTS") + 1))
has "$SYSTEMS" chorus && runs=$((runs + loads * $(wc -w <<<"$DURABILITIES")))
has "$SYSTEMS" etcd && runs=$((runs + loads * $(wc -w <<<"$ETCD_TOOLS")))
has "$SYSTEMS" redis && runs=$((runs + loads * $(wc -w <<<"$REDIS_WAITS") * $(wc -w <<<"$REDIS_PERSISTENCE")))
log "about $(((runs * (BENCH_SECS + WARMUP_SECS + 3) + FAILOVER_RUNS * 8) / 60 + 1)) minutes: $runs runs of ${BENCH_SECS} s" \
    "(+${WARMUP_SECS} s warmup), ${CLIENTS// /, } and 1 clients, ${VALUE_SIZE}-byte values, $FAILOVER_RUNS failovers"

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# The cost of one small append + fdatasync on the disk the servers use, for context: every system
# here pays it per write (or per group of writes) on each node.
SYNC_PROBE=$(cd "$TMP" && python3 -c '
import os, time
fd = os.open("sync-probe", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
lat = []
for i in range(200):
    os.pwrite(fd, b"x" * 100, i * 100)
    t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
os.close(fd); os.unlink("sync-probe"); lat.sort()
print("%.3f ms p50, %.3f ms p90" % (lat[100] * 1e3, lat[180] * 1e3))')
log "disk: one 100-byte append + fdatasync (Python, serial) takes $SYNC_PROBE"

if has "$SYSTEMS" chorus; then
    for durability in $DURABILITIES; do
        log "== chorus, 3 voters, --durability $durability --fsync always"
        if ! start_chorus "$durability"; then
            fail "chorus ($durability) did not start"
            stop_all
            continue
        fi
        log "  leader on port $LEADER_PORT"
        for clients in $CLIENTS 1; do
            run_chorus_bench chorus "$durability" chorus-bench "$clients" "$LEADER_PORT"
        done
        stop_all
    done
fi

if has "$SYSTEMS" etcd; then
    log "== etcd $(etcd --version | sed -n 's/^etcd Version: //p'), 3 members"
    if start_etcd; then
        log "  leader on port $LEADER_PORT"
        for clients in $CLIENTS 1; do
            if has "$ETCD_TOOLS" http; then
                run_chorus_bench etcd default http "$clients" "$LEADER_PORT" --protocol etcd-http
            fi
            if has "$ETCD_TOOLS" grpc; then run_etcd_grpc "$clients" "$LEADER_PORT"; fi
        done
    else
        fail "etcd did not start"
    fi
    stop_all
fi

if has "$SYSTEMS" redis; then
    for persistence in $REDIS_PERSISTENCE; do
        log "== redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), primary + 2 replicas, persistence $persistence"
        if ! start_redis "$persistence"; then
            fail "redis ($persistence) did not start"
            stop_all
            continue
        fi
        for wait in $REDIS_WAITS; do
            for clients in $CLIENTS 1; do
                run_chorus_bench redis "$persistence" "wait$wait" "$clients" "$REDIS_PORT" --wait-replicas "$wait"
            done
        done
        stop_all
    done
fi

if ((FAILOVER_RUNS > 0)) && has "$SYSTEMS" chorus; then
    for run in $(seq "$FAILOVER_RUNS"); do
        log "== chorus failover $run/$FAILOVER_RUNS (quorum, default timeouts)"
        if ! start_chorus quorum; then
            fail "chorus (failover run $run) did not start"
            stop_all
            continue
        fi
        # Let the followers catch up and the group settle before the writer starts.
        sleep 1
        pid_list=$(IFS=,; echo "${NODE_PIDS[*]}")
        # 2>/dev/null: bash reports the leader it reaps during the wait as "Killed", which is the point.
        if run_tool python3 "$ROOT/scripts/chorus_failover.py" --ports "$CHORUS_PORT,$((CHORUS_PORT + 1)),$((CHORUS_PORT + 2))" \
            --pids "$pid_list" 2>/dev/null; then
            out=$(<"$TMP/out")
            ms=$(json_field failover_ms "$out")
            printf '%s\t%s\t%s\n' "$run" "$ms" "$(json_field gap_ms "$out")" >>"$FAILOVERS"
            log "  $out"
        else
            fail "failover run $run: $(tail -n 3 "$TMP/out" "$TMP/err")"
        fi
        stop_all
    done
fi

# --- report ------------------------------------------------------------------------------------

echo
echo "Replicated SET on $HOST, ${VALUE_SIZE}-byte values, $KEYS keys, ${BENCH_SECS} s per run, $(nproc) cores"
echo "  chorus: 3 voters, --fsync always on every node; etcd: 3 members (fsync per write);"
echo "  redis: primary + 2 replicas, SET + WAIT n 0 per op; aof-always = appendonly yes appendfsync always"
echo "  etcd tools: http = chorus bench --protocol etcd-http (JSON gateway), grpc = etcd_load.py (native gRPC)"
echo "  ratios: x etcd = against the better etcd tool (higher ops/s, lower p50); x redis = against redis wait2 without"
echo "          persistence (the replication issue's reference), or with aof-always when only that ran"
echo "  disk: one 100-byte append + fdatasync from a serial Python loop: $SYNC_PROBE"
echo
for C in $CLIENTS; do
awk -F'\t' -v C="$C" '
    { key = $1 " " $2 " " $3
      if (!(key in seen)) { seen[key] = 1; order[++n] = key; sys[key] = $1; cfg[key] = $2; tool[key] = $3 }
      ops[key, $4] = $5; p50[key, $4] = $6; p99[key, $4] = $7
      if ($9 != "-") extra[key] = extra[key] " " $9
      if ($1 == "etcd") {
          if ($4 == C && $5 > etcd_ops) etcd_ops = $5
          if ($4 == 1 && (etcd_p50 == "" || $6 < etcd_p50)) etcd_p50 = $6
      }
      if ($1 == "redis" && $3 == "wait2" && $4 == C) {
          if ($2 == "none") redis_none = $5
          if ($2 == "aof-always") redis_aof = $5
      }
    }
    function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2fx", a / b) : "-" }
    function v(x, u) { return x == "" ? "-" : x u }
    END {
        redis_ops = redis_none != "" ? redis_none : redis_aof
        f = "%-6s %-12s %-12s | %9s %8s %8s %7s %7s | %8s %8s %8s %7s\n"
        printf f, "system", "config", "tool", C " cl op/s", "p50 ms", "p99 ms", "x etcd", "x redis", "1 cl op/s", "p50 ms", "p99 ms", "x etcd"
        for (i = 1; i <= n; i++) {
            k = order[i]
            printf f, sys[k], cfg[k], tool[k], v(ops[k, C]), v(p50[k, C]), v(p99[k, C]), r(ops[k, C], etcd_ops),
                r(ops[k, C], redis_ops), v(ops[k, 1]), v(p50[k, 1]), v(p99[k, 1]), r(p50[k, 1], etcd_p50)
            if (extra[k] != "") printf "         (%s)\n", substr(extra[k], 2)
        }
    }' "$RESULTS"
echo
done

# The median failover time (empty when none was measured), printed below and judged in the goals.
FAILOVER_MEDIAN=$(cut -f2 "$FAILOVERS" | sort -n | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
if [[ -s $FAILOVERS ]]; then
    echo
    echo "Chorus failover (quorum, kill -9 of the leader to the first acknowledged write through a survivor):"
    awk -F'\t' '{ printf "  run %s: %s ms (gap since the last write before the kill: %s ms)\n", $1, $2, $3 }' "$FAILOVERS"
    echo "  median: $FAILOVER_MEDIAN ms"
fi

# The goals of the replication issue, for the quorum rule: the throughput goals at each client
# count, then the latency and failover goals once.
echo
echo "Goals (chorus quorum, fsync always on every node):"
last_count=$(wc -w <<<"$CLIENTS")
count=0
for C in $CLIENTS; do
count=$((count + 1))
awk -F'\t' -v C="$C" -v last="$((count == last_count))" -v failover="$FAILOVER_MEDIAN" '
    $1 == "etcd" && $4 == C && $5 > etcd_ops { etcd_ops = $5 }
    $1 == "etcd" && $4 == 1 && (etcd_p50 == "" || $6 < etcd_p50) { etcd_p50 = $6 }
    $1 == "redis" && $4 == C { redis[$2 " + " $3] = $5 }
    $1 == "chorus" && $2 == "quorum" && $4 == C { q_ops = $5 }
    $1 == "chorus" && $2 == "quorum" && $4 == 1 { q_p50 = $6 }
    function goal(name, value, ok) { printf "  %-64s %-28s %s\n", name, value, ok }
    END {
        if (q_ops != "" && etcd_ops > 0)
            goal("throughput at " C " clients >= 5x etcd", sprintf("%.2fx", q_ops / etcd_ops), q_ops >= 5 * etcd_ops ? "met" : "NOT met")
        # The issue states this goal against Redis without persistence and WAIT 2; the others are
        # printed for reference.
        for (w in redis) if (q_ops != "" && redis[w] > 0)
            goal("throughput at " C " clients >= 0.8x redis " w (w == "none + wait2" ? "" : " (reference)"), sprintf("%.2fx", q_ops / redis[w]), q_ops >= 0.8 * redis[w] ? "met" : "NOT met")
        if (!last) exit
        if (q_p50 != "" && etcd_p50 > 0)
            goal("1-client p50 latency <= 0.5x etcd", sprintf("%.2fx (%s vs %s ms)", q_p50 / etcd_p50, q_p50, etcd_p50), q_p50 <= 0.5 * etcd_p50 ? "met" : "NOT met")
        if (failover != "")
            goal("failover (median) < 2 s", failover " ms", failover < 2000 ? "met" : "NOT met")
    }' "$RESULTS"
done

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/bench-replication-$(date -u +%Y%m%dT%H%M%SZ).json"
{
    printf '{"started":"%s","host":"%s","bench_secs":%s,"warmup_secs":%s,"clients":[%s],"value_size":%s,"keys":%s,' \
        "$STARTED" "$HOST" "$BENCH_SECS" "$WARMUP_SECS" "$(tr -s ' ' ',' <<<"$(echo $CLIENTS)")" "$VALUE_SIZE" "$KEYS"
    printf '"cores":%s,"sync_probe":"%s","chorus_commit":"%s","results":[' "$(nproc)" "$SYNC_PROBE" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
    awk -F'\t' 'BEGIN { ORS = "" }
        { if (NR > 1) print ","
          printf "{\"system\":\"%s\",\"config\":\"%s\",\"tool\":\"%s\",\"clients\":%s,\"ops_per_sec\":%s,", $1, $2, $3, $4, $5
          printf "\"p50_ms\":%s,\"p99_ms\":%s,\"errors\":%s}", $6, $7, ($8 == "" ? "null" : $8) }' "$RESULTS"
    printf '],"failover_ms":['
    cut -f2 "$FAILOVERS" | paste -sd, -
    printf '],"failures":%s}\n' "$FAILURES"
} | tr -d '\n' >"$OUT"
echo >>"$OUT"
echo
echo "JSON: $OUT"
if ((FAILURES > 0)); then
    log "$FAILURES step(s) failed; see the warnings above"
    exit 1
fi
