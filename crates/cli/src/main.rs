//! `chorus`: run a node, start a local cluster, or load one with traffic.

mod bench;
mod member;
mod server;
mod sim;
mod status;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "chorus", version, about = "Chorus: a replicated key-value database that speaks the Redis protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node (from a TOML config and/or flags).
    Server(Box<server::ServerArgs>),
    /// Start a local cluster of `chorus server` processes on this machine; Ctrl-C stops it.
    Up(up::UpArgs),
    /// Load a node (or Redis) with SET/GET traffic and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Run the deterministic simulator over many seeds, or replay one seed with its trace.
    Sim(sim::SimArgs),
    /// Show the replication group as a table (role, term, leader, commit and applied index, lag).
    Status(status::StatusArgs),
    /// Add, remove or promote members of the replication group, or list them.
    Member(member::MemberArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => server::run(*args),
        Command::Up(args) => up::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Status(args) => status::run(args),
        Command::Member(args) => member::run(args),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
