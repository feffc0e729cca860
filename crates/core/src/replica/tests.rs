//! The replica fed by hand: each test sets up state, feeds inputs and asserts the effects.

use bytes::Bytes;
use chorus_resp::Reply;

use super::*;
use crate::command::{KvCommand, lookup};
use crate::state::MemoryState;

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

struct Harness {
    replica: Replica,
    state: MemoryState,
    next_sequence: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            replica: Replica::new(ReplicaConfig::new(NodeId(1)), Recovered::default()),
            state: MemoryState::new(),
            next_sequence: 0,
        }
    }

    fn command(words: &[&str]) -> KvCommand {
        let args: Vec<Bytes> = words.iter().map(|word| Bytes::copy_from_slice(word.as_bytes())).collect();
        let spec = lookup(&args[0]).expect("known command");
        KvCommand::parse(spec, &args).expect("valid command")
    }

    /// Submits a command at `now`; returns its request id.
    fn submit_at(&mut self, now: UnixMillis, words: &[&str]) -> RequestId {
        let request = RequestId { connection: 1, sequence: self.next_sequence };
        self.next_sequence += 1;
        self.replica.submit(now, request, Self::command(words), &self.state);
        request
    }

    fn submit(&mut self, words: &[&str]) -> RequestId {
        self.submit_at(NOW, words)
    }

    /// Takes the effects; returns (entries to persist, replies).
    fn take(&mut self) -> (Vec<LogEntry>, Vec<(RequestId, Reply)>) {
        let mut persist = Vec::new();
        let mut replies = Vec::new();
        let effects: Vec<Effect> = self.replica.drain_effects().collect();
        for effect in effects {
            match effect {
                Effect::Persist(entries) => persist.extend(entries),
                Effect::Reply { request, reply } => replies.push((request, reply)),
                Effect::Apply(entries) => {
                    let last = entries.last().map(|entry| entry.index).expect("non-empty apply");
                    self.state.apply(&entries);
                    self.replica.handle_applied(last);
                    let (more_persist, more_replies) = self.take();
                    persist.extend(more_persist);
                    replies.extend(more_replies);
                }
                // A one-voter group sends nothing and keeps its hard state in memory here.
                Effect::PersistHardState { .. }
                | Effect::TruncateLog { .. }
                | Effect::StateDiverged { .. }
                | Effect::Send { .. }
                | Effect::SnapshotNeeded { .. }
                | Effect::MembershipChanged(_)
                | Effect::ReplaceState { .. } => {}
            }
        }
        (persist, replies)
    }

    /// Makes everything proposed durable and returns the replies released.
    fn persist_all(&mut self) -> Vec<(RequestId, Reply)> {
        let last = self.replica.status().last_index;
        self.replica.handle_persisted(NOW, last, Term(1));
        self.take().1
    }

    /// Runs one command to completion and returns its reply.
    fn run(&mut self, words: &[&str]) -> Reply {
        let request = self.submit(words);
        let (_, mut replies) = self.take();
        replies.extend(self.persist_all());
        let (_, reply) = replies.into_iter().find(|(id, _)| *id == request).expect("a reply");
        reply
    }
}

fn bulk(text: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()))
}

#[test]
fn a_write_is_acknowledged_only_after_it_is_persisted() {
    let mut harness = Harness::new();
    let set = harness.submit(&["SET", "k", "v"]);
    let (persist, replies) = harness.take();
    assert_eq!(persist.len(), 1, "the write goes to the log");
    assert!(replies.is_empty(), "no acknowledgement before the log is durable");
    assert_eq!(harness.persist_all(), vec![(set, Reply::OK)]);
    assert_eq!(harness.run(&["GET", "k"]), bulk("v"));
}

#[test]
fn pipelined_commands_see_earlier_pending_writes() {
    let mut harness = Harness::new();
    let first = harness.submit(&["INCR", "counter"]);
    let second = harness.submit(&["INCR", "counter"]);
    let get = harness.submit(&["GET", "counter"]);
    let (persist, replies) = harness.take();
    assert_eq!(persist.len(), 2);
    assert!(replies.is_empty(), "the GET saw a pending write, so it waits for it to commit");
    let released = harness.persist_all();
    assert_eq!(released, vec![(first, Reply::Integer(1)), (second, Reply::Integer(2)), (get, bulk("2"))]);
}

