//! `chorus bench`: a closed-loop load generator for any server that speaks RESP (Chorus or Redis).
//!
//! Each client is one tokio task holding one TCP connection. It sends `--pipeline` requests at once,
//! then reads as many replies. The latency of a request is the time from sending its batch to
//! receiving its reply, which is how `redis-benchmark` measures it, so the numbers of both tools
//! compare (`scripts/bench-vs-redis.sh` runs both against Chorus and Redis).
//!
//! ```text
//!   connect every client ──► AUTH ──► preload (optional, unmeasured) ──► warmup ──► measured ──► report
//! ```
//!
//! `--wait-replicas N` pipelines `WAIT N 0` behind every SET (Redis primary + replicas, one op per
//! pair); `--protocol etcd-http` sends the SETs as etcd v3 JSON-gateway PUTs instead of RESP
//! (`scripts/bench-replication.sh` uses both).
//!
//! Keys are drawn by a seeded splitmix64 per client (the seeds come from `--seed`), so the key
//! sequence of a run is replayed by its seed, independent of any crate's random API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use bytes::{Bytes, BytesMut};
use chorus_resp::{Reply, encode_request, parse_reply};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Clients (connections) at most: Redis's default `maxclients` is 10000.
const CLIENTS_MAX: usize = 10_000;
/// Requests in flight per connection at most.
const PIPELINE_MAX: usize = 10_000;
/// Value size at most: Redis's default `proto-max-bulk-len` (512 MiB).
const VALUE_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Seconds of run time at most (`--duration`, `--warmup`): one day.
const SECONDS_MAX: f64 = 86_400.0;
/// Digits a key index is zero-padded to at most (u64::MAX has 20).
const KEY_DIGITS_MAX: usize = 20;
/// SETs sent per batch while preloading.
const PRELOAD_BATCH: usize = 256;
/// Initial size of each connection's read and write buffers, and the read buffer's growth step.
const BUFFER_BYTES: usize = 64 * 1024;
/// Free space the read buffer gets before each read.
const READ_BYTES_MIN: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A run fails when no reply at all arrives for this long: a hung server must not hang the bench.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Latencies are clamped to one hour (in microseconds) before they are recorded.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits kept by the latency histograms.
const LATENCY_SIGFIG: u8 = 3;
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Run time when neither `--duration` nor `--requests` is given.
const DURATION_DEFAULT_S: f64 = 10.0;

/// Load generator: many connections sending SET/GET/INCR to one server, reporting throughput and
/// latency percentiles (latency = time from sending a pipelined batch to receiving each reply).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server host name or IP address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Server client port.
    #[arg(long, default_value_t = 7001)]
    pub port: u16,

    /// Server address as HOST:PORT (instead of --host and --port).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["host", "port"])]
    pub addr: Option<String>,

    /// Password: sends `AUTH <password>` on every connection before the run.
    #[arg(long)]
    pub password: Option<String>,

    /// A command sent on every connection before the run (after AUTH), split on whitespace, e.g.
    /// `--on-connect "CHORUS.QUORUM 3 1 1"` for a leaderless cluster's per-connection n/w/r.
    /// An error reply stops the benchmark.
    #[arg(long, value_name = "COMMAND")]
    pub on_connect: Option<String>,

    /// What each request does. `mixed` sends GET with probability --read-ratio, SET otherwise;
    /// `incr` sends INCR to `counter:<n>` keys (so it does not collide with the string values of
    /// the other workloads).
    #[arg(long, value_enum, default_value_t = Workload::Set)]
    pub workload: Workload,

    /// Fraction of GETs in the `mixed` workload, from 0 to 1.
    #[arg(long, default_value_t = 0.9, value_name = "RATIO")]
    pub read_ratio: f64,

    /// Size of the key space: keys are `key:000000000` to `key:<N-1>`, chosen uniformly at random.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub keys: u64,

    /// Digits the key index is zero-padded to (12 gives redis-benchmark's `-r` keys,
    /// `key:000000000123`, so both tools can share a preloaded key space).
    #[arg(long, default_value_t = 9, value_name = "N")]
    pub key_digits: usize,

    /// Size of each SET value in bytes.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub value_size: usize,

    /// Concurrent connections, each one tokio task.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub clients: usize,

    /// Requests each connection sends before reading their replies.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pipeline: usize,

    /// Measured run time in seconds [default: 10, or no time limit when --requests is given].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Stop after this many measured requests in total (with --duration too: whichever comes first).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,

    /// Seconds of load before measuring starts (requests sent then are not counted).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub warmup: f64,

    /// SET every key of the key space first (pipelined, not measured), so GETs hit.
    /// For `incr` the counters are set to 0.
    #[arg(long)]
    pub preload: bool,

    /// Preload every key, then exit without a measured run (e.g. to measure memory per key).
    #[arg(long)]
    pub preload_only: bool,

    /// Seed of the key choice [default: from the clock; the seed used is printed].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Threads of the load generator's runtime (1, like redis-benchmark, leaves the other cores
    /// to the server on a small machine).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,

    /// After each SET send `WAIT <N> 0` in the same round trip (pipelined behind it): the op is
    /// the pair, its latency ends at WAIT's reply, and a WAIT that counts fewer than N replicas is
    /// an error. For Redis primary + replicas, to compare with replicated commit rules.
    #[arg(long, value_name = "N")]
    pub wait_replicas: Option<u32>,

    /// Wire protocol: `resp` (Redis, Chorus) or `etcd-http` (etcd v3's JSON gateway: every SET
    /// becomes `POST /v3/kv/put` with base64 key and value on a keep-alive HTTP/1.1 connection;
    /// only the `set` workload, no --password, --preload or --wait-replicas).
    #[arg(long, value_enum, default_value_t = Protocol::Resp)]
    pub protocol: Protocol,

    /// Emulated one-way network delay (ms) between this client and the server, each way: every
    /// batch waits this long before it is sent and after its replies arrive, and its latency counts
    /// both (a client in another datacenter than the server).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub client_delay_ms: u64,

    /// Also measure replication visibility: a probe writes a fresh value through the benchmarked
    /// server every --visibility-interval-ms and polls GET on this address (a node of another
    /// datacenter, say) until it shows; reports the lag from the write's send to its visibility.
    #[arg(long, value_name = "HOST:PORT")]
    pub visibility_addr: Option<String>,

    /// Milliseconds between two visibility probes.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub visibility_interval_ms: u64,

    /// Print one JSON object at the end instead of the table (implies --no-progress).
    #[arg(long)]
    pub json: bool,

    /// Do not show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp,
    EtcdHttp,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Set,
    Get,
    Mixed,
    Incr,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Incr => "incr",
        }
    }

    fn key_prefix(self) -> &'static [u8] {
        match self {
            Workload::Incr => b"counter:",
            Workload::Set | Workload::Get | Workload::Mixed => b"key:",
        }
    }
}

