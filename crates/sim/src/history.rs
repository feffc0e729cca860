//! What the simulated clients saw: every operation on a key-value register with when it was invoked,
//! when it completed, and how (Jepsen's history, Knossos's and Porcupine's input).
//!
//! Each key is an independent register holding an optional integer (absent until first written).
//! Operations are single-key: read, write, compare-and-set, and increment (a read-modify-write that
//! returns the new value). An outcome is `Ok` with what the client was told, `Fail` when the
//! operation certainly did not take effect (refused before anything was proposed, or its entry was
//! replaced), or `Unknown` when the client gave up waiting: it may have taken effect at any time
//! after its invocation, or never.
//!
//! Times are *stamps*: a counter the simulator bumps at every invocation and completion, so the
//! real-time order of events is total and exact even when two happen in the same simulated
//! millisecond. The millisecond is kept beside it for people reading a failure.

use std::fmt;

/// A client's request on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Read,
    Write(u64),
    /// Sets the key to `new` if it holds `expected`.
    Cas {
        expected: u64,
        new: u64,
    },
    /// Adds one (an absent key counts as 0) and returns the new value.
    Incr,
}

/// What a completed operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    Read(Option<u64>),
    Written,
    /// Whether the compare-and-set swapped.
    Cas(bool),
    Incr(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok(Output),
    /// Certainly did not take effect.
    Fail,
    /// May or may not have taken effect (timeout, connection lost).
    Unknown,
}

/// One client operation, invoked and (possibly) completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Position in the history.
    pub id: usize,
    pub client: u64,
    pub key: u64,
    pub command: Command,
    pub invoke: u64,
    /// `None` while in flight, and for `Unknown` outcomes (the operation may land at any later time).
    pub complete: Option<u64>,
    /// `Unknown` until completed.
    pub outcome: Outcome,
    pub invoke_ms: u64,
    pub complete_ms: Option<u64>,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} client {} k{} ", self.id, self.client, self.key)?;
        match self.command {
            Command::Read => write!(f, "read")?,
            Command::Write(value) => write!(f, "write {value}")?,
            Command::Cas { expected, new } => write!(f, "cas {expected}->{new}")?,
            Command::Incr => write!(f, "incr")?,
        }
        match self.outcome {
            Outcome::Ok(Output::Read(value)) => write!(f, " -> {}", show(value))?,
            Outcome::Ok(Output::Written) => write!(f, " -> ok")?,
            Outcome::Ok(Output::Cas(swapped)) => write!(f, " -> {}", if swapped { "swapped" } else { "unchanged" })?,
            Outcome::Ok(Output::Incr(value)) => write!(f, " -> {value}")?,
            Outcome::Fail => write!(f, " -> fail")?,
            Outcome::Unknown => write!(f, " -> unknown")?,
        }
        write!(f, " [{}ms..", self.invoke_ms)?;
        match self.complete_ms {
            Some(at) => write!(f, "{at}ms]"),
            None => write!(f, "]"),
        }
    }
}

/// A register value for people: `nil` when absent.
pub fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "nil".to_owned(), |value| value.to_string())
}

/// A handle to an invoked operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// The operations of a run, in invocation order.
#[derive(Debug, Clone, Default)]
pub struct History {
    operations: Vec<Operation>,
    stamp: u64,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// A history written by hand (tests): stamps are taken as given.
    pub fn from_operations(mut operations: Vec<Operation>) -> History {
        for (at, operation) in operations.iter_mut().enumerate() {
            operation.id = at;
        }
        let stamp = operations.iter().flat_map(|op| [op.invoke, op.complete.unwrap_or(0)]).max().unwrap_or(0);
        History { operations, stamp }
    }

    pub fn invoke(&mut self, client: u64, key: u64, command: Command, now_ms: u64) -> OpId {
        self.stamp += 1;
        let id = self.operations.len();
        self.operations.push(Operation {
            id,
            client,
            key,
            command,
            invoke: self.stamp,
            complete: None,
            outcome: Outcome::Unknown,
            invoke_ms: now_ms,
            complete_ms: None,
        });
        OpId(id)
    }

    /// Records how `id` ended. An `Unknown` outcome keeps no completion stamp: the operation stays
    /// concurrent with everything after its invocation.
    ///
    /// # Panics
    /// If `id` was completed already, or the outcome does not fit the command.
    pub fn complete(&mut self, id: OpId, outcome: Outcome, now_ms: u64) {
        self.stamp += 1;
        let stamp = self.stamp;
        let operation = &mut self.operations[id.0];
        assert!(operation.complete_ms.is_none(), "operation {} completed twice", id.0);
        if let Outcome::Ok(output) = outcome {
            let fits = matches!(
                (operation.command, output),
                (Command::Read, Output::Read(_))
                    | (Command::Write(_), Output::Written)
                    | (Command::Cas { .. }, Output::Cas(_))
                    | (Command::Incr, Output::Incr(_))
            );
            assert!(fits, "output {output:?} does not answer {:?}", operation.command);
        }
        operation.outcome = outcome;
        operation.complete_ms = Some(now_ms);
        if outcome != Outcome::Unknown {
            operation.complete = Some(stamp);
        }
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Operations acknowledged with `Ok`.
    pub fn ok_count(&self) -> usize {
        self.operations.iter().filter(|op| matches!(op.outcome, Outcome::Ok(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_order_every_event_and_unknown_stays_open() {
        let mut history = History::new();
        let write = history.invoke(1, 0, Command::Write(5), 10);
        let read = history.invoke(2, 0, Command::Read, 10);
        history.complete(write, Outcome::Unknown, 20);
        history.complete(read, Outcome::Ok(Output::Read(Some(5))), 20);
        let ops = history.operations();
        assert_eq!((ops[0].invoke, ops[0].complete), (1, None));
        assert_eq!((ops[1].invoke, ops[1].complete), (2, Some(4)));
        assert_eq!(ops[1].to_string(), "#1 client 2 k0 read -> 5 [10ms..20ms]");
    }

    #[test]
    #[should_panic(expected = "does not answer")]
    fn an_output_must_answer_its_command() {
        let mut history = History::new();
        let read = history.invoke(1, 0, Command::Read, 0);
        history.complete(read, Outcome::Ok(Output::Written), 1);
    }
}