#[test]
fn reads_of_untouched_keys_are_not_held_behind_pending_writes() {
    let mut harness = Harness::new();
    harness.run(&["SET", "stable", "1"]);
    harness.submit(&["SET", "busy", "2"]);
    let read = harness.submit(&["GET", "stable"]);
    let (_, replies) = harness.take();
    assert_eq!(replies, vec![(read, bulk("1"))]);
}

#[test]
fn relative_expiry_is_logged_as_an_absolute_time() {
    let mut harness = Harness::new();
    harness.submit(&["SET", "k", "v", "EX", "10"]);
    let (persist, _) = harness.take();
    let EntryPayload::Write(ops) = &persist[0].payload else { panic!("expected a write") };
    assert_eq!(
        ops,
        &vec![WriteOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            expire_at: Some(UnixMillis(NOW.0 + 10_000)),
        }]
    );
}

#[test]
fn incr_is_logged_as_a_plain_put() {
    let mut harness = Harness::new();
    harness.run(&["SET", "n", "41"]);
    harness.submit(&["INCR", "n"]);
    let (persist, _) = harness.take();
    let EntryPayload::Write(ops) = &persist[0].payload else { panic!("expected a write") };
    assert!(matches!(&ops[..], [WriteOp::Put { value, .. }] if value == &Bytes::from_static(b"42")));
}

#[test]
fn failed_commands_log_nothing() {
    let mut harness = Harness::new();
    harness.run(&["SET", "text", "abc"]);
    let request = harness.submit(&["INCR", "text"]);
    let (persist, replies) = harness.take();
    assert!(persist.is_empty());
    assert_eq!(replies, vec![(request, Reply::err("value is not an integer or out of range"))]);
    harness.run(&["SET", "big", "9223372036854775807"]);
    assert_eq!(harness.run(&["INCR", "big"]), Reply::err("increment or decrement would overflow"));
    assert_eq!(harness.run(&["GET", "big"]), bulk("9223372036854775807"));
}

#[test]
fn dbsize_waits_until_earlier_writes_are_applied() {
    let mut harness = Harness::new();
    harness.submit(&["SET", "a", "1"]);
    harness.submit(&["SET", "b", "2"]);
    let size = harness.submit(&["DBSIZE"]);
    let (_, replies) = harness.take();
    assert!(replies.is_empty());
    let released = harness.persist_all();
    assert_eq!(released.last(), Some(&(size, Reply::Integer(2))));
}

#[test]
fn expired_keys_read_as_missing_and_are_deleted_through_the_log() {
    let mut harness = Harness::new();
    harness.run(&["SET", "short", "v", "PX", "100"]);
    harness.run(&["SET", "forever", "v"]);
    let later = UnixMillis(NOW.0 + 101);
    let get = harness.submit_at(later, &["GET", "short"]);
    let (_, replies) = harness.take();
    assert_eq!(replies, vec![(get, Reply::Null)]);
    harness.replica.tick(later, &harness.state);
    let (persist, _) = harness.take();
    assert_eq!(persist.len(), 1, "active expiry proposes one delete entry");
    let EntryPayload::Write(ops) = &persist[0].payload else { panic!("expected a write") };
    assert_eq!(ops, &vec![WriteOp::Delete { key: Bytes::from_static(b"short") }]);
    harness.persist_all();
    assert_eq!(harness.state.key_count(), Ok(1));
    harness.replica.tick(later, &harness.state);
    assert!(harness.take().0.is_empty(), "nothing left to expire");
}

#[test]
fn flushall_hides_every_key_before_it_is_applied() {
    let mut harness = Harness::new();
    harness.run(&["SET", "a", "1"]);
    harness.submit(&["FLUSHALL"]);
    let get = harness.submit(&["GET", "a"]);
    let (_, replies) = harness.take();
    assert!(replies.is_empty(), "the GET depends on the pending FLUSHALL");
    let released = harness.persist_all();
    assert!(released.contains(&(get, Reply::Null)));
}

#[test]
fn set_options_follow_redis() {
    let mut harness = Harness::new();
    assert_eq!(harness.run(&["SET", "k", "v1", "XX"]), Reply::Null);
    assert_eq!(harness.run(&["SET", "k", "v1", "NX"]), Reply::OK);
    assert_eq!(harness.run(&["SET", "k", "v2", "NX"]), Reply::Null);
    assert_eq!(harness.run(&["SET", "k", "v2", "NX", "GET"]), bulk("v1"));
    assert_eq!(harness.run(&["SET", "k", "v3", "GET"]), bulk("v1"));
    assert_eq!(harness.run(&["SETNX", "k", "x"]), Reply::Integer(0));
    harness.run(&["EXPIRE", "k", "100"]);
    assert_eq!(harness.run(&["SET", "k", "v4", "KEEPTTL"]), Reply::OK);
    assert_eq!(harness.run(&["TTL", "k"]), Reply::Integer(100));
    harness.run(&["SET", "k", "v5"]);
    assert_eq!(harness.run(&["TTL", "k"]), Reply::Integer(-1), "plain SET clears the TTL");
}