/// Runs the benchmark described by `args` on a runtime of its own and prints the report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args, clock_seed())?;
    let runtime = if plan.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(plan.threads).enable_all().build()
    }
    .context("cannot start the tokio runtime")?;
    let Some(report) = runtime.block_on(bench(Arc::new(plan)))? else {
        return Ok(());
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).context("cannot encode the report as JSON")?);
    } else {
        print!("{}", report.render_table());
    }
    Ok(())
}

/// The arguments, checked and resolved: what the run will do.
#[derive(Debug, Clone)]
struct Plan {
    addr: String,
    password: Option<String>,
    on_connect: Vec<String>,
    workload: Workload,
    read_ratio: f64,
    keys: u64,
    key_digits: usize,
    value: Bytes,
    clients: usize,
    pipeline: usize,
    duration: Option<Duration>,
    requests: Option<u64>,
    warmup: Duration,
    preload: bool,
    preload_only: bool,
    seed: u64,
    threads: usize,
    progress: bool,
    verbose: bool,
    wait_replicas: Option<u32>,
    protocol: Protocol,
    client_delay: Duration,
    visibility_addr: Option<String>,
    visibility_interval: Duration,
}

impl Plan {
    /// Checks `args`; `clock_seed` is the seed used when `--seed` is absent.
    fn from_args(args: &BenchArgs, clock_seed: u64) -> anyhow::Result<Plan> {
        ensure!((1..=CLIENTS_MAX).contains(&args.clients), "--clients must be between 1 and {CLIENTS_MAX}");
        ensure!((1..=PIPELINE_MAX).contains(&args.pipeline), "--pipeline must be between 1 and {PIPELINE_MAX}");
        ensure!(args.keys >= 1, "--keys must be at least 1");
        ensure!((1..=KEY_DIGITS_MAX).contains(&args.key_digits), "--key-digits must be between 1 and {KEY_DIGITS_MAX}");
        ensure!(args.value_size <= VALUE_BYTES_MAX, "--value-size must be at most {VALUE_BYTES_MAX} bytes");
        ensure!((0.0..=1.0).contains(&args.read_ratio), "--read-ratio must be between 0 and 1");
        ensure!((1..=64).contains(&args.threads), "--threads must be between 1 and 64");
        if let Some(requests) = args.requests {
            ensure!(requests >= 1, "--requests must be at least 1");
        }
        if args.wait_replicas.is_some() {
            ensure!(args.workload == Workload::Set, "--wait-replicas needs --workload set");
        }
        if args.visibility_addr.is_some() {
            ensure!(args.protocol == Protocol::Resp, "--visibility-addr needs --protocol resp");
        }
        if args.protocol == Protocol::EtcdHttp {
            ensure!(args.workload == Workload::Set, "--protocol etcd-http needs --workload set");
            ensure!(
                args.password.is_none() && !args.preload && !args.preload_only && args.wait_replicas.is_none(),
                "--protocol etcd-http takes no --password, --preload, --preload-only or --wait-replicas"
            );
        }
        let duration = match (args.duration, args.requests) {
            (Some(seconds), _) => Some(seconds_arg("--duration", seconds, false)?),
            (None, None) => Some(Duration::from_secs_f64(DURATION_DEFAULT_S)),
            (None, Some(_)) => None,
        };
        let warmup = seconds_arg("--warmup", args.warmup, true)?;
        let addr = match &args.addr {
            Some(addr) => {
                ensure!(
                    addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
                    "--addr must be HOST:PORT, got {addr:?}"
                );
                addr.clone()
            }
            None if args.host.contains(':') && !args.host.starts_with('[') => format!("[{}]:{}", args.host, args.port),
            None => format!("{}:{}", args.host, args.port),
        };
        let value = match args.workload {
            Workload::Incr => Bytes::from_static(b"0"),
            Workload::Set | Workload::Get | Workload::Mixed => Bytes::from(vec![b'x'; args.value_size]),
        };
        Ok(Plan {
            addr,
            password: args.password.clone(),
            on_connect: args
                .on_connect
                .iter()
                .flat_map(|command| command.split_whitespace())
                .map(String::from)
                .collect(),
            workload: args.workload,
            read_ratio: args.read_ratio,
            keys: args.keys,
            key_digits: args.key_digits,
            value,
            clients: args.clients,
            pipeline: args.pipeline,
            duration,
            requests: args.requests,
            warmup,
            preload: args.preload || args.preload_only,
            preload_only: args.preload_only,
            seed: args.seed.unwrap_or(clock_seed),
            threads: args.threads,
            progress: !args.no_progress && !args.json,
            verbose: !args.json,
            wait_replicas: args.wait_replicas,
            protocol: args.protocol,
            client_delay: Duration::from_millis(args.client_delay_ms),
            visibility_addr: args.visibility_addr.clone(),
            visibility_interval: Duration::from_millis(args.visibility_interval_ms.max(1)),
        })
    }

    /// Appends the next request of `rng`'s sequence to `out`, using `key` as scratch space, and
    /// returns which command it is (to check its reply).
    fn encode_next(&self, rng: &mut SplitMix64, key: &mut Vec<u8>, out: &mut BytesMut) -> Op {
        let op = match self.workload {
            Workload::Set => Op::Set,
            Workload::Get => Op::Get,
            Workload::Incr => Op::Incr,
            Workload::Mixed if rng.next_f64() < self.read_ratio => Op::Get,
            Workload::Mixed => Op::Set,
        };
        write_key(self.workload.key_prefix(), rng.below(self.keys), self.key_digits, key);
        if self.protocol == Protocol::EtcdHttp {
            encode_etcd_put(&self.addr, key, &self.value, out);
            return op;
        }
        match op {
            Op::Set if self.wait_replicas.is_some() => {
                encode_request(&[b"SET".as_slice(), key, &self.value], out);
                let replicas = self.wait_replicas.unwrap_or(0).to_string();
                encode_request(&["WAIT", &replicas, "0"], out);
            }
            Op::Set => encode_request(&[b"SET".as_slice(), key, &self.value], out),
            Op::Get => encode_request(&[b"GET".as_slice(), key], out),
            Op::Incr => encode_request(&[b"INCR".as_slice(), key], out),
        }
        op
    }

    /// Replies that answer one request: 2 for SET + WAIT, else 1.
    fn replies_per_request(&self) -> usize {
        if self.wait_replicas.is_some() { 2 } else { 1 }
    }

