//! The peer network: one outbound connection per peer, dialled and redialled by this node, and
//! inbound connections accepted from peers, each opened by a hello naming the sender.
//!
//! Messages are typed (`M`, serialized with postcard inside checksummed frames) and delivery is
//! best effort: a message to a peer that is down, or whose queue is full, is dropped. That is what
//! the replication protocols expect of a network (they retry by design), and it keeps a slow peer
//! from ever blocking the node.
//!
//! A peer that restarts must be reached again at once, not only once a write to its old connection
//! fails: a write into a connection whose far end has died succeeds locally and is lost, and only
//! a later write reports the broken pipe. So the dialling side watches its connection's read half
//! (peers never write on it: end of stream means the far end closed), and a peer that connects to
//! this node (it is back) cuts the redial backoff short.
//!
//! A message to a connected, idle link is written by `send` itself, from the calling thread, with
//! a non-blocking write; everything else goes through the link's dial task (see [`crate::link`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

use crate::link::{self, DirectWriteCounters, LinkReceiver, LinkSender, Queued};
use crate::{FrameDecoder, FrameError, encode_frame, read_frame};

const HELLO_MAGIC: &[u8; 8] = b"CHORUS01";
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 4096;
/// The first redial delay after a failed dial; it doubles up to [`REDIAL_DELAY_MAX_DEFAULT`].
pub const REDIAL_DELAY_MIN_DEFAULT: Duration = Duration::from_millis(50);
pub const REDIAL_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(2);

/// Who this node is and where its peers listen.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub node_id: u64,
    pub peers: BTreeMap<u64, SocketAddr>,
    pub frame_bytes_max: usize,
    /// Backoff between dials of an unreachable peer (cut short when the peer connects to us).
    pub redial_delay_min: Duration,
    pub redial_delay_max: Duration,
}