#[test]
fn expire_conditions_follow_redis() {
    let mut harness = Harness::new();
    assert_eq!(harness.run(&["EXPIRE", "missing", "10"]), Reply::Integer(0));
    harness.run(&["SET", "k", "v"]);
    assert_eq!(harness.run(&["EXPIRE", "k", "10", "XX"]), Reply::Integer(0));
    assert_eq!(harness.run(&["EXPIRE", "k", "10", "GT"]), Reply::Integer(0), "no TTL counts as infinite");
    assert_eq!(harness.run(&["EXPIRE", "k", "10", "LT"]), Reply::Integer(1));
    assert_eq!(harness.run(&["EXPIRE", "k", "20", "NX"]), Reply::Integer(0));
    assert_eq!(harness.run(&["EXPIRE", "k", "20", "GT"]), Reply::Integer(1));
    assert_eq!(harness.run(&["PTTL", "k"]), Reply::Integer(20_000));
    assert_eq!(harness.run(&["PERSIST", "k"]), Reply::Integer(1));
    assert_eq!(harness.run(&["PERSIST", "k"]), Reply::Integer(0));
    assert_eq!(harness.run(&["EXPIRE", "k", "-1"]), Reply::Integer(1), "a past time deletes");
    assert_eq!(harness.run(&["EXISTS", "k"]), Reply::Integer(0));
}

#[test]
fn multi_key_commands_count_like_redis() {
    let mut harness = Harness::new();
    assert_eq!(harness.run(&["MSET", "a", "1", "b", "2"]), Reply::OK);
    assert_eq!(harness.run(&["EXISTS", "a", "a", "c"]), Reply::Integer(2));
    assert_eq!(harness.run(&["MGET", "a", "c", "b"]), Reply::Array(vec![bulk("1"), Reply::Null, bulk("2")]));
    assert_eq!(harness.run(&["MSETNX", "c", "3", "a", "9"]), Reply::Integer(0));
    assert_eq!(harness.run(&["DEL", "a", "a", "c"]), Reply::Integer(1));
    assert_eq!(harness.run(&["DBSIZE"]), Reply::Integer(1));
}

#[test]
fn string_edits_follow_redis() {
    let mut harness = Harness::new();
    assert_eq!(harness.run(&["APPEND", "s", "Hello"]), Reply::Integer(5));
    assert_eq!(harness.run(&["APPEND", "s", " World"]), Reply::Integer(11));
    assert_eq!(harness.run(&["GETRANGE", "s", "0", "4"]), bulk("Hello"));
    assert_eq!(harness.run(&["GETRANGE", "s", "-5", "-1"]), bulk("World"));
    assert_eq!(harness.run(&["GETRANGE", "s", "5", "2"]), bulk(""));
    assert_eq!(harness.run(&["SETRANGE", "s", "6", "Redis"]), Reply::Integer(11));
    assert_eq!(harness.run(&["GET", "s"]), bulk("Hello Redis"));
    assert_eq!(harness.run(&["SETRANGE", "pad", "3", "x"]), Reply::Integer(4));
    assert_eq!(harness.run(&["GET", "pad"]), Reply::Bulk(Bytes::from_static(b"\0\0\0x")));
    assert_eq!(harness.run(&["STRLEN", "s"]), Reply::Integer(11));
    assert_eq!(harness.run(&["GETDEL", "s"]), bulk("Hello Redis"));
    assert_eq!(harness.run(&["GETDEL", "s"]), Reply::Null);
}

#[test]
fn scan_visits_every_key_exactly_once_when_nothing_changes() {
    let mut harness = Harness::new();
    for i in 0..250 {
        harness.run(&["SET", &format!("key:{i}"), "v"]);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let Reply::Array(parts) = harness.run(&["SCAN", &cursor, "COUNT", "20"]) else { panic!("array") };
        let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else { panic!("cursor and keys") };
        for key in keys {
            let Reply::Bulk(key) = key else { panic!("bulk key") };
            assert!(seen.insert(key.clone()), "key returned twice");
        }
        cursor = String::from_utf8(next.to_vec()).expect("utf8 cursor");
        calls += 1;
        if cursor == "0" {
            break;
        }
        assert!(calls < 100, "scan does not terminate");
    }
    assert_eq!(seen.len(), 250);
    let Reply::Array(matched) = harness.run(&["KEYS", "key:1?"]) else { panic!("array") };
    assert_eq!(matched.len(), 10);
}