    /// The seed of each client's generator, drawn in client order from one seeded by `--seed`.
    fn client_seeds(&self) -> Vec<u64> {
        let mut master = SplitMix64::new(self.seed);
        (0..self.clients).map(|_| master.next_u64()).collect()
    }
}

/// `seconds` as a Duration, or an error naming `flag`.
fn seconds_arg(flag: &str, seconds: f64, zero_ok: bool) -> anyhow::Result<Duration> {
    ensure!(seconds.is_finite() && seconds <= SECONDS_MAX, "{flag} must be at most {SECONDS_MAX} seconds");
    if zero_ok {
        ensure!(seconds >= 0.0, "{flag} must not be negative");
    } else {
        ensure!(seconds > 0.0, "{flag} must be more than 0 seconds");
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn clock_seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    SplitMix64::new(nanos as u64).next_u64()
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and a stable sequence for every seed.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` by multiply-shift (Lemire); the bias, under n / 2^64, is immaterial here.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`, 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Writes `<prefix><index>` to `out`, the index zero-padded to `width` digits (wider if it needs
/// more), like redis-benchmark's `key:000000000123` keys.
fn write_key(prefix: &[u8], index: u64, width: usize, out: &mut Vec<u8>) {
    let mut digits = [b'0'; KEY_DIGITS_MAX];
    let mut rest = index;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.clear();
    out.extend_from_slice(prefix);
    out.extend_from_slice(&digits[start.min(digits.len() - width.min(KEY_DIGITS_MAX))..]);
}

/// Headers of an HTTP response larger than this are refused (etcd's are a few hundred bytes).
const HTTP_HEADER_BYTES_MAX: usize = 64 * 1024;

/// Appends etcd v3's JSON-gateway request `POST /v3/kv/put {"key":..,"value":..}` (base64 key
/// and value) to `out`.
fn encode_etcd_put(host: &str, key: &[u8], value: &[u8], out: &mut BytesMut) {
    let mut body = Vec::with_capacity(32 + (key.len() + value.len()) * 4 / 3);
    body.extend_from_slice(b"{\"key\":\"");
    base64_encode(key, &mut body);
    body.extend_from_slice(b"\",\"value\":\"");
    base64_encode(value, &mut body);
    body.extend_from_slice(b"\"}");
    out.extend_from_slice(b"POST /v3/kv/put HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
}

/// Standard base64 (RFC 4648, with padding).
fn base64_encode(input: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63]);
        out.push(ALPHABET[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 { ALPHABET[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if chunk.len() > 2 { ALPHABET[n as usize & 63] } else { b'=' });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Parses one HTTP/1.1 response from the front of `buf`, removing it: a 2xx status becomes
/// `+OK`, any other an error reply with the status and body. `Ok(None)` when incomplete.
fn parse_http_response(buf: &mut BytesMut) -> anyhow::Result<Option<Reply>> {
    let Some(header_end) = find(buf, b"\r\n\r\n") else {
        ensure!(
            buf.len() <= HTTP_HEADER_BYTES_MAX,
            "the server sent more than {HTTP_HEADER_BYTES_MAX} bytes of HTTP headers"
        );
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("HTTP headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().with_context(|| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body_start = header_end + 4;
    let (body, end) = if chunked {
        let mut body = Vec::new();
        let mut at = body_start;
        loop {
            let Some(line_len) = find(&buf[at..], b"\r\n") else { return Ok(None) };
            let size_text = std::str::from_utf8(&buf[at..at + line_len]).context("chunk size is not UTF-8")?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).with_context(|| format!("bad chunk size {size_text:?}"))?;
            at += line_len + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    let Some(line_len) = find(&buf[at..], b"\r\n") else { return Ok(None) };
                    at += line_len + 2;
                    if line_len == 0 {
                        break;
                    }
                }
                break (body, at);
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else {
        let length = match length {
            Some(length) => length,
            None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
            None => bail!("HTTP response {status} has neither Content-Length nor chunked encoding"),
        };
        if buf.len() < body_start + length {
            return Ok(None);
        }
        (buf[body_start..body_start + length].to_vec(), body_start + length)
    };
    let _ = buf.split_to(end);
    if (200..300).contains(&status) {
        Ok(Some(Reply::Status("OK")))
    } else {
        Ok(Some(Reply::Error(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()))))
    }
}

/// The command of a request, to know which reply is a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Get,
    Incr,
}

/// What a reply says about its request.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    /// A GET of a key that does not exist.
    Miss,
    Error(String),
}

fn classify(op: Op, reply: Reply) -> Outcome {
    match (op, reply) {
        (_, Reply::Error(text)) => Outcome::Error(text),
        (Op::Set, Reply::StatusOwned(status)) if status == "OK" => Outcome::Ok,
        (Op::Set, Reply::Status("OK")) => Outcome::Ok,
        (Op::Get, Reply::Bulk(_) | Reply::Verbatim(_)) => Outcome::Ok,
        (Op::Get, Reply::Null) => Outcome::Miss,
        (Op::Incr, Reply::Integer(_)) => Outcome::Ok,
        (op, other) => Outcome::Error(format!("unexpected reply to {op:?}: {other:?}")),
    }
}

/// The outcome of `WAIT <replicas> 0` after a SET whose own outcome was `set`.
fn classify_wait(set: Outcome, replicas: u32, reply: Reply) -> Outcome {
    match (set, reply) {
        (Outcome::Error(text), _) | (_, Reply::Error(text)) => Outcome::Error(text),
        (_, Reply::Integer(acked)) if acked >= i64::from(replicas) => Outcome::Ok,
        (_, other) => Outcome::Error(format!("WAIT {replicas} 0 answered {other:?}")),
    }
}

/// One client's connection with its buffers.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: Protocol,
}

impl Conn {
    async fn connect(addr: &str, protocol: Protocol) -> anyhow::Result<Conn> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => bail!("cannot connect to {addr}: {error} (is the server running?)"),
            Err(_) => bail!("cannot connect to {addr}: no answer within {CONNECT_TIMEOUT:?}"),
        };
        stream.set_nodelay(true).with_context(|| format!("cannot set TCP_NODELAY on the connection to {addr}"))?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(BUFFER_BYTES),
            wbuf: BytesMut::with_capacity(BUFFER_BYTES),
            protocol,
        })
    }

    /// Sends `wbuf` and reads `count` replies, handing each (in order) to `on_reply` with the time
    /// it was read. Writes and reads overlap, so a batch larger than the socket buffers cannot
    /// deadlock against a server that writes replies while it reads requests.
    async fn exchange(&mut self, count: usize, mut on_reply: impl FnMut(Reply, Instant)) -> anyhow::Result<()> {
        let Conn { stream, rbuf, wbuf, protocol } = self;
        let protocol = *protocol;
        let (mut reader, mut writer) = stream.split();
        let write = async { writer.write_all(wbuf).await.context("cannot send to the server") };
        let read = async {
            let mut received = 0;
            let mut read_at = Instant::now();
            loop {
                while received < count {
                    let parsed = match protocol {
                        Protocol::Resp => parse_reply(rbuf).context("the server sent a reply that does not parse")?,
                        Protocol::EtcdHttp => parse_http_response(rbuf)?,
                    };
                    match parsed {
                        Some(reply) => {
                            on_reply(reply, read_at);
                            received += 1;
                        }
                        None => break,
                    }
                }
                if received == count {
                    return Ok(());
                }
                // `read_buf` alone would grow a full buffer 64 bytes at a time.
                if rbuf.capacity() - rbuf.len() < READ_BYTES_MIN {
                    rbuf.reserve(BUFFER_BYTES);
                }
                let bytes = reader.read_buf(rbuf).await.context("cannot read from the server")?;
                ensure!(bytes > 0, "the server closed the connection");
                read_at = Instant::now();
            }
        };
        tokio::try_join!(write, read)?;
        wbuf.clear();
        Ok(())
    }
}