impl PeerConfig {
    /// The defaults for everything but who is who.
    pub fn new(node_id: u64, peers: BTreeMap<u64, SocketAddr>) -> PeerConfig {
        PeerConfig {
            node_id,
            peers,
            frame_bytes_max: crate::FRAME_BYTES_MAX_DEFAULT,
            redial_delay_min: REDIAL_DELAY_MIN_DEFAULT,
            redial_delay_max: REDIAL_DELAY_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    #[error("cannot encode a peer message: {0}")]
    Encode(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer sent a bad hello: {0}")]
    Hello(String),
}

/// One peer this node dials: where, the sending half of the link its dialling task drives, and how
/// to wake that task from its backoff (the peer just connected to us, so it is up again).
struct Link {
    addr: SocketAddr,
    sender: LinkSender,
    wake: Arc<Notify>,
}

/// Per-peer fault and latency controls, shared by the sending half, the dialling tasks and the
/// accepting side.
#[derive(Debug, Default)]
struct LinkControls {
    /// An extra delay on every frame to the peer (WAN emulation between datacenters). Frames keep
    /// their order: each waits until its own queueing time plus the delay.
    delays: std::sync::RwLock<BTreeMap<u64, Duration>>,
    /// Peers cut off (fault injection): nothing is sent to them, and what they send is dropped.
    blocked: std::sync::RwLock<std::collections::BTreeSet<u64>>,
}

impl LinkControls {
    fn delay(&self, peer: u64) -> Duration {
        let delays = self.delays.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        delays.get(&peer).copied().unwrap_or_default()
    }

    fn is_blocked(&self, peer: u64) -> bool {
        self.blocked.read().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&peer)
    }
}

type Links = Arc<std::sync::RwLock<BTreeMap<u64, Link>>>;

/// Backoff between dials, and a count of failed dials (for tests and diagnostics).
#[derive(Debug, Clone)]
struct Redial {
    delay_min: Duration,
    delay_max: Duration,
    failures: Arc<AtomicU64>,
}

/// The sending half: cheap to clone, never blocks.
pub struct PeerNetwork<M> {
    node_id: u64,
    /// Peers refuse frames over this (they share the configuration): such a message is not sent.
    frame_bytes_max: usize,
    /// Replaced wholesale when the group's configuration changes (rarely); read on every send.
    links: Links,
    redial: Redial,
    runtime: tokio::runtime::Handle,
    accept_task: Arc<tokio::task::AbortHandle>,
    controls: Arc<LinkControls>,
    direct_writes: Arc<DirectWriteCounters>,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for PeerNetwork<M> {
    fn clone(&self) -> Self {
        PeerNetwork {
            node_id: self.node_id,
            frame_bytes_max: self.frame_bytes_max,
            links: Arc::clone(&self.links),
            redial: self.redial.clone(),
            runtime: self.runtime.clone(),
            accept_task: Arc::clone(&self.accept_task),
            controls: Arc::clone(&self.controls),
            direct_writes: Arc::clone(&self.direct_writes),
            _message: PhantomData,
        }
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> PeerNetwork<M> {
    /// Starts dialling every peer and accepting peers on `listener`; messages received are delivered
    /// to `inbound` as (sender id, message). Must be called inside a tokio runtime.
    pub fn start(config: PeerConfig, listener: TcpListener, inbound: mpsc::Sender<(u64, M)>) -> PeerNetwork<M> {
        let decoder = FrameDecoder { frame_bytes_max: config.frame_bytes_max };
        let links: Links = Arc::new(std::sync::RwLock::new(BTreeMap::new()));
        let controls = Arc::new(LinkControls::default());
        let accept_task =
            tokio::spawn(accept_loop(listener, decoder, inbound, Arc::clone(&links), Arc::clone(&controls)))
                .abort_handle();
        let network = PeerNetwork {
            node_id: config.node_id,
            frame_bytes_max: config.frame_bytes_max,
            links,
            redial: Redial {
                delay_min: config.redial_delay_min.max(Duration::from_millis(1)),
                delay_max: config.redial_delay_max.max(config.redial_delay_min),
                failures: Arc::new(AtomicU64::new(0)),
            },
            runtime: tokio::runtime::Handle::current(),
            accept_task: Arc::new(accept_task),
            controls,
            direct_writes: Arc::new(DirectWriteCounters::default()),
            _message: PhantomData,
        };
        network.set_peers(&config.peers);
        network
    }

    /// Makes `peers` the set this node dials: new peers (or peers at a new address) get a dialling
    /// task, peers no longer listed are disconnected. This node's own id is skipped.
    pub fn set_peers(&self, peers: &BTreeMap<u64, SocketAddr>) {
        let mut links = self.links.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Dropping a link's sending half ends its dialling task, which closes the connection.
        links.retain(|id, link| peers.get(id) == Some(&link.addr));
        for (&peer, &addr) in peers {
            if peer == self.node_id || links.contains_key(&peer) {
                continue;
            }
            let (sender, receiver) = link::link(peer, PEER_QUEUE_MAX);
            let wake = Arc::new(Notify::new());
            links.insert(peer, Link { addr, sender, wake: Arc::clone(&wake) });
            self.runtime.spawn(dial_loop(
                self.node_id,
                peer,
                addr,
                receiver,
                wake,
                self.redial.clone(),
                Arc::clone(&self.controls),
            ));
        }
    }

    /// Delays every later message to `peer` by `delay` (WAN emulation; zero: none). Order is kept.
    /// A delayed link never takes the direct path: its frames wait in the dialling task.
    pub fn set_link_delay(&self, peer: u64, delay: Duration) {
        let mut delays = self.controls.delays.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if delay.is_zero() {
            delays.remove(&peer);
        } else {
            delays.insert(peer, delay);
        }
    }

    /// Cuts `peer` off (`true`) or reconnects it: while blocked, sends to it are dropped and
    /// messages from it are discarded on arrival (fault injection: a network partition).
    pub fn set_blocked(&self, peer: u64, blocked: bool) {
        let mut set = self.controls.blocked.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if blocked {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }

    /// Whether `peer` is cut off (see [`PeerNetwork::set_blocked`]).
    pub fn is_blocked(&self, peer: u64) -> bool {
        self.controls.is_blocked(peer)
    }

    /// The peers this node dials, with their addresses.
    pub fn peers(&self) -> BTreeMap<u64, SocketAddr> {
        let links = self.links.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        links.iter().map(|(&id, link)| (id, link.addr)).collect()
    }

    /// How many dials of a peer have failed so far (all peers together).
    pub fn dial_failures(&self) -> u64 {
        self.redial.failures.load(Ordering::Relaxed)
    }

    /// How many messages `send` wrote to a peer's connection itself, whole (all peers together).
    pub fn direct_writes(&self) -> u64 {
        self.direct_writes.whole()
    }

    /// How many messages `send` began to write itself whose rest the dialling task wrote (the
    /// connection took only part of them at once).
    pub fn partial_direct_writes(&self) -> u64 {
        self.direct_writes.partial()
    }

    /// Whether a `send` to `peer` now would write directly (connected, nothing queued). Tests use
    /// it to know the direct path is open before relying on it.
    #[cfg(test)]
    fn link_is_idle(&self, peer: u64) -> bool {
        let links = self.links.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        links.get(&peer).is_some_and(|link| link.sender.is_idle())
    }

    /// Stops accepting and dialling peers (node shutdown); sends are dropped from now on.
    pub fn shut_down(&self) {
        self.accept_task.abort();
        self.links.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Sends `message` to `to`: written to the connection right away from this thread when the link
    /// is connected and idle and has no delay (the rest queued if the socket takes only part),
    /// else queued for the link's dialling task. Never blocks. Returns false when it was dropped
    /// (unknown peer, queue full, a direct write failed, a message larger than a frame may be, or
    /// encoding failed — the last two are logged).
    pub fn send(&self, to: u64, message: &M) -> bool {
        if self.controls.is_blocked(to) {
            return false;
        }
        let links = self.links.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(link) = links.get(&to) else { return false };
        let payload = match postcard::to_allocvec(message) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, to, "cannot encode a peer message");
                return false;
            }
        };
        if payload.len() > self.frame_bytes_max {
            // The peer would drop the connection on it (and encoding a frame over 4 GiB is a bug).
            tracing::error!(
                to,
                bytes = payload.len(),
                limit = self.frame_bytes_max,
                "a peer message too large to send"
            );
            return false;
        }
        let mut frame = BytesMut::with_capacity(payload.len() + 8);
        encode_frame(&payload, &mut frame);
        // A delayed frame must wait its turn in the dialling task, and so must every frame after
        // it (the link is not idle until the delayed ones are written: order is kept).
        let direct_write_allowed = self.controls.delay(to).is_zero();
        link.sender.send(frame, direct_write_allowed, &self.direct_writes)
    }
}

/// Keeps one connection to `peer` open, writing every queued frame; redials at once when the peer
/// closes it (or a write to it fails, here or in `send`), and with backoff while the peer is
/// unreachable (until `wake`: the peer connected to us).
async fn dial_loop(
    node_id: u64,
    peer: u64,
    addr: SocketAddr,
    mut link: LinkReceiver,
    wake: Arc<Notify>,
    redial: Redial,
    controls: Arc<LinkControls>,
) {
    let mut delay = redial.delay_min;
    loop {
        if link.is_closed() {
            return; // the peer left the group, or the node is shutting down
        }
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(peer, %addr, %error, "peer unreachable; retrying");
                redial.failures.fetch_add(1, Ordering::Relaxed);
                // Messages for an unreachable peer are stale by the time it returns: drop them.
                link.discard_queued();
                tokio::select! {
                    () = tokio::time::sleep(delay) => delay = (delay * 2).min(redial.delay_max),
                    () = wake.notified() => {
                        tracing::debug!(peer, "peer connected to us: redialling it now");
                        delay = redial.delay_min;
                    }
                }
                continue;
            }
        };
        delay = redial.delay_min;
        let _ = stream.set_nodelay(true);
        let outcome = write_frames(node_id, peer, stream, &mut link, &controls).await;
        // Whatever ended the connection, `send` must stop writing to it (and the socket closes
        // once the last reference goes).
        link.withdraw();
        match outcome {
            Ok(()) => return, // the node is shutting down: its sender is gone
            Err(error) => tracing::debug!(peer, %error, "peer connection lost; redialling"),
        }
    }
}

/// Writes the hello, then every queued frame, until the queue closes (`Ok`) or the connection
/// fails or the peer closes it (`Err`: redial). Once the hello is written, `send` may write frames
/// directly while this task has none to write (see [`crate::link`]).
async fn write_frames(
    node_id: u64,
    peer: u64,
    stream: TcpStream,
    link: &mut LinkReceiver,
    controls: &LinkControls,
) -> std::io::Result<()> {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(writer);
    let mut hello = BytesMut::new();
    let mut payload = HELLO_MAGIC.to_vec();
    payload.extend_from_slice(&node_id.to_le_bytes());
    encode_frame(&payload, &mut hello);
    link::write_all(&writer, &hello).await?;
    // Only now: the hello must be the first frame on every connection.
    link.publish(Arc::clone(&writer));
    let failure_watch = link.failure_watch();
    let mut batch = BytesMut::new();
    // Peers never write on a connection they accepted: reading only tells when the far end closed
    // it (the peer process died or dropped the connection), which a write would report only after
    // a frame or more had been lost into it.
    let mut ignored = [0u8; 64];
    // Bytes taken from the queue that were not due yet when the last batch was written.
    let mut early: Option<Queued> = None;
    loop {
        if early.is_none() {
            // Everything taken from the queue is written: if nothing else is queued, the link is
            // idle and `send` may write directly again.
            link.mark_idle_if_drained();
        }
        tokio::select! {
            // A failed direct write first: frames queued after it must not go into the dead
            // connection.
            biased;
            () = failure_watch.direct_write_failed() => {
                return Err(std::io::Error::other("a direct write to the peer failed"));
            }
            read = reader.read(&mut ignored) => match read {
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the peer closed the connection")),
                Ok(_) => {} // not part of the protocol; ignored
                Err(error) => return Err(error),
            },
            queued = next_frame(&mut early, link) => {
                let Some(first) = queued else { return Ok(()) };
                let delay = controls.delay(peer);
                let due_at = first.due_at(delay);
                if due_at > tokio::time::Instant::now() {
                    tokio::time::sleep_until(due_at).await;
                }
                batch.extend_from_slice(&first.bytes);
                // Coalesce whatever else is queued (and due) into one write.
                while let Some(next) = link.try_recv() {
                    if next.due_at(delay) > tokio::time::Instant::now() {
                        early = Some(next);
                        break;
                    }
                    batch.extend_from_slice(&next.bytes);
                }
                link::write_all(&writer, &batch).await?;
                batch.clear();
            }
        }
    }
}

/// The bytes held back from the last batch, else the next queued (`None`: the queue closed).
async fn next_frame(early: &mut Option<Queued>, link: &mut LinkReceiver) -> Option<Queued> {
    match early.take() {
        Some(queued) => Some(queued),
        None => link.recv().await,
    }
}

async fn accept_loop<M: DeserializeOwned + Send + 'static>(
    listener: TcpListener,
    decoder: FrameDecoder,
    inbound: mpsc::Sender<(u64, M)>,
    links: Links,
    controls: Arc<LinkControls>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "peer accept failed");
                tokio::time::sleep(REDIAL_DELAY_MIN_DEFAULT).await;
                continue;
            }
        };
        let inbound = inbound.clone();
        let links = Arc::clone(&links);
        let controls = Arc::clone(&controls);
        tokio::spawn(async move {
            if let Err(error) = read_peer(stream, decoder, inbound, &links, &controls).await {
                tracing::debug!(%remote, %error, "peer connection closed");
            }
        });
    }
}