#[test]
fn a_storage_failure_fails_waiting_replies_and_refuses_later_commands() {
    let mut harness = Harness::new();
    harness.run(&["SET", "before", "1"]);
    let pending = harness.submit(&["SET", "k", "v"]);
    let barrier = harness.submit(&["DBSIZE"]);
    harness.take();
    harness.replica.fail("disk on fire");
    let (_, replies) = harness.take();
    assert_eq!(replies.len(), 2, "both waiting replies are answered");
    assert!(replies.iter().all(|(id, reply)| (*id == pending || *id == barrier) && reply.is_error()));
    // The writer may still report progress it made before failing; it is ignored.
    harness.replica.handle_persisted(NOW, LogIndex(2), Term(1));
    let later = harness.submit(&["GET", "before"]);
    let (persist, replies) = harness.take();
    assert!(persist.is_empty());
    assert!(matches!(&replies[..], [(id, Reply::Error(text))] if *id == later && text.starts_with("MISCONF")));
}

#[test]
fn keyspace_reads_in_a_pipeline_see_exactly_the_writes_before_them() {
    let mut harness = Harness::new();
    harness.run(&["SET", "applied", "1"]);
    harness.run(&["SET", "doomed", "1"]);
    let requests = [
        harness.submit(&["SET", "a", "1"]),
        harness.submit(&["DEL", "doomed"]),
        harness.submit(&["DBSIZE"]),
        harness.submit(&["KEYS", "*"]),
        harness.submit(&["SCAN", "0", "COUNT", "100"]),
        harness.submit(&["DEL", "a"]),
        harness.submit(&["SET", "later", "1"]),
        harness.submit(&["DBSIZE"]),
        harness.submit(&["FLUSHALL"]),
        harness.submit(&["SET", "after-flush", "1"]),
        harness.submit(&["KEYS", "*"]),
        harness.submit(&["DBSIZE"]),
    ];
    let (_, early) = harness.take();
    assert!(early.iter().all(|(id, _)| !requests[2..5].contains(id)), "keyspace reads wait for the writes they saw");
    let mut replies = early;
    replies.extend(harness.persist_all());
    let reply_to = |id: RequestId| replies.iter().find(|(request, _)| *request == id).map(|(_, reply)| reply.clone());
    assert_eq!(reply_to(requests[2]), Some(Reply::Integer(2)), "applied + a - doomed");
    assert_eq!(
        reply_to(requests[3]),
        Some(Reply::Array(vec![bulk("a"), bulk("applied")].into_iter().collect::<Vec<_>>()).sorted_by_slot())
    );
    let Some(Reply::Array(scan)) = reply_to(requests[4]) else { panic!("scan reply") };
    assert_eq!(scan[0], bulk("0"));
    assert_eq!(scan[1], Reply::Array(vec![bulk("a"), bulk("applied")]).sorted_by_slot());
    assert_eq!(reply_to(requests[7]), Some(Reply::Integer(2)), "applied + later");
    assert_eq!(reply_to(requests[10]), Some(Reply::Array(vec![bulk("after-flush")])));
    assert_eq!(reply_to(requests[11]), Some(Reply::Integer(1)));
}

trait SortedBySlot {
    fn sorted_by_slot(self) -> Reply;
}

impl SortedBySlot for Reply {
    /// Keyspace replies list keys in storage order: by slot, then key.
    fn sorted_by_slot(self) -> Reply {
        let Reply::Array(mut items) = self else { return self };
        items.sort_by_key(|item| match item {
            Reply::Bulk(key) => (crate::Slot::of_key(key), key.clone()),
            _ => (crate::Slot(0), Bytes::new()),
        });
        Reply::Array(items)
    }
}

/// A one-voter replication group: the same replica, with the Raft engine deciding commits.
fn one_voter_group() -> Harness {
    use crate::raft::{Raft, RaftConfig, RestoredState};
    let raft = Raft::new(RaftConfig::new(NodeId(1), 7), RestoredState::bootstrap([NodeId(1)]));
    Harness {
        replica: Replica::in_group(ReplicaConfig::new(NodeId(1)), raft, LogIndex::ZERO),
        state: MemoryState::new(),
        next_sequence: 0,
    }
}