/// Counters shared by the clients, the progress bar and the stall check.
#[derive(Debug, Default)]
struct Shared {
    /// Set by Ctrl-C: clients stop after their current batch.
    stop: AtomicBool,
    /// Replies received in the measured phase.
    measured: AtomicU64,
    /// Error replies in the measured phase.
    errors: AtomicU64,
    /// Replies received in any phase, for the stall check.
    replies: AtomicU64,
    /// Measured requests not yet claimed by a client, with `--requests`.
    budget: Option<AtomicU64>,
}

impl Shared {
    /// Claims up to `want` requests of the budget; 0 when it is spent.
    fn claim(&self, want: usize) -> usize {
        let Some(budget) = &self.budget else {
            return want;
        };
        let mut left = budget.load(Ordering::Relaxed);
        loop {
            let take = left.min(want as u64);
            if take == 0 {
                return 0;
            }
            match budget.compare_exchange_weak(left, left - take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return take as usize,
                Err(actual) => left = actual,
            }
        }
    }
}

/// What one client measured.
#[derive(Debug, Clone)]
struct Stats {
    latency_us: Histogram<u64>,
    requests: u64,
    errors: u64,
    get_misses: u64,
    first_error: Option<String>,
    /// When the replies to the client's last measured batch were read.
    finished_at: Option<Instant>,
}

impl Stats {
    fn new() -> anyhow::Result<Stats> {
        Ok(Stats {
            latency_us: Histogram::new(LATENCY_SIGFIG).context("cannot create a latency histogram")?,
            requests: 0,
            errors: 0,
            get_misses: 0,
            first_error: None,
            finished_at: None,
        })
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).min(LATENCY_US_MAX);
        if self.latency_us.record(micros).is_err() {
            self.latency_us.saturating_record(micros);
        }
        self.requests += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::Miss => self.get_misses += 1,
            Outcome::Error(text) => {
                self.errors += 1;
                self.first_error.get_or_insert(text);
            }
        }
    }

    fn merge(&mut self, other: Stats) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us).context("cannot merge latency histograms")?;
        self.requests += other.requests;
        self.errors += other.errors;
        self.get_misses += other.get_misses;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.finished_at = self.finished_at.max(other.finished_at);
        Ok(())
    }
}

async fn bench(plan: Arc<Plan>) -> anyhow::Result<Option<Report>> {
    let shared = Arc::new(Shared { budget: plan.requests.map(AtomicU64::new), ..Shared::default() });
    if plan.verbose {
        eprintln!(
            "chorus bench: {} against {}, {} clients, pipeline {}, {} keys, {}-byte values, seed {}",
            plan.workload.name(),
            plan.addr,
            plan.clients,
            plan.pipeline,
            plan.keys,
            plan.value.len(),
            plan.seed
        );
    }

    let mut connecting = JoinSet::new();
    for index in 0..plan.clients {
        let plan = Arc::clone(&plan);
        connecting.spawn(async move {
            let mut conn = Conn::connect(&plan.addr, plan.protocol).await?;
            if let Some(password) = &plan.password {
                auth(&mut conn, password).await.with_context(|| format!("AUTH failed on {}", plan.addr))?;
            }
            if !plan.on_connect.is_empty() {
                let command: Vec<&str> = plan.on_connect.iter().map(String::as_str).collect();
                send_command(&mut conn, &command)
                    .await
                    .with_context(|| format!("--on-connect failed on {}", plan.addr))?;
            }
            Ok((index, conn))
        });
    }
    let mut conns = join_all(connecting, &shared).await?;

    if plan.preload {
        let started = Instant::now();
        let mut preloading = JoinSet::new();
        for (index, mut conn) in conns.into_iter().enumerate() {
            let plan = Arc::clone(&plan);
            let shared = Arc::clone(&shared);
            preloading.spawn(async move {
                let failures = preload(&mut conn, &plan, &shared, index).await?;
                Ok((index, (conn, failures)))
            });
        }
        let preloaded = join_all(preloading, &shared).await?;
        let mut errors = 0;
        let mut first_error = None;
        conns = Vec::with_capacity(preloaded.len());
        for (conn, (count, first)) in preloaded {
            errors += count;
            first_error = first_error.or(first);
            conns.push(conn);
        }
        if let Some(text) = first_error {
            bail!("preload: {errors} of {} SETs failed, the first with: {text}", plan.keys);
        }
        if plan.verbose {
            eprintln!("preloaded {} keys in {:.2} s", plan.keys, started.elapsed().as_secs_f64());
        }
    }
    if plan.preload_only {
        return Ok(None);
    }

    let measure_start = Instant::now() + plan.warmup;
    let deadline = plan.duration.map(|duration| measure_start + duration);
    let progress = plan.progress.then(|| progress_bar(&plan)).transpose()?;
    let mut tasks = JoinSet::new();
    if let Some(bar) = &progress {
        tasks.spawn(show_progress(bar.clone(), Arc::clone(&shared), Arc::clone(&plan), measure_start));
    }
    // The first Ctrl-C ends the run and reports what was measured; a second one exits at once.
    let stopper = Arc::clone(&shared);
    tasks.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopper.stop.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let probe = match &plan.visibility_addr {
        Some(read_addr) => {
            let writer = Conn::connect(&plan.addr, plan.protocol).await?;
            let reader = Conn::connect(read_addr, plan.protocol).await?;
            let (plan, shared) = (Arc::clone(&plan), Arc::clone(&shared));
            let window = Window { measure_start, deadline };
            Some(tokio::spawn(probe_visibility(plan, shared, writer, reader, window)))
        }
        None => None,
    };
    let mut driving = JoinSet::new();
    for ((index, conn), seed) in conns.into_iter().enumerate().zip(plan.client_seeds()) {
        let window = Window { measure_start, deadline };
        let (plan, shared) = (Arc::clone(&plan), Arc::clone(&shared));
        driving.spawn(async move { Ok((index, drive(conn, plan, shared, SplitMix64::new(seed), window).await?)) });
    }
    let results = join_all(driving, &shared).await;
    tasks.abort_all();
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let interrupted = shared.stop.load(Ordering::Relaxed);
    if plan.verbose && interrupted {
        eprintln!("interrupted: reporting the requests measured until then");
    }
    let mut total = Stats::new()?;
    for stats in results? {
        total.merge(stats)?;
    }
    let elapsed = total.finished_at.map_or(Duration::ZERO, |end| end.saturating_duration_since(measure_start));
    let mut report = Report::new(&plan, &total, elapsed, interrupted);
    if let Some(probe) = probe {
        shared.stop.store(true, Ordering::Relaxed);
        let visibility = probe.await.context("the visibility probe failed")??;
        report.add_visibility(&visibility);
    }
    Ok(Some(report))
}

