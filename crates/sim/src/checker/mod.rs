//! The checkers a run's results go through, each in its own file (TigerBeetle's habit): the client
//! history's linearizability, and the replicas' own invariants (election safety, state machine
//! safety, convergence) in `safety`.

pub mod linearizability;
pub mod safety;
