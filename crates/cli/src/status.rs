//! `chorus status`: the replication group as a table, from each node's INFO.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Client addresses of the nodes to ask (default: the ports `chorus up` uses).
    #[arg(long = "addr", value_delimiter = ',', default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003")]
    addrs: Vec<SocketAddr>,
}

/// Fetches INFO over RESP and returns its `field:value` lines.
pub fn info(addr: SocketAddr) -> anyhow::Result<Vec<(String, String)>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"*1\r\n$4\r\nINFO\r\n")?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            bail!("connection closed");
        }
        buffer.extend_from_slice(&chunk[..read]);
        let Some(header_end) = buffer.windows(2).position(|w| w == b"\r\n") else { continue };
        let header = std::str::from_utf8(&buffer[..header_end])?;
        let length: usize = header.strip_prefix('$').context("INFO did not answer a bulk string")?.parse()?;
        if buffer.len() >= header_end + 2 + length {
            let body = String::from_utf8_lossy(&buffer[header_end + 2..header_end + 2 + length]).into_owned();
            return Ok(body
                .lines()
                .filter_map(|line| line.split_once(':'))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect());
        }
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    println!(
        "{:<22} {:>5} {:<11} {:>6} {:>7} {:>10} {:>10} {:>10}  followers (node: lag entries / ms)",
        "address", "node", "role", "term", "leader", "commit", "applied", "keys"
    );
    for addr in &args.addrs {
        let fields = match info(*addr) {
            Ok(fields) => fields,
            Err(error) => {
                println!("{:<22} unreachable: {error}", addr.to_string());
                continue;
            }
        };
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("-");
        let keys = get("db0").split(',').next().and_then(|part| part.strip_prefix("keys=")).unwrap_or("0");
        let followers: Vec<String> = fields
            .iter()
            .filter(|(key, _)| key.starts_with("slave"))
            .map(|(_, value)| {
                let field = |name: &str| {
                    value.split(',').find_map(|part| part.strip_prefix(&format!("{name}="))).unwrap_or("?").to_string()
                };
                format!("{}: {}/{}", field("chorus_node"), field("chorus_lag_entries"), field("chorus_lag_ms"))
            })
            .collect();
        println!(
            "{:<22} {:>5} {:<11} {:>6} {:>7} {:>10} {:>10} {:>10}  {}",
            addr.to_string(),
            get("chorus_node_id"),
            if get("chorus_member") == "learner" { "learner" } else { get("chorus_role") },
            get("chorus_term"),
            get("chorus_leader"),
            get("chorus_commit_index"),
            get("chorus_applied_index"),
            keys,
            followers.join(", ")
        );
    }
    Ok(())
}