/// Write-to-visibility lag as the probe measured it.
struct Visibility {
    lag_us: Histogram<u64>,
    /// Probes whose value never showed within `VISIBILITY_TIMEOUT`.
    timeouts: u64,
}

/// How long a probe waits for its write to show on the other address.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every `visibility_interval` of the measured window: SET a fresh value through `writer`, then GET
/// it through `reader` (every millisecond) until it shows.
async fn probe_visibility(
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut writer: Conn,
    mut reader: Conn,
    window: Window,
) -> anyhow::Result<Visibility> {
    let mut visibility =
        Visibility { lag_us: Histogram::new(LATENCY_SIGFIG).context("cannot create a histogram")?, timeouts: 0 };
    tokio::time::sleep_until(window.measure_start.into()).await;
    let key = format!("chorus:visibility:{}", plan.seed);
    let mut sequence = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) || window.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Ok(visibility);
        }
        sequence += 1;
        let value = format!("{}:{sequence}", plan.seed);
        let sent_at = Instant::now();
        send_command(&mut writer, &["SET", &key, &value]).await.context("visibility probe: SET")?;
        loop {
            encode_request(&["GET", &key], &mut reader.wbuf);
            let mut seen = false;
            reader
                .exchange(1, |reply, _| {
                    seen = matches!(&reply, Reply::Bulk(bytes) if bytes.as_ref() == value.as_bytes())
                })
                .await?;
            if seen {
                let micros = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX).min(LATENCY_US_MAX);
                if visibility.lag_us.record(micros).is_err() {
                    visibility.lag_us.saturating_record(micros);
                }
                break;
            }
            if sent_at.elapsed() > VISIBILITY_TIMEOUT {
                visibility.timeouts += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(plan.visibility_interval).await;
    }
}

/// Waits for every task, returning their values in client order. Fails at the first failed task
/// (the others are aborted when the set drops) or when no reply arrives for `STALL_TIMEOUT`.
async fn join_all<T: 'static>(
    mut tasks: JoinSet<anyhow::Result<(usize, T)>>,
    shared: &Shared,
) -> anyhow::Result<Vec<T>> {
    let mut values = Vec::with_capacity(tasks.len());
    let mut replies = shared.replies.load(Ordering::Relaxed);
    let mut progressed_at = Instant::now();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(joined) => values.push(joined.context("a client task failed")??),
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                let now_replies = shared.replies.load(Ordering::Relaxed);
                if now_replies != replies {
                    replies = now_replies;
                    progressed_at = Instant::now();
                } else if progressed_at.elapsed() >= STALL_TIMEOUT {
                    bail!("the server has not answered for {} s", STALL_TIMEOUT.as_secs());
                }
            }
        }
    }
    values.sort_by_key(|(index, _)| *index);
    Ok(values.into_iter().map(|(_, value)| value).collect())
}

async fn auth(conn: &mut Conn, password: &str) -> anyhow::Result<()> {
    send_command(conn, &["AUTH", password]).await
}

/// Sends one command and fails on an error reply.
async fn send_command(conn: &mut Conn, command: &[&str]) -> anyhow::Result<()> {
    encode_request(command, &mut conn.wbuf);
    let mut answer = None;
    conn.exchange(1, |reply, _| answer = Some(reply)).await?;
    match answer {
        Some(Reply::Error(text)) => bail!("{text}"),
        Some(_) => Ok(()),
        None => bail!("no reply to {}", command.first().copied().unwrap_or_default()),
    }
}

/// SETs the keys `index`, `index + clients`, ... of the key space. Returns how many SETs failed
/// and the first error.
async fn preload(conn: &mut Conn, plan: &Plan, shared: &Shared, index: usize) -> anyhow::Result<(u64, Option<String>)> {
    let prefix = plan.workload.key_prefix();
    let mut key = Vec::new();
    let mut failures = 0;
    let mut first_error = None;
    let mut next = index as u64;
    while next < plan.keys {
        let mut count = 0;
        while count < PRELOAD_BATCH && next < plan.keys {
            write_key(prefix, next, plan.key_digits, &mut key);
            encode_request(&[b"SET".as_slice(), &key, &plan.value], &mut conn.wbuf);
            count += 1;
            next = next.saturating_add(plan.clients as u64);
        }
        conn.exchange(count, |reply, _| {
            if let Outcome::Error(text) = classify(Op::Set, reply) {
                failures += 1;
                first_error.get_or_insert(text);
            }
        })
        .await?;
        shared.replies.fetch_add(count as u64, Ordering::Relaxed);
    }
    Ok((failures, first_error))
}

/// When the measured phase starts and (with a duration) ends.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_start: Instant,
    deadline: Option<Instant>,
}

