//! The writing side of one peer link, shared by [`crate::PeerNetwork::send`] (called from any
//! thread: tokio workers, and plain threads such as a storage log writer) and the link's dial task
//! (which owns the connection: dials, writes the hello, redials).
//!
//! The fast path: when the link is connected and idle (the dial task holds no bytes to write) and
//! has no artificial delay, `send` writes the frame to the socket itself with a non-blocking write,
//! from the calling thread. Waking the dial task instead costs a cross-thread wake (unparking a
//! tokio worker, a context switch) before the frame's `write` happens, which is CPU and tens of
//! microseconds per replication round on a small machine. Otherwise, and for whatever part of a
//! frame the non-blocking write could not take, the frame goes to the dial task's queue as before.
//!
//! The invariants, and where each is enforced:
//! 1. Frames to one peer leave in the order `send` took the link's lock, and the bytes of two
//!    frames never interleave: there is exactly one writer of the connection at a time. `send`
//!    writes only under the lock and only while `dial_task_has_bytes` is false; the dial task
//!    writes only bytes it took from the queue, which `send` fills only under the same lock,
//!    setting `dial_task_has_bytes` in the same critical section; and the dial task clears that
//!    flag only under the lock, once its queue is empty and everything it took is written
//!    ([`LinkReceiver::mark_idle_if_drained`]). So while `send` writes directly, the dial task has
//!    nothing to write, and while the dial task has something to write, `send` queues behind it.
//! 2. A partial direct write loses and duplicates nothing: the unwritten tail is queued (with
//!    `dial_task_has_bytes` set) before the lock is released, into a queue that is empty at that
//!    point (the link was idle), so it is the next thing the dial task writes and every later frame
//!    queues behind it. If the tail cannot be queued (the dial task is gone) the connection is
//!    withdrawn: a half frame must never be followed by another frame's bytes. A tail names the
//!    connection its head went to, and the dial task drops a tail whose connection has ended
//!    ([`LinkReceiver::recv`]): on a new connection it would be garbage in place of a frame.
//! 3. A failed direct write withdraws the connection (later sends queue for the dial task) and
//!    wakes the dial task, which drops the connection and redials, as for its own write errors.
//!    The frame counts as dropped. `send` never waits on the network: its write is non-blocking,
//!    and the link's lock is only ever held for one non-blocking write or a queue operation (or a
//!    flag update), never across an `.await`, so a caller waits at most for another's write call.
//! 4. The hello is the first frame on every connection: the dial task publishes a connection to
//!    `send` only after writing the hello on it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Bytes waiting for the dial task to write them: a whole frame, or the tail of one.
#[derive(Debug)]
pub(crate) struct Queued {
    /// When `send` queued it (a link delay counts from here).
    pub queued_at: Instant,
    pub bytes: BytesMut,
    /// For the rest of a frame whose head `send` already wrote: the number of the connection it
    /// went to. Such a tail goes out at once whatever the link's delay (the connection is
    /// unusable for anything else until it has), and only on that connection.
    pub completes_frame_on: Option<u64>,
}

impl Queued {
    fn frame(bytes: BytesMut) -> Queued {
        Queued { queued_at: Instant::now(), bytes, completes_frame_on: None }
    }

    /// When these bytes may be written, on a link delayed by `delay`.
    pub fn due_at(&self, delay: Duration) -> Instant {
        if self.completes_frame_on.is_some() { self.queued_at } else { self.queued_at + delay }
    }
}

/// How often `send` wrote frames itself (all links together; for tests and diagnostics).
#[derive(Debug, Default)]
pub(crate) struct DirectWriteCounters {
    /// Frames wholly written by `send`.
    whole: AtomicU64,
    /// Frames `send` began to write whose tail the dial task finished.
    partial: AtomicU64,
}

impl DirectWriteCounters {
    pub fn whole(&self) -> u64 {
        self.whole.load(Ordering::Relaxed)
    }

    pub fn partial(&self) -> u64 {
        self.partial.load(Ordering::Relaxed)
    }
}

/// A connection the dial task has published to `send`.
#[derive(Debug)]
struct Published {
    writer: Arc<OwnedWriteHalf>,
    /// Counts the link's connections (1 for the first): tells a tail's connection from a later one.
    number: u64,
}

