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

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

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

/// A frame waiting to be written, stamped with when it was queued (for the WAN delay).
type Queued = (tokio::time::Instant, BytesMut);

/// One peer this node dials: where, the queue its dialling task drains, and how to wake that task
/// from its backoff (the peer just connected to us, so it is up again).
struct Link {
    addr: SocketAddr,
    queue: mpsc::Sender<Queued>,
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
            _message: PhantomData,
        };
        network.set_peers(&config.peers);
        network
    }

    /// Makes `peers` the set this node dials: new peers (or peers at a new address) get a dialling
    /// task, peers no longer listed are disconnected. This node's own id is skipped.
    pub fn set_peers(&self, peers: &BTreeMap<u64, SocketAddr>) {
        let mut links = self.links.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Dropping a link's queue ends its dialling task.
        links.retain(|id, link| peers.get(id) == Some(&link.addr));
        for (&peer, &addr) in peers {
            if peer == self.node_id || links.contains_key(&peer) {
                continue;
            }
            let (queue, receiver) = mpsc::channel(PEER_QUEUE_MAX);
            let wake = Arc::new(Notify::new());
            links.insert(peer, Link { addr, queue, wake: Arc::clone(&wake) });
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

    /// Stops accepting and dialling peers (node shutdown); sends are dropped from now on.
    pub fn shut_down(&self) {
        self.accept_task.abort();
        self.links.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Queues `message` for `to`. Returns false when it was dropped (unknown peer, queue full, a
    /// message larger than a frame may be, or encoding failed — the last two are logged).
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
        link.queue.try_send((tokio::time::Instant::now(), frame)).is_ok()
    }
}

/// Keeps one connection to `peer` open, writing every queued frame; redials at once when the peer
/// closes it, and with backoff while the peer is unreachable (until `wake`: the peer connected to
/// us).
async fn dial_loop(
    node_id: u64,
    peer: u64,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Queued>,
    wake: Arc<Notify>,
    redial: Redial,
    controls: Arc<LinkControls>,
) {
    let mut delay = redial.delay_min;
    loop {
        if queue.is_closed() {
            return; // the peer left the group, or the node is shutting down
        }
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(peer, %addr, %error, "peer unreachable; retrying");
                redial.failures.fetch_add(1, Ordering::Relaxed);
                // Messages for an unreachable peer are stale by the time it returns: drop them.
                while queue.try_recv().is_ok() {}
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
        match write_frames(node_id, peer, stream, &mut queue, &controls).await {
            Ok(()) => return, // the node is shutting down: its sender is gone
            Err(error) => tracing::debug!(peer, %error, "peer connection lost; redialling"),
        }
    }
}

/// Writes the hello, then every queued frame, until the queue closes (`Ok`) or the connection
/// fails or the peer closes it (`Err`: redial).
async fn write_frames(
    node_id: u64,
    peer: u64,
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Queued>,
    controls: &LinkControls,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let mut hello = BytesMut::new();
    let mut payload = HELLO_MAGIC.to_vec();
    payload.extend_from_slice(&node_id.to_le_bytes());
    encode_frame(&payload, &mut hello);
    writer.write_all(&hello).await?;
    let mut batch = BytesMut::new();
    // Peers never write on a connection they accepted: reading only tells when the far end closed
    // it (the peer process died or dropped the connection), which a write would report only after
    // a frame or more had been lost into it.
    let mut ignored = [0u8; 64];
    // A frame taken from the queue that was not due yet when the last batch was written.
    let mut early: Option<Queued> = None;
    loop {
        tokio::select! {
            queued = next_frame(&mut early, queue) => {
                let Some((queued_at, frame)) = queued else { return Ok(()) };
                let delay = controls.delay(peer);
                if !delay.is_zero() {
                    tokio::time::sleep_until(queued_at + delay).await;
                }
                batch.extend_from_slice(&frame);
                // Coalesce whatever else is queued (and due) into one write.
                while let Ok((queued_at, frame)) = queue.try_recv() {
                    if !delay.is_zero() && queued_at + delay > tokio::time::Instant::now() {
                        early = Some((queued_at, frame));
                        break;
                    }
                    batch.extend_from_slice(&frame);
                }
                writer.write_all(&batch).await?;
                batch.clear();
            }
            read = reader.read(&mut ignored) => match read {
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the peer closed the connection")),
                Ok(_) => {} // not part of the protocol; ignored
                Err(error) => return Err(error),
            },
        }
    }
}

/// The frame held back from the last batch, else the next one queued (`None`: the queue closed).
async fn next_frame(early: &mut Option<Queued>, queue: &mut mpsc::Receiver<Queued>) -> Option<Queued> {
    match early.take() {
        Some(queued) => Some(queued),
        None => queue.recv().await,
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

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Ping {
        Hello { text: String },
        Number(u64),
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
}