/// One client's load loop: batches until the deadline, the request budget or Ctrl-C.
async fn drive(
    mut conn: Conn,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut rng: SplitMix64,
    window: Window,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::new()?;
    let mut key = Vec::new();
    let mut ops = Vec::with_capacity(plan.pipeline);
    loop {
        let now = Instant::now();
        if shared.stop.load(Ordering::Relaxed) || window.deadline.is_some_and(|deadline| now >= deadline) {
            break;
        }
        let measured = now >= window.measure_start;
        let count = if measured { shared.claim(plan.pipeline) } else { plan.pipeline };
        if count == 0 {
            break;
        }
        ops.clear();
        for _ in 0..count {
            ops.push(plan.encode_next(&mut rng, &mut key, &mut conn.wbuf));
        }
        let mut ops_left = ops.iter();
        let mut errors = 0;
        // With --wait-replicas each request has a SET reply, then a WAIT reply that ends it.
        let mut set_outcome = None;
        let sent_at = Instant::now();
        if !plan.client_delay.is_zero() {
            tokio::time::sleep(plan.client_delay).await;
        }
        let return_delay = plan.client_delay;
        conn.exchange(count * plan.replies_per_request(), |reply, read_at| {
            let outcome = match (plan.wait_replicas, set_outcome.take()) {
                (Some(replicas), Some(set)) => classify_wait(set, replicas, reply),
                (Some(_), None) => {
                    set_outcome = Some(classify(Op::Set, reply));
                    return;
                }
                (None, _) => {
                    let Some(&op) = ops_left.next() else {
                        return;
                    };
                    classify(op, reply)
                }
            };
            if plan.wait_replicas.is_some() && ops_left.next().is_none() {
                return;
            }
            if !measured {
                return;
            }
            if matches!(outcome, Outcome::Error(_)) {
                errors += 1;
            }
            stats.record(outcome, read_at.saturating_duration_since(sent_at) + return_delay);
        })
        .await?;
        if !plan.client_delay.is_zero() {
            tokio::time::sleep(plan.client_delay).await;
        }
        assert!(ops_left.next().is_none(), "exchange hands over exactly one reply per request");
        shared.replies.fetch_add(count as u64, Ordering::Relaxed);
        if measured {
            shared.measured.fetch_add(count as u64, Ordering::Relaxed);
            if errors > 0 {
                shared.errors.fetch_add(errors, Ordering::Relaxed);
            }
            stats.finished_at = Some(Instant::now());
        }
    }
    Ok(stats)
}

fn progress_bar(plan: &Plan) -> anyhow::Result<ProgressBar> {
    let length = match (plan.requests, plan.duration) {
        (Some(requests), _) => requests,
        (None, Some(duration)) => u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        (None, None) => 0,
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:20}] {msg}")
        .context("invalid progress bar template")?
        .progress_chars("=> ");
    bar.set_style(style);
    Ok(bar)
}