/// What `send` and the dial task share about the connection.
#[derive(Debug, Default)]
struct WriterState {
    /// The connection, once the dial task has written its hello; `None` while dialling, and from
    /// the moment a write to it failed.
    connection: Option<Published>,
    /// Whether the dial task has bytes to write: frames in its queue, a frame held back for the
    /// link delay, or a batch being written. While set, `send` must queue (invariant 1).
    dial_task_has_bytes: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<WriterState>,
    /// Woken when `send`'s direct write failed and withdrew the connection.
    connection_failed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // Nothing panics while holding the lock; should it ever, the state is still consistent
        // (every change to it is a single assignment).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A new link to `peer`: the sending half for `PeerNetwork::send`, the receiving half for the dial
/// task. Dropping the sending half closes the queue, which ends the dial task.
pub(crate) fn link(peer: u64, queue_capacity: usize) -> (LinkSender, LinkReceiver) {
    let (queue, receiver) = mpsc::channel(queue_capacity);
    let shared = Arc::new(Shared::default());
    (
        LinkSender { peer, queue, shared: Arc::clone(&shared) },
        LinkReceiver { queue: receiver, shared, connections_published: 0 },
    )
}

#[derive(Debug)]
pub(crate) struct LinkSender {
    peer: u64,
    queue: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl LinkSender {
    /// Writes `frame` to the connection directly if the link is idle and `direct_write_allowed`
    /// (no link delay), else queues it for the dial task. False when the frame was dropped (queue
    /// full, or the direct write failed).
    pub fn send(&self, mut frame: BytesMut, direct_write_allowed: bool, counters: &DirectWriteCounters) -> bool {
        let mut state = self.shared.lock();
        // Invariant 1: write only while the dial task has nothing to write, and under the lock.
        let idle_connection = match &state.connection {
            Some(connection) if direct_write_allowed && !state.dial_task_has_bytes => connection,
            _ => return self.queue_locked(&mut state, Queued::frame(frame)),
        };
        let connection_number = idle_connection.number;
        let outcome = idle_connection.writer.try_write(&frame);
        match outcome {
            Ok(written) if written >= frame.len() => {
                counters.whole.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(written) => {
                // Invariant 2: the tail is queued before the lock is released, into an empty
                // queue (the link was idle), so nothing can get between it and its head.
                let started = written > 0;
                frame.advance(written);
                let tail = Queued {
                    queued_at: Instant::now(),
                    bytes: frame,
                    completes_frame_on: started.then_some(connection_number),
                };
                let queued = self.queue_locked(&mut state, tail);
                if !queued && started {
                    // The queue was empty, so the dial task is gone (the link is being removed):
                    // the connection carries a half frame and must not carry anything else.
                    state.connection = None;
                    self.shared.connection_failed.notify_one();
                } else if started {
                    counters.partial.fetch_add(1, Ordering::Relaxed);
                }
                queued
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.queue_locked(&mut state, Queued::frame(frame))
            }
            Err(error) => {
                // Invariant 3: withdraw the connection so later sends queue, and have the dial
                // task redial. Notified under the lock, so that the dial task sees the failure
                // before any frame queued after it.
                tracing::debug!(peer = self.peer, %error, "direct write to the peer failed; redialling");
                state.connection = None;
                self.shared.connection_failed.notify_one();
                false
            }
        }
    }

    /// Queues `queued` for the dial task (the caller holds the lock: invariant 1).
    fn queue_locked(&self, state: &mut WriterState, queued: Queued) -> bool {
        match self.queue.try_send(queued) {
            Ok(()) => {
                state.dial_task_has_bytes = true;
                true
            }
            Err(_) => false, // the queue is full (the peer is slow or down) or the link is gone
        }
    }

    /// Whether the next `send` without a delay would write directly.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        let state = self.shared.lock();
        state.connection.is_some() && !state.dial_task_has_bytes
    }
}

/// The dial task's half of a link.
#[derive(Debug)]
pub(crate) struct LinkReceiver {
    queue: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
    /// The number of the connection published last (0: none yet).
    connections_published: u64,
}

impl LinkReceiver {
    /// Whether the sending half is gone (the peer was removed, or the node is shutting down).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// The next queued bytes for the current connection; `None` once the sending half is gone.
    /// The tail of a frame begun on an earlier connection is dropped (invariant 2): that frame is
    /// lost with its connection, and its tail alone would be garbage on this one.
    pub async fn recv(&mut self) -> Option<Queued> {
        loop {
            let queued = self.queue.recv().await?;
            if self.belongs_to_current_connection(&queued) {
                return Some(queued);
            }
        }
    }

    /// Queued bytes for the current connection, if any are waiting (see [`LinkReceiver::recv`]).
    pub fn try_recv(&mut self) -> Option<Queued> {
        loop {
            let queued = self.queue.try_recv().ok()?;
            if self.belongs_to_current_connection(&queued) {
                return Some(queued);
            }
        }
    }

    fn belongs_to_current_connection(&self, queued: &Queued) -> bool {
        queued.completes_frame_on.is_none_or(|number| number == self.connections_published)
    }

    /// Drops everything queued (for a peer that cannot be reached: it would be stale by the time
    /// the peer returns).
    pub fn discard_queued(&mut self) {
        while self.queue.try_recv().is_ok() {}
    }

