//! `chorus member`: change the replication group one node at a time (CHORUS.MEMBER on the leader).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use chorus_resp::Reply;

#[derive(clap::Args, Debug, Clone)]
pub struct MemberArgs {
    /// A node's client address; a follower's redirect to the leader is followed.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
    #[command(subcommand)]
    action: MemberAction,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum MemberAction {
    /// Add a node (a learner unless --voter); start it with `chorus server --learner`.
    Add {
        id: u64,
        /// Where the new node listens for peers (HOST:PORT).
        peer_addr: SocketAddr,
        /// Add it as a voter at once (prefer adding a learner and promoting it once caught up).
        #[arg(long)]
        voter: bool,
    },
    /// Remove a voter or learner (transfer leadership away from a leader first).
    Remove { id: u64 },
    /// Make a caught-up learner a voter.
    Promote { id: u64 },
    /// List the members.
    List,
}

pub fn run(args: MemberArgs) -> anyhow::Result<()> {
    let command: Vec<String> = match &args.action {
        MemberAction::Add { id, peer_addr, voter } => {
            let role = if *voter { "VOTER" } else { "LEARNER" };
            vec!["CHORUS.MEMBER".into(), "ADD".into(), id.to_string(), peer_addr.to_string(), role.into()]
        }
        MemberAction::Remove { id } => vec!["CHORUS.MEMBER".into(), "REMOVE".into(), id.to_string()],
        MemberAction::Promote { id } => vec!["CHORUS.MEMBER".into(), "PROMOTE".into(), id.to_string()],
        MemberAction::List => vec!["CHORUS.MEMBER".into(), "LIST".into()],
    };
    match on_leader(args.addr, &command, Duration::from_secs(10))? {
        Reply::Array(rows) => {
            println!("{:>4}  {:<8}  peer address", "id", "role");
            for row in rows {
                if let Reply::Array(fields) = row
                    && let [Reply::Integer(id), Reply::Bulk(role), Reply::Bulk(address)] = fields.as_slice()
                {
                    println!("{id:>4}  {:<8}  {}", String::from_utf8_lossy(role), String::from_utf8_lossy(address));
                }
            }
        }
        Reply::Error(message) => bail!("{message}"),
        other => println!("{}", describe(&other)),
    }
    Ok(())
}

/// Sends `args` to the leader: follows `MOVED` redirects and retries `TRYAGAIN` until `patience`
/// runs out. Returns the final reply (an error reply is returned, not raised).
pub fn on_leader(addr: SocketAddr, args: &[String], patience: Duration) -> anyhow::Result<Reply> {
    let deadline = Instant::now() + patience;
    let mut target = addr;
    loop {
        let reply = send(target, args)?;
        let Reply::Error(message) = &reply else { return Ok(reply) };
        if let Some(leader) = message.strip_prefix("MOVED ").and_then(|rest| rest.split_whitespace().nth(1)) {
            target = leader.parse().with_context(|| format!("bad redirect '{message}'"))?;
        } else if !message.starts_with("TRYAGAIN") || Instant::now() > deadline {
            return Ok(reply);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
        if Instant::now() > deadline {
            return Ok(reply);
        }
    }
}

/// One request, one reply, on a fresh connection.
pub fn send(addr: SocketAddr, args: &[String]) -> anyhow::Result<Reply> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = BytesMut::new();
    chorus_resp::encode_request(args, &mut request);
    stream.write_all(&request)?;
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = chorus_resp::parse_reply(&mut buffer).map_err(|error| anyhow::anyhow!("{error:?}"))? {
            return Ok(reply);
        }
        let read = stream.read(&mut chunk).with_context(|| format!("reading from {addr}"))?;
        if read == 0 {
            bail!("{addr} closed the connection");
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Status(text) => (*text).to_string(),
        Reply::StatusOwned(text) => text.clone(),
        Reply::Bulk(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Reply::Integer(value) => value.to_string(),
        other => format!("{other:?}"),
    }
}