async fn show_progress(bar: ProgressBar, shared: Arc<Shared>, plan: Arc<Plan>, measure_start: Instant) {
    let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        if now < measure_start {
            bar.set_message(format!("warming up, {:.1} s left", (measure_start - now).as_secs_f64()));
            bar.tick();
            continue;
        }
        let elapsed = now - measure_start;
        let done = shared.measured.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let position = match plan.requests {
            Some(_) => done,
            None => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        bar.set_position(position);
        bar.set_message(format!("{:.0} ops/s, {done} req, {errors} err", per_second(done, elapsed)));
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}

/// The result of a run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
struct Report {
    workload: &'static str,
    addr: String,
    clients: usize,
    pipeline: usize,
    keys: u64,
    value_size: usize,
    /// Only for the `mixed` workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_ratio: Option<f64>,
    seed: u64,
    protocol: &'static str,
    /// With --wait-replicas: every SET was followed by `WAIT <n> 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_replicas: Option<u32>,
    requests: u64,
    errors: u64,
    get_misses: u64,
    first_error: Option<String>,
    duration_s: f64,
    ops_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    mean_us: f64,
    /// Ended early by Ctrl-C (the exit status stays 0, so scripts should check this).
    interrupted: bool,
    /// With --client-delay-ms: the emulated one-way delay each request paid twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_delay_ms: Option<u64>,
    /// With --visibility-addr: probes, and the lag from a write's send to its visibility there.
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_probes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_timeouts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_p50_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_p99_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_max_us: Option<u64>,
}

impl Report {
    fn new(plan: &Plan, stats: &Stats, elapsed: Duration, interrupted: bool) -> Report {
        let latency = &stats.latency_us;
        let quantile = |q: f64| if latency.is_empty() { 0 } else { latency.value_at_quantile(q) };
        Report {
            workload: plan.workload.name(),
            addr: plan.addr.clone(),
            clients: plan.clients,
            pipeline: plan.pipeline,
            keys: plan.keys,
            value_size: plan.value.len(),
            read_ratio: (plan.workload == Workload::Mixed).then_some(plan.read_ratio),
            seed: plan.seed,
            protocol: match plan.protocol {
                Protocol::Resp => "resp",
                Protocol::EtcdHttp => "etcd-http",
            },
            wait_replicas: plan.wait_replicas,
            requests: stats.requests,
            errors: stats.errors,
            get_misses: stats.get_misses,
            first_error: stats.first_error.clone(),
            duration_s: elapsed.as_secs_f64(),
            ops_per_sec: per_second(stats.requests, elapsed),
            p50_us: quantile(0.5),
            p90_us: quantile(0.9),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: if latency.is_empty() { 0 } else { latency.max() },
            mean_us: if latency.is_empty() { 0.0 } else { latency.mean() },
            interrupted,
            client_delay_ms: (!plan.client_delay.is_zero())
                .then(|| u64::try_from(plan.client_delay.as_millis()).unwrap_or(u64::MAX)),
            visibility_probes: None,
            visibility_timeouts: None,
            visibility_p50_us: None,
            visibility_p99_us: None,
            visibility_max_us: None,
        }
    }

    fn add_visibility(&mut self, visibility: &Visibility) {
        let lag = &visibility.lag_us;
        let quantile = |q: f64| if lag.is_empty() { 0 } else { lag.value_at_quantile(q) };
        self.visibility_probes = Some(lag.len() + visibility.timeouts);
        self.visibility_timeouts = Some(visibility.timeouts);
        self.visibility_p50_us = Some(quantile(0.5));
        self.visibility_p99_us = Some(quantile(0.99));
        self.visibility_max_us = Some(if lag.is_empty() { 0 } else { lag.max() });
    }

    /// The human-readable report.
    fn render_table(&self) -> String {
        let mut lines = vec![
            format!(
                "workload     {}{} against {}, {} clients, pipeline {}, {} keys, {}-byte values, seed {}",
                self.workload,
                self.read_ratio.map(|ratio| format!(" (read ratio {ratio})")).unwrap_or_default(),
                self.addr,
                self.clients,
                self.pipeline,
                self.keys,
                self.value_size,
                self.seed
            ),
            format!(
                "requests     {} in {:.2} s, {} errors{}",
                self.requests,
                self.duration_s,
                self.errors,
                if self.interrupted { " (interrupted)" } else { "" }
            ),
        ];
        if self.get_misses > 0 {
            lines.push(format!("get misses   {} (use --preload to SET every key first)", self.get_misses));
        }
        if let Some(text) = &self.first_error {
            lines.push(format!("first error  {text}"));
        }
        lines.push(format!("throughput   {:.0} ops/s", self.ops_per_sec));
        lines.push(format!(
            "latency µs   {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        ));
        lines.push(format!(
            "             {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.1}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us, self.mean_us
        ));
        if let Some(delay) = self.client_delay_ms {
            lines.push(format!("client delay {delay} ms each way (emulated), included in the latencies"));
        }
        if let (Some(probes), Some(p50), Some(p99), Some(max)) =
            (self.visibility_probes, self.visibility_p50_us, self.visibility_p99_us, self.visibility_max_us)
        {
            lines.push(format!(
                "visibility   {probes} probes, {} timed out; write-to-visible µs p50 {p50} p99 {p99} max {max}",
                self.visibility_timeouts.unwrap_or(0)
            ));
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(line: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied())).unwrap().bench
    }

    fn plan(line: &[&str]) -> anyhow::Result<Plan> {
        Plan::from_args(&args(line), 7)
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference values of splitmix64 seeded with 0 (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn same_seed_same_keys_and_other_seed_other_keys() {
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..100).map(|_| rng.below(100_000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let value = rng.below(10);
            assert!(value < 10);
            seen[value as usize] = true;
        }
        assert!(seen.iter().all(|&hit| hit), "every value of a small range is drawn");
        assert_eq!(SplitMix64::new(5).below(1), 0);
        for _ in 0..1000 {
            let unit = rng.next_f64();
            assert!((0.0..1.0).contains(&unit));
        }
    }

    #[test]
    fn client_seeds_are_distinct_and_follow_the_seed() {
        let plan = plan(&["--seed", "9", "--clients", "4"]).unwrap();
        let seeds = plan.client_seeds();
        assert_eq!(seeds.len(), 4);
        assert_eq!(seeds, plan.client_seeds());
        let mut sorted = seeds.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        assert_eq!(seeds[0], SplitMix64::new(9).next_u64());
    }

    #[test]
    fn keys_are_zero_padded_to_nine_digits() {
        let mut key = Vec::new();
        write_key(b"key:", 123, 9, &mut key);
        assert_eq!(key, b"key:000000123");
        write_key(b"key:", 0, 9, &mut key);
        assert_eq!(key, b"key:000000000");
        write_key(b"counter:", 999_999_999, 9, &mut key);
        assert_eq!(key, b"counter:999999999");
        write_key(b"key:", 1_234_567_890, 9, &mut key);
        assert_eq!(key, b"key:1234567890", "wider indexes keep all their digits");
        write_key(b"key:", u64::MAX, 9, &mut key);
        assert_eq!(key, b"key:18446744073709551615");
        write_key(b"key:", 123, 12, &mut key);
        assert_eq!(key, b"key:000000000123", "redis-benchmark's -r format");
    }

    #[test]
    fn requests_are_encoded_in_resp() {
        let plan = plan(&["--workload", "set", "--keys", "1", "--value-size", "3"]).unwrap();
        let mut out = BytesMut::new();
        let op = plan.encode_next(&mut SplitMix64::new(0), &mut Vec::new(), &mut out);
        assert_eq!(op, Op::Set);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$13\r\nkey:000000000\r\n$3\r\nxxx\r\n");

        let plan = self::plan(&["--workload", "incr", "--keys", "1"]).unwrap();
        out.clear();
        assert_eq!(plan.encode_next(&mut SplitMix64::new(0), &mut Vec::new(), &mut out), Op::Incr);
        assert_eq!(&out[..], b"*2\r\n$4\r\nINCR\r\n$17\r\ncounter:000000000\r\n");
    }

    #[test]
    fn mixed_workload_follows_the_read_ratio() {
        let count_gets = |ratio: &str| {
            let plan = plan(&["--workload", "mixed", "--read-ratio", ratio]).unwrap();
            let mut rng = SplitMix64::new(3);
            let mut out = BytesMut::new();
            (0..10_000).filter(|_| plan.encode_next(&mut rng, &mut Vec::new(), &mut out) == Op::Get).count()
        };
        assert_eq!(count_gets("0"), 0);
        assert_eq!(count_gets("1"), 10_000);
        let gets = count_gets("0.9");
        assert!((8_800..9_200).contains(&gets), "about 90% GETs, got {gets}");
    }

    #[test]
    fn defaults_resolve_to_ten_seconds_on_port_7001() {
        let plan = plan(&[]).unwrap();
        assert_eq!(plan.addr, "127.0.0.1:7001");
        assert_eq!(plan.workload, Workload::Set);
        assert_eq!(plan.clients, 50);
        assert_eq!(plan.pipeline, 1);
        assert_eq!(plan.keys, 100_000);
        assert_eq!(plan.value.len(), 100);
        assert_eq!(plan.duration, Some(Duration::from_secs(10)));
        assert_eq!(plan.requests, None);
        assert_eq!(plan.seed, 7, "the clock seed when --seed is absent");
        assert!(plan.progress);
    }

    #[test]
    fn requests_without_duration_have_no_time_limit() {
        let plan = plan(&["--requests", "1000"]).unwrap();
        assert_eq!(plan.duration, None);
        assert_eq!(plan.requests, Some(1000));
        let plan = self::plan(&["--requests", "1000", "--duration", "2.5"]).unwrap();
        assert_eq!(plan.duration, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn addresses_resolve_from_host_port_or_addr() {
        assert_eq!(plan(&["--port", "6390"]).unwrap().addr, "127.0.0.1:6390");
        assert_eq!(plan(&["--host", "::1", "--port", "6390"]).unwrap().addr, "[::1]:6390");
        assert_eq!(plan(&["--addr", "localhost:7390"]).unwrap().addr, "localhost:7390");
        assert!(plan(&["--addr", "localhost"]).is_err());
        assert!(plan(&["--addr", ":7390"]).is_err());
        assert!(
            Cli::try_parse_from(["bench", "--addr", "a:1", "--port", "2"]).is_err(),
            "--addr conflicts with --port"
        );
    }

    #[test]
    fn invalid_arguments_are_refused_with_the_flag_named() {
        for (line, flag) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--pipeline", "0"], "--pipeline"),
            (&["--keys", "0"], "--keys"),
            (&["--read-ratio", "1.5"], "--read-ratio"),
            (&["--read-ratio", "NaN"], "--read-ratio"),
            (&["--duration", "0"], "--duration"),
            (&["--duration", "inf"], "--duration"),
            (&["--warmup=-1"], "--warmup"),
            (&["--requests", "0"], "--requests"),
            (&["--threads", "0"], "--threads"),
            (&["--key-digits", "0"], "--key-digits"),
            (&["--key-digits", "21"], "--key-digits"),
        ] {
            let error = plan(line).unwrap_err().to_string();
            assert!(error.contains(flag), "{line:?} gives {error:?}, which should name {flag}");
        }
    }

    #[test]
    fn wait_replicas_pipelines_a_wait_behind_each_set() {
        let plan = plan(&["--keys", "1", "--value-size", "1", "--wait-replicas", "2"]).unwrap();
        assert_eq!(plan.replies_per_request(), 2);
        let mut out = BytesMut::new();
        assert_eq!(plan.encode_next(&mut SplitMix64::new(0), &mut Vec::new(), &mut out), Op::Set);
        assert_eq!(
            &out[..],
            b"*3\r\n$3\r\nSET\r\n$13\r\nkey:000000000\r\n$1\r\nx\r\n*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$1\r\n0\r\n"
        );
        assert!(self::plan(&["--workload", "get", "--wait-replicas", "1"]).is_err());
        assert_eq!(classify_wait(Outcome::Ok, 2, Reply::Integer(2)), Outcome::Ok);
        assert!(matches!(classify_wait(Outcome::Ok, 2, Reply::Integer(1)), Outcome::Error(_)));
        assert_eq!(
            classify_wait(Outcome::Error("READONLY".into()), 2, Reply::Integer(2)),
            Outcome::Error("READONLY".into())
        );
    }

    #[test]
    fn etcd_puts_are_json_with_base64() {
        let mut text = Vec::new();
        base64_encode(b"key:000000000", &mut text);
        assert_eq!(text, b"a2V5OjAwMDAwMDAwMA==");
        for (input, expected) in [(&b""[..], &b""[..]), (b"f", b"Zg=="), (b"fo", b"Zm8="), (b"foo", b"Zm9v")] {
            let mut text = Vec::new();
            base64_encode(input, &mut text);
            assert_eq!(text, expected);
        }
        let plan = plan(&["--keys", "1", "--value-size", "3", "--protocol", "etcd-http", "--port", "2379"]).unwrap();
        let mut out = BytesMut::new();
        plan.encode_next(&mut SplitMix64::new(0), &mut Vec::new(), &mut out);
        let body = r#"{"key":"a2V5OjAwMDAwMDAwMA==","value":"eHh4"}"#;
        let expected = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        assert!(self::plan(&["--protocol", "etcd-http", "--preload"]).is_err());
        assert!(self::plan(&["--protocol", "etcd-http", "--workload", "get"]).is_err());
    }

    #[test]
    fn http_responses_parse_with_length_or_chunks() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 5"[..]);
        assert_eq!(parse_http_response(&mut buf).unwrap(), Some(Reply::Status("OK")));
        assert_eq!(&buf[..], b"HTTP/1.1 5");
        assert_eq!(parse_http_response(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"03 Service Unavailable\r\ncontent-length: 4\r\n\r\nbu");
        assert_eq!(parse_http_response(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"sy");
        assert_eq!(parse_http_response(&mut buf).unwrap(), Some(Reply::Error("HTTP 503: busy".into())));
        assert!(buf.is_empty());
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nX"[..]);
        assert_eq!(parse_http_response(&mut buf).unwrap(), Some(Reply::Status("OK")));
        assert_eq!(&buf[..], b"X");
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}"[..]);
        assert_eq!(parse_http_response(&mut buf).unwrap(), None);
        assert!(parse_http_response(&mut BytesMut::from(&b"garbage\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn replies_are_classified_per_command() {
        assert_eq!(classify(Op::Set, Reply::StatusOwned("OK".into())), Outcome::Ok);
        assert_eq!(classify(Op::Get, Reply::bulk("xxx")), Outcome::Ok);
        assert_eq!(classify(Op::Get, Reply::Null), Outcome::Miss);
        assert_eq!(classify(Op::Incr, Reply::Integer(4)), Outcome::Ok);
        assert_eq!(classify(Op::Set, Reply::Error("OOM no".into())), Outcome::Error("OOM no".into()));
        assert!(matches!(classify(Op::Incr, Reply::Null), Outcome::Error(text) if text.contains("Incr")));
    }

    #[test]
    fn budget_is_claimed_in_batches_until_spent() {
        let shared = Shared { budget: Some(AtomicU64::new(10)), ..Shared::default() };
        assert_eq!(shared.claim(4), 4);
        assert_eq!(shared.claim(4), 4);
        assert_eq!(shared.claim(4), 2);
        assert_eq!(shared.claim(4), 0);
        assert_eq!(Shared::default().claim(4), 4, "no budget, no limit");
    }

    #[test]
    fn report_has_the_documented_json_fields() {
        let plan = plan(&["--seed", "1", "--clients", "2", "--pipeline", "16"]).unwrap();
        let mut stats = Stats::new().unwrap();
        for micros in 1..=1000 {
            stats.record(Outcome::Ok, Duration::from_micros(micros));
        }
        stats.record(Outcome::Error("ERR boom".into()), Duration::from_micros(5000));
        let mut other = Stats::new().unwrap();
        other.record(Outcome::Miss, Duration::from_micros(10));
        stats.merge(other).unwrap();

        let report = Report::new(&plan, &stats, Duration::from_secs(2), false);
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "workload",
            "clients",
            "pipeline",
            "requests",
            "errors",
            "duration_s",
            "ops_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "mean_us",
            "seed",
        ] {
            assert!(json.get(field).is_some(), "missing field {field} in {json}");
        }
        assert_eq!(json["workload"], "set");
        assert_eq!(json["clients"], 2);
        assert_eq!(json["pipeline"], 16);
        assert_eq!(json["requests"], 1002);
        assert_eq!(json["errors"], 1);
        assert_eq!(json["get_misses"], 1);
        assert_eq!(json["first_error"], "ERR boom");
        assert_eq!(json["ops_per_sec"], 501.0);
        assert_eq!(json["interrupted"], false);
        assert!(json.get("read_ratio").is_none(), "read_ratio only for mixed");
        let p50 = json["p50_us"].as_u64().unwrap();
        assert!((495..=505).contains(&p50), "p50 {p50}");
        assert!(json["max_us"].as_u64().unwrap() >= 5000);

        let table = report.render_table();
        assert!(table.contains("501 ops/s"), "{table}");
        assert!(table.contains("first error  ERR boom"), "{table}");
    }

    #[test]
    fn empty_run_reports_zeros_not_nan() {
        let plan = plan(&["--seed", "1"]).unwrap();
        let report = Report::new(&plan, &Stats::new().unwrap(), Duration::ZERO, true);
        assert_eq!(report.ops_per_sec, 0.0);
        assert_eq!(report.p99_us, 0);
        assert_eq!(report.mean_us, 0.0);
        assert!(serde_json::to_string(&report).is_ok());
    }
}