    /// Lets `send` write to `connection` directly (invariant 4: its hello is written).
    pub fn publish(&mut self, connection: Arc<OwnedWriteHalf>) {
        self.connections_published += 1;
        self.shared.lock().connection = Some(Published { writer: connection, number: self.connections_published });
    }

    /// Takes the connection away from `send` (it failed or closed, or the link is going away).
    pub fn withdraw(&self) {
        let withdrawn = self.shared.lock().connection.take();
        // Closed outside the lock, if this was the last reference.
        drop(withdrawn);
    }

    /// Called when the dial task holds no bytes (nothing taken from the queue is unwritten):
    /// if the queue is empty too, `send` may write directly again. Under the lock, so no frame
    /// can be queued between the check and the clearing (invariant 1).
    pub fn mark_idle_if_drained(&self) {
        let mut state = self.shared.lock();
        if self.queue.is_empty() {
            state.dial_task_has_bytes = false;
        }
    }

    /// A watch the dial task can await alongside its queue, for a failed direct write.
    pub fn failure_watch(&self) -> FailureWatch {
        FailureWatch { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for LinkReceiver {
    /// A dial task that ends without withdrawing its connection (its runtime shut down) must not
    /// leave `send` writing to it.
    fn drop(&mut self) {
        self.withdraw();
    }
}

#[derive(Debug)]
pub(crate) struct FailureWatch {
    shared: Arc<Shared>,
}

impl FailureWatch {
    /// Resolves once a direct write has failed on the published connection (and withdrawn it).
    /// A wake left over from an earlier connection is ignored: only the current one counts.
    pub async fn direct_write_failed(&self) {
        loop {
            self.shared.connection_failed.notified().await;
            if self.shared.lock().connection.is_none() {
                return;
            }
        }
    }
}

/// Writes all of `bytes` to `connection`, waiting for it to be writable as needed (the dial task's
/// path; `send` never waits).
pub(crate) async fn write_all(connection: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        connection.writable().await?;
        match connection.try_write(bytes) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the peer connection took no bytes")),
            Ok(written) => bytes = &bytes[written..],
            // A spurious readiness: wait for the next one.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    /// A connected pair: the client side (as the dial task would hold it) and the server side.
    /// The server's receive buffer is small and fixed, so with nobody reading the connection
    /// holds only a few MiB.
    async fn connected_pair() -> (TcpStream, TcpStream) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(1).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A link whose dial task has published `client`, as after writing a hello on it (which also
    /// leaves tokio knowing the socket is writable: a fresh registration does not yet).
    async fn published_link(client: TcpStream) -> (LinkSender, LinkReceiver, Arc<OwnedWriteHalf>, OwnedReadHalf) {
        let (sender, mut receiver) = link(2, 16);
        let (reader, writer) = client.into_split();
        writer.writable().await.unwrap();
        let writer = Arc::new(writer);
        receiver.publish(Arc::clone(&writer));
        receiver.mark_idle_if_drained();
        (sender, receiver, writer, reader)
    }

    fn frame(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[tokio::test]
    async fn an_idle_link_is_written_directly_and_a_delayed_or_busy_one_queues() {
        let (client, mut server) = connected_pair().await;
        let (sender, mut receiver, writer, _reader) = published_link(client).await;
        let counters = DirectWriteCounters::default();
        assert!(sender.is_idle());
        assert!(sender.send(frame(b"one"), true, &counters));
        assert_eq!(counters.whole(), 1);
        assert!(receiver.try_recv().is_none(), "written, not queued");

        assert!(sender.send(frame(b"two"), false, &counters), "a delayed link queues");
        assert!(!sender.is_idle(), "the dial task has bytes now");
        assert!(sender.send(frame(b"three"), true, &counters), "and everything after it queues too");
        assert_eq!(counters.whole(), 1);
        receiver.mark_idle_if_drained();
        assert!(!sender.is_idle(), "not idle while frames are queued");

        let mut written = Vec::new();
        while let Some(queued) = receiver.try_recv() {
            assert_eq!(queued.completes_frame_on, None);
            written.extend_from_slice(&queued.bytes);
        }
        receiver.mark_idle_if_drained();
        assert!(sender.is_idle(), "idle once the queue is drained and its bytes written");
        write_all(&writer, &written).await.unwrap();
        assert!(sender.send(frame(b"four"), true, &counters));
        assert_eq!(counters.whole(), 2);

        let mut received = vec![0u8; b"onetwothreefour".len()];
        server.read_exact(&mut received).await.unwrap();
        assert_eq!(received, b"onetwothreefour");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_direct_write_queues_its_tail_ahead_of_later_frames() {
        let (client, mut server) = connected_pair().await;
        let (sender, mut receiver, writer, _reader) = published_link(client).await;
        let counters = DirectWriteCounters::default();
        // Far more than the connection holds while the server reads nothing.
        let large: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        assert!(sender.send(frame(&large), true, &counters));
        assert_eq!((counters.whole(), counters.partial()), (0, 1), "written partly by send");
        assert!(sender.send(frame(b"after"), true, &counters), "queued behind the tail");

        let tail = receiver.try_recv().expect("the tail was queued");
        assert_eq!(tail.completes_frame_on, Some(1), "the tail ignores any link delay");
        assert!(tail.bytes.len() < large.len() && !tail.bytes.is_empty());
        assert_eq!(tail.bytes[..], large[large.len() - tail.bytes.len()..], "the tail is the unwritten rest");
        let after = receiver.try_recv().expect("the later frame was queued");
        assert_eq!(&after.bytes[..], b"after");

        // The dial task writes what it took while the server reads everything.
        let expected_bytes = large.len() + b"after".len();
        let reading = tokio::spawn(async move {
            let mut received = vec![0u8; expected_bytes];
            server.read_exact(&mut received).await.map(|_| received)
        });
        write_all(&writer, &tail.bytes).await.unwrap();
        write_all(&writer, &after.bytes).await.unwrap();
        let received = reading.await.unwrap().unwrap();
        assert!(received[..large.len()] == large[..], "no byte lost or duplicated");
        assert_eq!(&received[large.len()..], b"after");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tail_of_a_frame_begun_on_a_lost_connection_is_not_written_on_the_next() {
        let (first, _first_server) = connected_pair().await;
        let (sender, mut receiver, _first_writer, _first_reader) = published_link(first).await;
        let counters = DirectWriteCounters::default();
        let large = vec![7u8; 16 * 1024 * 1024];
        assert!(sender.send(frame(&large), true, &counters));
        assert_eq!(counters.partial(), 1);
        assert!(sender.send(frame(b"whole"), true, &counters), "queued behind the tail");
        // The connection ends (the peer closed it) before the dial task took the tail.
        receiver.withdraw();
        let (second, _second_server) = connected_pair().await;
        let (_second_reader, second_writer) = second.into_split();
        receiver.publish(Arc::new(second_writer));

        let next = receiver.try_recv().expect("the whole frame is still queued");
        assert_eq!(&next.bytes[..], b"whole", "the stale tail was dropped, not written");
        assert!(receiver.try_recv().is_none());
        assert!(sender.send(frame(b"later"), false, &counters));
        let later = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await.unwrap().unwrap();
        assert_eq!(&later.bytes[..], b"later");
    }

    #[tokio::test]
    async fn a_failed_direct_write_withdraws_the_connection_and_wakes_the_dial_task() {
        let (client, _server) = connected_pair().await;
        // Shut the connection for writing behind tokio's back: every write on it now fails
        // (EPIPE), as after a peer reset.
        let client = client.into_std().unwrap();
        client.try_clone().unwrap().shutdown(std::net::Shutdown::Write).unwrap();
        let client = TcpStream::from_std(client).unwrap();
        let (sender, mut receiver, _writer, _reader) = published_link(client).await;
        let counters = DirectWriteCounters::default();

        assert!(!sender.send(frame(b"lost"), true, &counters), "the frame counts as dropped");
        assert_eq!((counters.whole(), counters.partial()), (0, 0));
        assert!(!sender.is_idle(), "the connection was withdrawn");
        tokio::time::timeout(Duration::from_secs(10), receiver.failure_watch().direct_write_failed())
            .await
            .expect("the dial task is told to redial");
        assert!(sender.send(frame(b"next"), true, &counters), "later frames queue for the next connection");
        assert_eq!(&receiver.try_recv().expect("queued").bytes[..], b"next");
    }

    #[tokio::test]
    async fn a_wake_left_from_an_earlier_connection_does_not_end_the_next_one() {
        let (first, _first_server) = connected_pair().await;
        let first = first.into_std().unwrap();
        first.try_clone().unwrap().shutdown(std::net::Shutdown::Write).unwrap();
        let (sender, mut receiver, _writer, _reader) = published_link(TcpStream::from_std(first).unwrap()).await;
        assert!(!sender.send(frame(b"lost"), true, &DirectWriteCounters::default()));
        // The dial task redials before it looked at the failure: the wake is stale.
        receiver.withdraw();
        let (second, _second_server) = connected_pair().await;
        let (_second_reader, second_writer) = second.into_split();
        receiver.publish(Arc::new(second_writer));
        let watch = receiver.failure_watch();
        // Polled once: it takes the stale wake, finds the connection in place, and waits on.
        tokio::select! {
            biased;
            () = watch.direct_write_failed() => panic!("the new connection was reported failed"),
            () = std::future::ready(()) => {}
        }
    }
}
