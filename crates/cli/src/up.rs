//! `chorus up`: a local cluster of `chorus server` processes, each with its own data directory
//! under `--data-dir`: by default a 3-voter single-leader group (`--nodes 1` runs one standalone
//! node). It is a thin wrapper over `chorus server --initial-cluster ...`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the nodes keep their data (one sub-directory per node).
    #[arg(long, default_value = "./chorus-data")]
    data_dir: PathBuf,
    /// Number of voters (1: a standalone node).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Learners (non-voting, asynchronous read replicas) added after the voters elect a leader.
    #[arg(long, default_value_t = 0)]
    learners: u16,
    /// The group's commit rule: async | semi-sync:K | quorum | all.
    #[arg(long, default_value = "quorum")]
    durability: String,
    /// First client port; node N listens on base+N-1 (peer ports +100, admin ports +200).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Interface to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// always | periodic:MS | never.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// single-leader (Raft) | leaderless (Dynamo-style quorums, any node serves writes) |
    /// multi-leader (one group per datacenter, see --datacenters).
    #[arg(long, default_value = "single-leader")]
    mode: chorus_server::Mode,
    /// Multi-leader mode: datacenters (named dc1, dc2, ...), each a group of --nodes-per-dc nodes.
    #[arg(long, default_value_t = 2)]
    datacenters: u16,
    /// Multi-leader mode: nodes in each datacenter (client ports go on in order: dc1's first).
    #[arg(long, default_value_t = 3)]
    nodes_per_dc: u16,
    /// Extra delay (ms) on every message between nodes of different datacenters (WAN emulation).
    #[arg(long, default_value_t = 0)]
    wan_delay_ms: u64,
    /// Multi-leader mode: lww | siblings.
    #[arg(long, default_value = "lww")]
    conflict_policy: String,
    /// Multi-leader mode: all-to-all | star:HUB | ring:DC1,DC2,...
    #[arg(long, default_value = "all-to-all")]
    topology: String,
}

struct NodeProcess {
    id: u16,
    child: Child,
    client: SocketAddr,
}

