//! What nodes of a replication group say to each other.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The replication engine's own messages.
    Raft(chorus_core::raft::Message),
    /// Where the sender serves clients: followers name the leader's address in redirects. Sent
    /// periodically, since the network is best effort.
    Hello { client_addr: String },
}
