//! What nodes of a replication group say to each other.

use chorus_core::Term;
use chorus_core::raft::SnapshotMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The replication engine's own messages.
    Raft(chorus_core::raft::Message),
    /// Where the sender serves clients: followers name the leader's address in redirects. Sent
    /// periodically, since the network is best effort.
    Hello {
        client_addr: String,
        /// The sender's datacenter (`--datacenter`): nodes learn each other's when they connect.
        datacenter: String,
    },
    /// A piece of a snapshot file the leader streams to a follower that needs it (its log no longer
    /// reaches back far enough, or its state diverged). Pieces go in order on one connection; a
    /// receiver that misses one drops the transfer and the leader starts over after a timeout.
    SnapshotChunk(SnapshotChunk),
    /// Leaderless mode: the coordinator's messages, and requests forwarded to a home replica.
    Leaderless(crate::leaderless::LeaderlessMessage),
    /// Multi-leader mode: the cross-datacenter stream between datacenter leaders.
    Ml(crate::multileader::MlMessage),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sender's term when it decided to send (fenced like any leader message).
    pub leader_term: Term,
    /// The snapshot point the file stands for, with the configuration there.
    pub meta: SnapshotMeta,
    /// Where `data` starts in the file.
    pub offset: u64,
    pub data: Vec<u8>,
    /// The last piece: the file is complete.
    pub last: bool,
}