async fn read_peer<M: DeserializeOwned>(
    mut stream: TcpStream,
    decoder: FrameDecoder,
    inbound: mpsc::Sender<(u64, M)>,
    links: &Links,
    controls: &LinkControls,
) -> Result<(), NetworkError> {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let Some(hello) = read_frame(&mut stream, &mut buffer, &decoder).await? else { return Ok(()) };
    if hello.len() != 16 || &hello[..8] != HELLO_MAGIC {
        return Err(NetworkError::Hello("not a Chorus peer, or another protocol version".into()));
    }
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(&hello[8..16]);
    let from = u64::from_le_bytes(id_bytes);
    // The peer is up: if our dialling task is waiting out a backoff, it should redial now.
    if let Some(link) = links.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&from) {
        link.wake.notify_one();
    }
    while let Some(payload) = read_frame(&mut stream, &mut buffer, &decoder).await? {
        if controls.is_blocked(from) {
            continue;
        }
        match postcard::from_bytes::<M>(&payload) {
            Ok(message) => {
                if inbound.send((from, message)).await.is_err() {
                    return Ok(()); // the node is shutting down
                }
            }
            // A frame that passed its checksum but does not decode is a version mismatch or a bug
            // on the peer: drop that connection rather than guess.
            Err(error) => return Err(NetworkError::Encode(error.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// `Tagged` is the `n`th message a sending thread sent; a `Blob`'s bytes depend on its
    /// `sequence` (see [`blob_bytes`]).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Ping {
        Hello { text: String },
        Number(u64),
        Tagged { thread: u64, n: u64 },
        Blob { sequence: u64, bytes: bytes::Bytes },
    }

    async fn bind() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    async fn receive(inbox: &mut mpsc::Receiver<(u64, Ping)>) -> (u64, Ping) {
        tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap()
    }

    /// Sends `message` until it arrives (a peer may not be listening yet: delivery is best effort).
    async fn send_until_received(
        network: &PeerNetwork<Ping>,
        to: u64,
        message: Ping,
        inbox: &mut mpsc::Receiver<(u64, Ping)>,
    ) -> (u64, Ping) {
        for _ in 0..200 {
            network.send(to, &message);
            if let Ok(Some(received)) = tokio::time::timeout(Duration::from_millis(50), inbox.recv()).await {
                return received;
            }
        }
        panic!("message never arrived");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_exchange_typed_messages_in_order() {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind().await;
        let peers: BTreeMap<u64, SocketAddr> = [(1, addr_1), (2, addr_2)].into();
        let (inbound_1, mut inbox_1) = mpsc::channel(1024);
        let (inbound_2, mut inbox_2) = mpsc::channel(1024);
        let config = |node_id| PeerConfig::new(node_id, peers.clone());
        let network_1 = PeerNetwork::start(config(1), listener_1, inbound_1);
        let network_2 = PeerNetwork::start(config(2), listener_2, inbound_2);

        let first = Ping::Hello { text: "hi".into() };
        assert_eq!(send_until_received(&network_1, 2, first.clone(), &mut inbox_2).await, (1, first));
        for n in 0..100 {
            assert!(network_1.send(2, &Ping::Number(n)));
        }
        for n in 0..100 {
            assert_eq!(receive(&mut inbox_2).await, (1, Ping::Number(n)), "in order on one connection");
        }
        let back = Ping::Number(7);
        assert_eq!(send_until_received(&network_2, 1, back.clone(), &mut inbox_1).await, (2, back));
        assert!(!network_1.send(9, &Ping::Number(0)), "unknown peers are refused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_starts_late_is_reached_once_it_listens() {
        let (listener_1, addr_1) = bind().await;
        // Reserve an address for node 2, then free it until node 2 starts.
        let (placeholder, addr_2) = bind().await;
        drop(placeholder);
        let peers: BTreeMap<u64, SocketAddr> = [(1, addr_1), (2, addr_2)].into();
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let network_1 = PeerNetwork::start(PeerConfig::new(1, peers.clone()), listener_1, inbound_1);
        network_1.send(2, &Ping::Number(1)); // dropped or queued: node 2 is down
        let listener_2 = TcpListener::bind(addr_2).await.unwrap();
        let (inbound_2, mut inbox_2) = mpsc::channel(16);
        let _network_2 = PeerNetwork::start(PeerConfig::new(2, peers), listener_2, inbound_2);
        let (from, _) = send_until_received(&network_1, 2, Ping::Number(2), &mut inbox_2).await;
        assert_eq!(from, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peers_can_be_added_and_removed_while_running() {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind().await;
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let (inbound_2, mut inbox_2) = mpsc::channel(16);
        let alone: BTreeMap<u64, SocketAddr> = [(1, addr_1)].into();
        let network_1 = PeerNetwork::start(PeerConfig::new(1, alone.clone()), listener_1, inbound_1);
        let _network_2 = PeerNetwork::<Ping>::start(PeerConfig::new(2, alone.clone()), listener_2, inbound_2);
        assert!(!network_1.send(2, &Ping::Number(0)), "node 2 is not a peer yet");
        network_1.set_peers(&[(1, addr_1), (2, addr_2)].into());
        assert_eq!(network_1.peers(), [(2, addr_2)].into());
        let (from, _) = send_until_received(&network_1, 2, Ping::Number(1), &mut inbox_2).await;
        assert_eq!(from, 1);
        network_1.set_peers(&alone);
        assert!(network_1.peers().is_empty());
        assert!(!network_1.send(2, &Ping::Number(2)), "node 2 was removed");
        network_1.shut_down();
    }

    /// Accepts one connection on `listener` (a stand-in for a peer) within 10 s and reads its hello.
    async fn accept_peer(listener: &TcpListener) -> (TcpStream, u64) {
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the node dialled the peer")
            .unwrap();
        let mut buffer = BytesMut::new();
        let hello = read_frame(&mut stream, &mut buffer, &FrameDecoder::default()).await.unwrap().unwrap();
        assert_eq!(&hello[..8], HELLO_MAGIC);
        assert!(buffer.is_empty(), "nothing was sent but the hello");
        (stream, u64::from_le_bytes(hello[8..16].try_into().unwrap()))
    }

    /// The regression behind a flaky end-to-end test: a peer killed and restarted left the dialling
    /// node writing into the dead connection (the first write "succeeds" and is lost; only the next
    /// reports the broken pipe), so requests sent right after the restart timed out. The node must
    /// redial as soon as the far end closes, without any write to find out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_the_peer_closes_is_redialled_at_once_without_a_write() {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind().await;
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let network_1 =
            PeerNetwork::<Ping>::start(PeerConfig::new(1, [(1, addr_1), (2, addr_2)].into()), listener_1, inbound_1);
        let (first, from) = accept_peer(&listener_2).await;
        assert_eq!(from, 1);
        drop(first); // the peer process dies: its kernel closes the connection
        // No message is sent meanwhile: only the closed read half can tell the node to redial.
        let (mut second, from) = accept_peer(&listener_2).await;
        assert_eq!(from, 1);
        assert!(network_1.send(2, &Ping::Number(7)));
        let mut buffer = BytesMut::new();
        let frame = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(&mut second, &mut buffer, &FrameDecoder::default()),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(postcard::from_bytes::<Ping>(&frame).unwrap(), Ping::Number(7), "sent on the new connection");
    }

    /// A peer that was unreachable for long has pushed the redial backoff up; when it comes back it
    /// dials us at once, and we must not wait out the backoff before we can answer it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_connects_to_us_is_redialled_without_waiting_out_the_backoff() {
        let (listener_1, addr_1) = bind().await;
        let (placeholder, addr_2) = bind().await;
        drop(placeholder); // node 2 is down
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let mut config = PeerConfig::new(1, [(1, addr_1), (2, addr_2)].into());
        config.redial_delay_min = Duration::from_secs(600);
        config.redial_delay_max = Duration::from_secs(600);
        let network_1 = PeerNetwork::<Ping>::start(config, listener_1, inbound_1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while network_1.dial_failures() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first dial of node 2 never failed");
            tokio::task::yield_now().await;
        }
        // Node 2 comes back (now in a 600 s backoff at node 1) and dials node 1.
        let listener_2 = TcpListener::bind(addr_2).await.unwrap();
        let mut to_1 = TcpStream::connect(addr_1).await.unwrap();
        let mut payload = HELLO_MAGIC.to_vec();
        payload.extend_from_slice(&2u64.to_le_bytes());
        let mut hello = BytesMut::new();
        encode_frame(&payload, &mut hello);
        to_1.write_all(&hello).await.unwrap();
        let (_stream, from) = accept_peer(&listener_2).await;
        assert_eq!(from, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delayed_link_keeps_order_and_a_blocked_peer_is_cut_off_both_ways() {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind().await;
        let peers: BTreeMap<u64, SocketAddr> = [(1, addr_1), (2, addr_2)].into();
        let (inbound_1, mut inbox_1) = mpsc::channel(1024);
        let (inbound_2, mut inbox_2) = mpsc::channel(1024);
        let network_1 = PeerNetwork::start(PeerConfig::new(1, peers.clone()), listener_1, inbound_1);
        let network_2 = PeerNetwork::start(PeerConfig::new(2, peers), listener_2, inbound_2);
        send_until_received(&network_1, 2, Ping::Number(0), &mut inbox_2).await;
        while inbox_2.try_recv().is_ok() {}

        let delay = Duration::from_millis(80);
        network_1.set_link_delay(2, delay);
        let sent_at = std::time::Instant::now();
        for n in 1..=20 {
            assert!(network_1.send(2, &Ping::Number(n)));
        }
        for n in 1..=20 {
            assert_eq!(receive(&mut inbox_2).await, (1, Ping::Number(n)), "a delayed link keeps order");
        }
        assert!(sent_at.elapsed() >= delay, "the delay was applied ({:?})", sent_at.elapsed());
        network_1.set_link_delay(2, Duration::ZERO);

        network_2.set_blocked(1, true);
        assert!(network_2.is_blocked(1));
        assert!(!network_2.send(1, &Ping::Number(99)), "nothing is sent to a blocked peer");
        assert!(network_1.send(2, &Ping::Number(100)));
        let delivered = tokio::time::timeout(Duration::from_millis(300), inbox_2.recv()).await;
        assert!(delivered.is_err(), "a blocked peer's messages are dropped on arrival: {delivered:?}");
        assert!(inbox_1.try_recv().is_err());
        network_2.set_blocked(1, false);
        send_until_received(&network_1, 2, Ping::Number(101), &mut inbox_2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_over_the_frame_limit_is_refused_not_sent() {
        let (listener, addr) = bind().await;
        let (inbound, _inbox) = mpsc::channel::<(u64, Ping)>(16);
        let mut config = PeerConfig::new(1, [(1, addr), (2, addr)].into());
        config.frame_bytes_max = 64;
        let network = PeerNetwork::<Ping>::start(config, listener, inbound);
        assert!(!network.send(2, &Ping::Hello { text: "x".repeat(100) }), "over the limit");
        assert!(network.send(2, &Ping::Number(1)), "a small message is queued");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stranger_is_disconnected_without_harm() {
        let (listener, addr) = bind().await;
        let (inbound, mut inbox) = mpsc::channel::<(u64, Ping)>(16);
        let peers: BTreeMap<u64, SocketAddr> = [(1, addr)].into();
        let _network = PeerNetwork::<Ping>::start(PeerConfig::new(1, peers), listener, inbound);
        let mut stranger = TcpStream::connect(addr).await.unwrap();
        stranger.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut stranger, &mut rest),
        )
        .await;
        assert!(closed.is_ok(), "the node closes a connection that is not a peer");
        assert!(inbox.try_recv().is_err(), "nothing was delivered");
    }

    /// Waits (polling, up to 10 s) until `condition` holds.
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Two started nodes, 1 and 2, with node 1's link to node 2 connected and idle (so its next
    /// `send` to node 2 takes the direct path).
    async fn two_connected_nodes() -> (PeerNetwork<Ping>, PeerNetwork<Ping>, mpsc::Receiver<(u64, Ping)>) {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind().await;
        let peers: BTreeMap<u64, SocketAddr> = [(1, addr_1), (2, addr_2)].into();
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let (inbound_2, mut inbox_2) = mpsc::channel(8192);
        let network_1 = PeerNetwork::start(PeerConfig::new(1, peers.clone()), listener_1, inbound_1);
        let network_2 = PeerNetwork::start(PeerConfig::new(2, peers), listener_2, inbound_2);
        send_until_received(&network_1, 2, Ping::Number(0), &mut inbox_2).await;
        wait_until("node 1's link to node 2 is idle", || network_1.link_is_idle(2)).await;
        // Retries of the first message may still be on their way: everything sent before the
        // marker arrives before it.
        let marker = Ping::Hello { text: "connected".into() };
        assert!(network_1.send(2, &marker));
        while receive(&mut inbox_2).await != (1, marker.clone()) {}
        wait_until("node 1's link to node 2 is idle", || network_1.link_is_idle(2)).await;
        (network_1, network_2, inbox_2)
    }

    /// Runs `work` on a plain thread (not a tokio worker: like a storage log writer) and waits for
    /// it without blocking the runtime.
    async fn on_plain_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(work());
        });
        tokio::time::timeout(Duration::from_secs(30), result).await.unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_from_several_plain_threads_arrive_whole_and_in_each_threads_order() {
        let (network_1, _network_2, mut inbox_2) = two_connected_nodes().await;
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 800; // all of them fit the queue, should the link be busy throughout
        let direct_before = network_1.direct_writes();
        let senders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let network = network_1.clone();
                std::thread::spawn(move || (0..PER_THREAD).all(|n| network.send(2, &Ping::Tagged { thread, n })))
            })
            .collect();
        let mut next_expected = [0u64; THREADS as usize];
        for _ in 0..THREADS * PER_THREAD {
            match receive(&mut inbox_2).await {
                (1, Ping::Tagged { thread, n }) => {
                    assert_eq!(n, next_expected[thread as usize], "thread {thread}'s messages in its order");
                    next_expected[thread as usize] += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(next_expected, [PER_THREAD; THREADS as usize]);
        for sender in senders {
            assert!(sender.join().unwrap(), "every send was accepted");
        }
        assert!(network_1.direct_writes() > direct_before, "the idle link was written to directly");
        assert!(inbox_2.try_recv().is_err(), "nothing more, nothing duplicated");
    }

    /// The bytes of blob `sequence`: different for every blob and position, so a lost, duplicated
    /// or misplaced stretch of bytes shows.
    fn blob_bytes(sequence: u64, length: usize) -> bytes::Bytes {
        (0..length).map(|i| (i as u64).wrapping_mul(31).wrapping_add(sequence) as u8).collect()
    }

    /// A listener whose accepted connections have a small, fixed receive buffer: with nobody
    /// reading, such a connection holds at most the sender's send buffer (Linux grows it up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default) and a little more.
    async fn bind_with_small_receive_buffer() -> (TcpListener, SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_a_direct_write_takes_only_part_of_arrive_intact_and_in_order() {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind_with_small_receive_buffer().await;
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let network_1 =
            PeerNetwork::<Ping>::start(PeerConfig::new(1, [(1, addr_1), (2, addr_2)].into()), listener_1, inbound_1);
        // Node 2 is played by this test, which reads nothing until every message is sent.
        let (mut peer_2, _) = accept_peer(&listener_2).await;
        wait_until("node 1's link to node 2 is idle", || network_1.link_is_idle(2)).await;

        const BLOBS: u64 = 4;
        const BLOB_BYTES: usize = 16 * 1024 * 1024; // far more than the connection can hold
        let network = network_1.clone();
        let all_accepted = on_plain_thread(move || {
            (0..BLOBS).all(|sequence| {
                network.send(2, &Ping::Blob { sequence, bytes: blob_bytes(sequence, BLOB_BYTES) })
                    && network.send(2, &Ping::Number(sequence))
            })
        })
        .await;
        assert!(all_accepted);
        assert!(network_1.partial_direct_writes() >= 1, "the first blob was written partly by send");

        let decoder = FrameDecoder::default();
        let mut buffer = BytesMut::new();
        let mut next_frame = async || {
            let frame = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut peer_2, &mut buffer, &decoder))
                .await
                .expect("the frame arrived")
                .unwrap()
                .expect("the connection stayed open");
            postcard::from_bytes::<Ping>(&frame).unwrap()
        };
        for expected_sequence in 0..BLOBS {
            match next_frame().await {
                Ping::Blob { sequence, bytes } => {
                    assert_eq!(sequence, expected_sequence, "blobs in order");
                    assert!(bytes == blob_bytes(sequence, BLOB_BYTES), "blob {sequence} intact");
                }
                other => panic!("expected blob {expected_sequence}, got {other:?}"),
            }
            assert_eq!(next_frame().await, Ping::Number(expected_sequence), "small messages keep their place");
        }

        // Once the dialling task has written the tail and everything queued behind it, the link
        // is idle again and the next message goes out directly.
        wait_until("the link is idle again", || network_1.link_is_idle(2)).await;
        let direct_before = network_1.direct_writes();
        let network = network_1.clone();
        assert!(on_plain_thread(move || network.send(2, &Ping::Number(99))).await);
        assert_eq!(network_1.direct_writes(), direct_before + 1);
        assert_eq!(next_frame().await, Ping::Number(99));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_link_is_written_directly_from_a_plain_thread_but_a_delayed_one_never_is() {
        let (network_1, _network_2, mut inbox_2) = two_connected_nodes().await;
        let direct_before = network_1.direct_writes();
        let network = network_1.clone();
        assert!(on_plain_thread(move || (1..=10).all(|n| network.send(2, &Ping::Number(n)))).await);
        assert_eq!(network_1.direct_writes(), direct_before + 10, "every send on the idle link was direct");
        for n in 1..=10 {
            assert_eq!(receive(&mut inbox_2).await, (1, Ping::Number(n)));
        }

        // A delay switched on and off mid-stream: the frames sent while it was on wait for it,
        // and those sent after it went off queue behind them rather than overtake them directly.
        let direct_before = network_1.direct_writes();
        network_1.set_link_delay(2, Duration::from_millis(50));
        let network = network_1.clone();
        let (all_accepted, direct_while_delayed) = on_plain_thread(move || {
            let delayed = (11..=20).all(|n| network.send(2, &Ping::Number(n)));
            let direct_while_delayed = network.direct_writes();
            network.set_link_delay(2, Duration::ZERO);
            let after = (21..=30).all(|n| network.send(2, &Ping::Number(n)));
            (delayed && after, direct_while_delayed)
        })
        .await;
        assert!(all_accepted);
        assert_eq!(direct_while_delayed, direct_before, "a delayed link is not written directly");
        for n in 11..=30 {
            assert_eq!(receive(&mut inbox_2).await, (1, Ping::Number(n)), "order across the delay switch");
        }
        let direct_before = network_1.direct_writes();

        wait_until("the link is idle again", || network_1.link_is_idle(2)).await;
        network_1.set_link_delay(2, Duration::from_millis(1));
        assert!(network_1.send(2, &Ping::Number(31)));
        assert_eq!(network_1.direct_writes(), direct_before, "a delayed link, even idle, is never written directly");
        assert_eq!(receive(&mut inbox_2).await, (1, Ping::Number(31)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_closes_mid_stream_is_redialled_and_later_frames_arrive() {
        let (listener_1, addr_1) = bind().await;
        let (listener_2, addr_2) = bind().await;
        let (inbound_1, _inbox_1) = mpsc::channel(16);
        let network_1 =
            PeerNetwork::<Ping>::start(PeerConfig::new(1, [(1, addr_1), (2, addr_2)].into()), listener_1, inbound_1);
        let decoder = FrameDecoder::default();
        let (mut first, _) = accept_peer(&listener_2).await;
        wait_until("node 1's link to node 2 is idle", || network_1.link_is_idle(2)).await;
        assert!(network_1.send(2, &Ping::Number(1)));
        let mut buffer = BytesMut::new();
        let frame = read_frame(&mut first, &mut buffer, &decoder).await.unwrap().unwrap();
        assert_eq!(postcard::from_bytes::<Ping>(&frame).unwrap(), Ping::Number(1));
        drop(first); // the peer goes away mid-stream

        // Sends right after the close may be written directly into the dead connection (and
        // fail), or queue for the dialling task: either way they must neither block nor panic,
        // and the connection is redialled.
        let network = network_1.clone();
        on_plain_thread(move || {
            for n in 2..100 {
                network.send(2, &Ping::Number(n));
            }
        })
        .await;
        let (mut second, _) = tokio::time::timeout(Duration::from_secs(10), listener_2.accept())
            .await
            .expect("the node redialled the peer")
            .unwrap();
        let mut buffer = BytesMut::new();
        let hello = read_frame(&mut second, &mut buffer, &decoder).await.unwrap().unwrap();
        assert_eq!(hello[..8], HELLO_MAGIC[..], "the hello comes first on the new connection");
        wait_until("the new connection is idle", || network_1.link_is_idle(2)).await;
        assert!(network_1.send(2, &Ping::Number(100)));
        // Frames queued while redialling may arrive first; all in order, ending with the last.
        let mut last = 1;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut second, &mut buffer, &decoder))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let Ping::Number(n) = postcard::from_bytes::<Ping>(&frame).unwrap() else { panic!("not a number") };
            assert!(n > last, "in order: {n} after {last}");
            last = n;
            if n == 100 {
                break;
            }
        }
    }
}
