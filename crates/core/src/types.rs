//! Newtypes for the identifiers the protocols pass around, so a term can never be mistaken for an index.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A node of the cluster, unique for the cluster's lifetime (`--id`).
    NodeId(u64)
);
id_newtype!(
    /// A leadership epoch: every message and every write is fenced by it.
    Term(u64)
);
id_newtype!(
    /// A position in the replication log; the first entry has index 1, and 0 means "nothing".
    LogIndex(u64)
);

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);

    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
}

/// Milliseconds since the Unix epoch, as read by the driver. The core never reads a clock: every
/// input that needs time carries one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct UnixMillis(pub u64);

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