pub fn run(mut args: UpArgs) -> anyhow::Result<()> {
    let multi_leader = args.mode == chorus_server::Mode::MultiLeader;
    if multi_leader {
        if args.datacenters == 0 || args.nodes_per_dc == 0 || args.learners > 0 {
            bail!("--mode multi-leader needs --datacenters and --nodes-per-dc of 1 or more, and no learners");
        }
        args.nodes = args.datacenters.saturating_mul(args.nodes_per_dc);
    }
    if args.nodes == 0 || args.nodes > 99 {
        bail!("--nodes must be between 1 and 99");
    }
    let leaderless = args.mode == chorus_server::Mode::Leaderless;
    if leaderless && (args.learners > 0 || args.nodes == 1) {
        bail!("--mode leaderless needs --nodes 2 or more and no learners");
    }
    if args.learners > 0 && args.nodes == 1 {
        bail!("--learners needs a replication group: use --nodes 2 or more");
    }
    if u32::from(args.nodes) + u32::from(args.learners) > 99 {
        bail!("at most 99 nodes in all");
    }
    let executable = std::env::current_exe().context("locating the chorus executable")?;
    let initial_cluster = (1..=args.nodes)
        .map(|id| format!("{id}={}", SocketAddr::new(args.host, args.base_port + 100 + id - 1)))
        .collect::<Vec<_>>()
        .join(",");
    let mut processes = Vec::new();
    for id in 1..=args.nodes {
        processes.push(start_node(&args, &executable, id, &initial_cluster, false)?);
    }
    for process in &mut processes {
        wait_until_ready(process)?;
    }
    if multi_leader {
        for dc in 1..=args.datacenters {
            let in_dc: Vec<&NodeProcess> =
                processes.iter().filter(|process| datacenter_of(&args, process.id) == dc).collect();
            let (leader, leader_addr) = wait_for_leader_among(&in_dc)?;
            println!(
                "dc{dc}: nodes {} lead by node {leader} at {leader_addr} (redis-cli -c -p {})",
                in_dc.iter().map(|process| process.id.to_string()).collect::<Vec<_>>().join(","),
                leader_addr.port()
            );
        }
        println!(
            "ready: multi-leader, {} datacenters x {} nodes, durability {}, wan delay {} ms",
            args.datacenters, args.nodes_per_dc, args.durability, args.wan_delay_ms
        );
    } else if leaderless {
        println!(
            "ready: {} leaderless nodes at {} (any node takes reads and writes; redis-cli -p {})",
            args.nodes,
            processes.iter().map(|process| process.client.to_string()).collect::<Vec<_>>().join(", "),
            processes[0].client.port()
        );
    } else if args.nodes == 1 {
        println!("ready: one standalone node at {} (redis-cli -p {})", processes[0].client, processes[0].client.port());
    } else {
        let (mut leader, mut leader_addr) = wait_for_leader(&processes)?;
        for id in args.nodes + 1..=args.nodes + args.learners {
            let mut learner = start_node(&args, &executable, id, &initial_cluster, true)?;
            wait_until_ready(&mut learner)?;
            processes.push(learner);
            let peer = SocketAddr::new(args.host, args.base_port + 100 + id - 1);
            let add = ["CHORUS.MEMBER", "ADD", &id.to_string(), &peer.to_string(), "LEARNER"].map(String::from);
            match crate::member::on_leader(leader_addr, &add, Duration::from_secs(30))? {
                chorus_resp::Reply::Error(message) if message.contains("already a member") => {
                    println!("node {id}: a learner already (restarted)");
                }
                chorus_resp::Reply::Error(message) => bail!("adding learner {id}: {message}"),
                _ => println!("node {id}: added as a learner"),
            }
        }
        if args.learners > 0 {
            (leader, leader_addr) = wait_for_leader(&processes)?;
        }
        println!(
            "ready: {} voters{}, durability {}; node {leader} leads at {leader_addr} (redis-cli -c -p {} follows redirects)",
            args.nodes,
            if args.learners > 0 { format!(" and {} learners", args.learners) } else { String::new() },
            args.durability,
            leader_addr.port()
        );
    }
    println!("press Ctrl-C to stop");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(supervise(&mut processes))?;
    println!("stopping...");
    for process in &mut processes {
        if let Ok(pid) = i32::try_from(process.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for process in &mut processes {
        let _ = process.child.wait();
    }
    println!("stopped");
    Ok(())
}

/// Starts node `id` (a learner joins the group formed by the voters of `initial_cluster`).
fn start_node(
    args: &UpArgs,
    executable: &std::path::Path,
    id: u16,
    initial_cluster: &str,
    learner: bool,
) -> anyhow::Result<NodeProcess> {
    let client = SocketAddr::new(args.host, args.base_port + id - 1);
    let peer = SocketAddr::new(args.host, args.base_port + 100 + id - 1);
    let admin = SocketAddr::new(args.host, args.base_port + 200 + id - 1);
    let data_dir = args.data_dir.join(format!("node{id}"));
    let mut command = Command::new(executable);
    command
        .args(["server", "--id", &id.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--client-addr", &client.to_string(), "--peer-addr", &peer.to_string()])
        .args(["--admin-addr", &admin.to_string(), "--fsync", &args.fsync])
        .stdin(Stdio::null());
    if args.nodes > 1 || args.mode == chorus_server::Mode::MultiLeader {
        command.args(["--initial-cluster", initial_cluster, "--durability", &args.durability]);
        command.args(["--mode", &args.mode.to_string()]);
    }
    if args.mode == chorus_server::Mode::MultiLeader {
        command.args(["--datacenter", &format!("dc{}", datacenter_of(args, id))]);
        command.args(["--conflict-policy", &args.conflict_policy, "--topology", &args.topology]);
    }
    if args.wan_delay_ms > 0 {
        command.args(["--wan-delay-ms", &args.wan_delay_ms.to_string()]);
    }
    if learner {
        command.arg("--learner");
    }
    let child = command.spawn().with_context(|| format!("starting node {id}"))?;
    println!(
        "node {id}: pid {} client {client} peer {peer} admin http://{admin} data {}{}",
        child.id(),
        data_dir.display(),
        if learner { " (learner)" } else { "" }
    );
    Ok(NodeProcess { id, child, client })
}

/// Waits for Ctrl-C or SIGTERM, or for a node to exit on its own (then the cluster stops too).
async fn supervise(processes: &mut [NodeProcess]) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = poll.tick() => {
                for process in processes.iter_mut() {
                    if let Some(status) = process.child.try_wait().context("checking a node")? {
                        eprintln!("node {} exited unexpectedly ({status}); stopping the cluster", process.id);
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The datacenter number (1-based) of node `id` in multi-leader mode: ids go dc by dc.
fn datacenter_of(args: &UpArgs, id: u16) -> u16 {
    (id - 1) / args.nodes_per_dc.max(1) + 1
}

/// Asks every node's INFO until one says it leads (30 s at most).
fn wait_for_leader(processes: &[NodeProcess]) -> anyhow::Result<(u16, SocketAddr)> {
    wait_for_leader_among(&processes.iter().collect::<Vec<_>>())
}

fn wait_for_leader_among(processes: &[&NodeProcess]) -> anyhow::Result<(u16, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for process in processes {
            if let Ok(fields) = crate::status::info(process.client)
                && fields.iter().any(|(key, value)| key == "chorus_role" && value == "leader")
                && fields.iter().any(|(key, value)| key == "chorus_leader_ready" && value == "1")
            {
                return Ok((process.id, process.client));
            }
        }
        if Instant::now() > deadline {
            bail!("no leader was elected within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the node with PING until it answers PONG, the process dies, or 30 s pass.
fn wait_until_ready(process: &mut NodeProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.child.try_wait()? {
            bail!("node {} exited during start-up ({status})", process.id);
        }
        if ping(process.client).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {} did not answer PING at {} within 30 s", process.id, process.client);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" { Ok(()) } else { bail!("unexpected reply to PING") }
}
