//! One client connection: read requests, hand key-value commands to the replica in batches, answer
//! the rest here, and write replies back in request order.
//!
//! Replies can become ready out of order (a read of an untouched key is ready at once, a write only
//! after its fsync), so each request gets a sequence number and replies leave strictly in sequence,
//! as Redis clients expect of a pipeline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use chorus_core::RequestId;
use chorus_core::command::KvCommand;
use chorus_resp::{Protocol, Reply, RequestParser, encode_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::context::{NodeContext, now_millis};
use crate::node_commands::{self, Dispatch};

/// Per-connection state that commands can change.
#[derive(Debug, Clone)]
pub struct ConnectionState {
    pub id: u64,
    pub protocol: Protocol,
    pub authenticated: bool,
    pub name: Option<Bytes>,
    pub library_name: Option<Bytes>,
    pub library_version: Option<Bytes>,
    pub peer: String,
    pub local: String,
    pub connected_at: std::time::Instant,
    /// READONLY: reads on a follower are served from its (possibly stale) state.
    pub readonly: bool,
    /// The session position (CHORUS.SESSION): follower reads wait until it is applied.
    pub session_index: u64,
    /// Leaderless mode: this connection's n/w/r (CHORUS.QUORUM), or the configured default.
    pub quorum: Option<chorus_core::leaderless::Quorum>,
}

const READ_CHUNK_BYTES: usize = 16 * 1024;
const WRITE_BUFFER_KEEP_BYTES: usize = 1024 * 1024;

/// A reply slot: the protocol in force when the request was answered, and the reply once known.
type Slot = (Protocol, Option<Reply>);

pub async fn serve(context: Arc<NodeContext>, mut socket: TcpStream, id: u64) {
    let peer = socket.peer_addr().map(|addr| addr.to_string()).unwrap_or_default();
    let local = socket.local_addr().map(|addr| addr.to_string()).unwrap_or_default();
    let _ = socket.set_nodelay(true);
    let mut connection = ConnectionState {
        id,
        protocol: Protocol::Resp2,
        authenticated: context.config.requirepass.is_none(),
        name: None,
        library_name: None,
        library_version: None,
        peer,
        local,
        connected_at: std::time::Instant::now(),
        readonly: false,
        session_index: 0,
        quorum: None,
    };
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    context.core.register(id, reply_tx);
    let limits = context.config.limits.resp();
    let pending_max = context.config.limits.pending_replies_max;

    let mut parser = RequestParser::new();
    let mut read_buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut write_buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut slots: VecDeque<Slot> = VecDeque::new();
    let mut first_sequence: u64 = 0;
    let mut closing = false;
    let mut peer_closed = false;

    loop {
        if !closing {
            closing = process_requests(
                &context,
                &mut connection,
                &mut parser,
                &mut read_buffer,
                &mut slots,
                first_sequence,
                &limits,
            );
        }
        // Write out every reply that is next in sequence.
        while let Some((protocol, Some(_))) = slots.front() {
            let protocol = *protocol;
            if let Some((_, Some(reply))) = slots.pop_front() {
                encode_reply(&reply, protocol, &mut write_buffer);
            }
            first_sequence += 1;
        }
        if !write_buffer.is_empty() {
            if socket.write_all(&write_buffer).await.is_err() {
                break;
            }
            write_buffer.clear();
            if write_buffer.capacity() > WRITE_BUFFER_KEEP_BYTES {
                // One huge reply (KEYS over a large keyspace) must not pin its buffer for the
                // connection's lifetime.
                write_buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
            }
        }
        if (closing || peer_closed) && slots.is_empty() {
            break;
        }
        // After the peer half-closes, its outstanding replies are still delivered (it may be waiting
        // for them, as `nc -q` does), then the connection ends.
        let can_read = !closing && !peer_closed && slots.len() < pending_max;
        tokio::select! {
            read = socket.read_buf(&mut read_buffer), if can_read => {
                match read {
                    Ok(0) | Err(_) => peer_closed = true,
                    Ok(_) => {
                        if read_buffer.capacity() - read_buffer.len() < 1024 {
                            read_buffer.reserve(READ_CHUNK_BYTES);
                        }
                    }
                }
            }
            Some((sequence, reply)) = reply_rx.recv() => {
                fill(&mut slots, first_sequence, sequence, reply);
                while let Ok((sequence, reply)) = reply_rx.try_recv() {
                    fill(&mut slots, first_sequence, sequence, reply);
                }
            }
            // The node is shutting down (it dropped this connection's reply channel).
            else => break,
        }
    }
    if closing && !peer_closed {
        linger(&mut socket).await;
    }
    context.core.unregister(id);
    context.stats.connected_clients.fetch_sub(1, Ordering::Relaxed);
}

/// How long, and how many bytes, a connection the node closes (QUIT, a broken frame) keeps reading
/// and discarding before it goes.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 1024 * 1024;

/// Closing a socket with unread input makes the kernel send a reset, which can destroy the reply
/// just written (the error explaining why) before the client reads it. So the node sends its FIN
/// first, then discards what the client still sends, bounded in time and bytes, until the client
/// closes too: a lingering close, as HTTP servers do.
async fn linger(socket: &mut TcpStream) {
    if socket.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut discarded = 0usize;
        while discarded < LINGER_BYTES_MAX {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

fn fill(slots: &mut VecDeque<Slot>, first_sequence: u64, sequence: u64, reply: Reply) {
    let position = sequence.checked_sub(first_sequence).and_then(|offset| usize::try_from(offset).ok());
    if let Some(slot) = position.and_then(|position| slots.get_mut(position)) {
        slot.1 = Some(reply);
    }
}

/// Parses and dispatches every whole request in `read_buffer`. Returns true when the connection must
/// close once its replies are written (QUIT, or a request that can never parse).
fn process_requests(
    context: &Arc<NodeContext>,
    connection: &mut ConnectionState,
    parser: &mut RequestParser,
    read_buffer: &mut BytesMut,
    slots: &mut VecDeque<Slot>,
    first_sequence: u64,
    limits: &chorus_resp::Limits,
) -> bool {
    let mut batch: Vec<(u64, Submission)> = Vec::new();
    let mut closing = false;
    let pending_max = context.config.limits.pending_replies_max;
    while slots.len() < pending_max {
        let parsed = match parser.parse(read_buffer, limits) {
            Ok(None) if read_buffer.len() > context.config.limits.query_buffer_bytes_max => {
                Err("Protocol error: query buffer exceeds query_buffer_bytes_max".to_string())
            }
            Ok(parsed) => Ok(parsed),
            Err(error) => Err(error.to_string()),
        };
        let args = match parsed {
            Ok(Some(args)) => args,
            Ok(None) => break,
            Err(error) => {
                context.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(connection = connection.id, %error, "closing connection after a protocol error");
                slots.push_back((connection.protocol, Some(Reply::err(error))));
                read_buffer.clear();
                closing = true;
                break;
            }
        };
        if args.is_empty() {
            continue;
        }
        let sequence = first_sequence + slots.len() as u64;
        context.stats.total_commands.fetch_add(1, Ordering::Relaxed);
        match node_commands::dispatch(context, connection, args) {
            Dispatch::Reply(reply) => slots.push_back((connection.protocol, Some(reply))),
            Dispatch::Kv(command) => {
                slots.push_back((connection.protocol, None));
                batch.push((sequence, Submission::Kv(command)));
            }
            Dispatch::Member { change, address } => {
                slots.push_back((connection.protocol, None));
                batch.push((sequence, Submission::Member { change, address }));
            }
            Dispatch::Leaderless(request) => {
                slots.push_back((connection.protocol, None));
                if let Some(node) = &context.leaderless {
                    node.submit(connection.id, sequence, request, connection.quorum);
                }
            }
            Dispatch::Close(reply) => {
                slots.push_back((connection.protocol, Some(reply)));
                closing = true;
                break;
            }
        }
    }
    if !batch.is_empty() {
        submit_batch(context, connection, batch, slots, first_sequence);
    }
    closing
}

/// A request for the replica.
enum Submission {
    Kv(KvCommand),
    Member { change: chorus_core::raft::MembershipChange, address: Option<String> },
}

fn submit_batch(
    context: &Arc<NodeContext>,
    connection_state: &ConnectionState,
    batch: Vec<(u64, Submission)>,
    slots: &mut VecDeque<Slot>,
    first_sequence: u64,
) {
    let now = now_millis();
    // One read lock for the whole batch: a command that reads several keys, or counts them, must
    // not see the applier's next batch land halfway through.
    let state_guard = context.state.read();
    let state = &*state_guard;
    let mut ready = Vec::new();
    let connection = connection_state.id;
    let session = chorus_core::LogIndex(connection_state.session_index);
    context.core.with(Some(connection), &mut ready, |inner| {
        for (sequence, submission) in batch {
            let request = RequestId { connection, sequence };
            match submission {
                Submission::Member { change, address } => {
                    inner.replica.change_membership(now, request, change, address);
                }
                Submission::Kv(command) if connection_state.readonly => {
                    inner.replica.submit_replica_read(now, request, command, state, session);
                }
                Submission::Kv(command) => inner.replica.submit(now, request, command, state),
            }
        }
    });
    for (sequence, reply) in ready {
        fill(slots, first_sequence, sequence, reply);
    }
}
