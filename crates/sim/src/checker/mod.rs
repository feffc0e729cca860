//! The checkers a run's results go through, each in its own file (TigerBeetle's habit): the client
//! history's linearizability, the session guarantees of follower reads (`session`), and the
//! replicas' own invariants (election safety, state machine safety, convergence, removed nodes that
//! campaign) in `safety`.

pub mod linearizability;
pub mod safety;
pub mod session;