impl Harness {
    /// Persists everything proposed so far with its term, as the log writer does.
    fn persist_group(&mut self, persisted: &[LogEntry]) -> Vec<(RequestId, Reply)> {
        let Some(last) = persisted.last() else { return Vec::new() };
        self.replica.handle_persisted(NOW, last.index, last.term);
        let (more, replies) = self.take();
        let mut replies = replies;
        replies.extend(self.persist_group(&more));
        replies
    }
}

#[test]
fn a_group_member_serves_nothing_until_it_leads_and_has_applied_its_noop() {
    let mut harness = one_voter_group();
    let early = harness.submit(&["SET", "k", "v"]);
    let (_, replies) = harness.take();
    assert!(
        matches!(&replies[..], [(id, Reply::Error(text))] if *id == early && text.starts_with("TRYAGAIN")),
        "no leader yet: {replies:?}"
    );
    // Time passes beyond the election timeout: the lone voter elects itself and appends its no-op.
    harness.replica.tick(UnixMillis(NOW.0 + 5_000), &harness.state);
    let (persist, _) = harness.take();
    assert!(!persist.is_empty(), "the new leader's no-op goes to the log");
    harness.persist_group(&persist);
    assert_eq!(harness.replica.status().role, Some(crate::raft::Role::Leader));

    let set = harness.submit(&["SET", "k", "v"]);
    let (persist, replies) = harness.take();
    assert!(replies.is_empty(), "the write waits for its commit");
    let released = harness.persist_group(&persist);
    assert_eq!(released, vec![(set, Reply::OK)]);

    let get = harness.submit(&["GET", "k"]);
    let (persist, mut replies) = harness.take();
    replies.extend(harness.persist_group(&persist));
    assert_eq!(replies, vec![(get, bulk("v"))], "a one-voter group confirms a read at once");
    assert_eq!(harness.state.get(b"k").expect("read").map(|stored| stored.value), Some(Bytes::from_static(b"v")));
}

#[test]
fn a_membership_change_is_acknowledged_once_committed_and_reported_with_its_address() {
    use crate::raft::MembershipChange;
    let mut harness = one_voter_group();
    harness.replica.tick(UnixMillis(NOW.0 + 5_000), &harness.state);
    let (persist, _) = harness.take();
    harness.persist_group(&persist);
    let request = RequestId { connection: 1, sequence: 99 };
    let address = "127.0.0.1:7104".to_string();
    harness.replica.change_membership(NOW, request, MembershipChange::AddLearner(NodeId(2)), Some(address.clone()));
    let effects: Vec<Effect> = harness.replica.drain_effects().collect();
    let reported = effects.iter().find_map(|effect| match effect {
        Effect::MembershipChanged(membership) => Some(membership.clone()),
        _ => None,
    });
    let reported = reported.expect("the new configuration is reported as soon as it is appended");
    assert!(reported.learners.contains(&NodeId(2)) && !reported.is_voter(NodeId(2)));
    assert_eq!(reported.addresses.get(&NodeId(2)), Some(&address));
    assert!(!effects.iter().any(|effect| matches!(effect, Effect::Reply { .. })), "no reply before the commit");
    let persist: Vec<LogEntry> = effects
        .into_iter()
        .flat_map(|effect| match effect {
            Effect::Persist(entries) => entries,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(harness.persist_group(&persist), vec![(request, Reply::OK)]);
    assert_eq!(harness.replica.membership().map(|m| m.learners.len()), Some(1));

    // One change at a time is fine now; removing the leader itself never is.
    let remove_self = RequestId { connection: 1, sequence: 100 };
    harness.replica.change_membership(NOW, remove_self, MembershipChange::RemoveNode(NodeId(1)), None);
    let (_, replies) = harness.take();
    assert!(
        matches!(&replies[..], [(id, Reply::Error(text))] if *id == remove_self && text.contains("transfer leadership")),
        "{replies:?}"
    );
}

#[test]
fn a_standalone_node_refuses_membership_changes() {
    let mut harness = Harness::new();
    let request = RequestId { connection: 1, sequence: 1 };
    harness.replica.change_membership(NOW, request, crate::raft::MembershipChange::AddLearner(NodeId(2)), None);
    let (_, replies) = harness.take();
    assert!(matches!(&replies[..], [(_, Reply::Error(text))] if text.contains("standalone")), "{replies:?}");
}

/// A one-voter group in multi-leader mode, elected and ready, with its state's multi-leader part.
fn multi_leader_group() -> Harness {
    use crate::multileader::{ConflictPolicy, DcId, MultiLeaderState};
    use crate::raft::{Raft, RaftConfig, RestoredState};
    let raft = Raft::new(RaftConfig::new(NodeId(1), 7), RestoredState::bootstrap([NodeId(1)]));
    let mut config = ReplicaConfig::new(NodeId(1));
    config.multi_leader = true;
    let mut state = MemoryState::new();
    state.set_multileader(Some(MultiLeaderState::new(DcId(0), ConflictPolicy::LastWriteWins, 100)));
    let mut harness = Harness { replica: Replica::in_group(config, raft, LogIndex::ZERO), state, next_sequence: 0 };
    harness.replica.tick(UnixMillis(NOW.0 + 5_000), &harness.state);
    let (persist, _) = harness.take();
    harness.persist_group(&persist);
    assert!(harness.replica.status().leader_ready);
    harness
}

impl Harness {
    /// Submits a command to a group and runs it to its reply.
    fn run_in_group(&mut self, words: &[&str]) -> (Vec<LogEntry>, Reply) {
        let request = self.submit(words);
        let (persist, mut replies) = self.take();
        replies.extend(self.persist_group(&persist));
        let (_, reply) = replies.into_iter().find(|(id, _)| *id == request).expect("a reply");
        (persist, reply)
    }
}

#[test]
fn a_multi_leader_write_is_a_stamped_local_change_and_incr_an_increment() {
    use crate::multileader::{ChangeOp, MlEntry};
    let mut harness = multi_leader_group();
    let (logged, reply) = harness.run_in_group(&["SET", "k", "v"]);
    assert_eq!(reply, Reply::OK);
    let [LogEntry { payload: EntryPayload::MultiLeader(MlEntry::Local { timestamp, ops }), .. }] = &logged[..] else {
        panic!("a client write is logged as a local change: {logged:?}");
    };
    assert_eq!(timestamp.wall_ms, NOW.0, "stamped by the clock at the write's time");
    assert_eq!(ops, &vec![ChangeOp::Set { key: Bytes::from("k"), value: Bytes::from("v"), expire_at: None }]);

    let (logged, reply) = harness.run_in_group(&["INCRBY", "n", "5"]);
    assert_eq!(reply, Reply::Integer(5));
    let [LogEntry { payload: EntryPayload::MultiLeader(MlEntry::Local { timestamp: later, ops }), .. }] = &logged[..]
    else {
        panic!("an increment is logged as a local change: {logged:?}");
    };
    assert!(later > timestamp, "timestamps grow");
    assert_eq!(ops, &vec![ChangeOp::Add { key: Bytes::from("n"), delta: 5 }]);
    // The pipelined view and the applied view agree.
    assert_eq!(harness.run_in_group(&["INCR", "n"]).1, Reply::Integer(6));
    assert_eq!(harness.run_in_group(&["GET", "k"]).1, bulk("v"));
    assert_eq!(harness.state.get(b"n").expect("read").map(|stored| stored.value), Some(Bytes::from("6")));
    let ml = harness.state.multileader().expect("multi-leader state");
    assert_eq!(ml.stats().changes_local, 3);
    assert_eq!(ml.counter_value(b"n"), Some(6));

    let (logged, reply) = harness.run_in_group(&["FLUSHALL"]);
    assert!(logged.is_empty(), "nothing is logged for a refused FLUSHALL");
    assert!(matches!(&reply, Reply::Error(text) if text.contains("not supported in multi-leader mode")), "{reply:?}");
}

#[test]
fn remote_changes_are_proposed_only_by_a_ready_leader() {
    use crate::multileader::{DcId, MlEntry};
    let mut follower = one_voter_group();
    let entry = MlEntry::Remote { from: DcId(1), through: 3, changes: Vec::new() };
    assert!(follower.replica.propose_multileader(NOW, entry.clone()).is_err(), "not elected yet");
    let mut harness = multi_leader_group();
    let index = harness.replica.propose_multileader(NOW, entry).expect("the leader proposes");
    let (persist, _) = harness.take();
    assert_eq!(persist.last().map(|entry| entry.index), Some(index));
    harness.persist_group(&persist);
    assert_eq!(harness.state.multileader().expect("state").upstream_position(DcId(1)), 3);
}
