//! The command table and the parsing of key-value commands from their arguments.
//!
//! The table is the single source for arity checks, `COMMAND COUNT`/`COMMAND INFO`/`COMMAND DOCS`
//! and dispatch: key-value commands are parsed here into [`KvCommand`] and executed by the core;
//! connection and server commands (`PING`, `HELLO`, `INFO`, ...) are answered by the node runtime.

use bytes::Bytes;
use chorus_resp::Reply;

use crate::kv::number::parse_i64;
use crate::types::UnixMillis;

/// Who answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Reads or writes the keyspace: executed by the core.
    Kv,
    /// Connection state or node information: answered by the node runtime.
    Node,
}

/// One row of the command table, in the shape `COMMAND INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lower-case name, as Redis reports it.
    pub name: &'static str,
    /// Redis arity: positive = exact argument count (name included), negative = at least -arity.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub key_step: i32,
    pub kind: CommandKind,
    pub group: &'static str,
    pub summary: &'static str,
}

impl CommandSpec {
    pub fn arity_ok(&self, argument_count: usize) -> bool {
        let count = i64::try_from(argument_count).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 { count == arity } else { count >= -arity }
    }

    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }
}

macro_rules! spec {
    ($name:literal, $arity:literal, [$($flag:literal),*], $first:literal, $last:literal, $step:literal,
     $kind:ident, $group:literal, $summary:literal) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: &[$($flag),*],
            first_key: $first,
            last_key: $last,
            key_step: $step,
            kind: CommandKind::$kind,
            group: $group,
            summary: $summary,
        }
    };
}

/// Every command Chorus answers.
pub static COMMANDS: &[CommandSpec] = &[
    spec!("get", 2, ["readonly", "fast"], 1, 1, 1, Kv, "string", "Returns the string value of a key."),
    spec!(
        "set",
        -3,
        ["write", "denyoom"],
        1,
        1,
        1,
        Kv,
        "string",
        "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist."
    ),
    spec!(
        "setnx",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Set the string value of a key only when the key doesn't exist."
    ),
    spec!(
        "setex",
        4,
        ["write", "denyoom"],
        1,
        1,
        1,
        Kv,
        "string",
        "Sets the string value and expiration time of a key. Creates the key if it doesn't exist."
    ),
    spec!(
        "psetex",
        4,
        ["write", "denyoom"],
        1,
        1,
        1,
        Kv,
        "string",
        "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist."
    ),
    spec!(
        "getset",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Returns the previous string value of a key after setting it to a new value."
    ),
    spec!(
        "getdel",
        2,
        ["write", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Returns the string value of a key after deleting the key."
    ),
    spec!(
        "getex",
        -2,
        ["write", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Returns the string value of a key after setting its expiration time."
    ),
    spec!("del", -2, ["write"], 1, -1, 1, Kv, "generic", "Deletes one or more keys."),
    spec!("unlink", -2, ["write", "fast"], 1, -1, 1, Kv, "generic", "Asynchronously deletes one or more keys."),
    spec!("exists", -2, ["readonly", "fast"], 1, -1, 1, Kv, "generic", "Determines whether one or more keys exist."),
    spec!(
        "incr",
        2,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."
    ),
    spec!(
        "decr",
        2,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."
    ),
    spec!(
        "incrby",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist."
    ),
    spec!(
        "decrby",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist."
    ),
    spec!(
        "append",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Kv,
        "string",
        "Appends a string to the value of a key. Creates the key if it doesn't exist."
    ),
    spec!("strlen", 2, ["readonly", "fast"], 1, 1, 1, Kv, "string", "Returns the length of a string value."),
    spec!("getrange", 4, ["readonly"], 1, 1, 1, Kv, "string", "Returns a substring of the string stored at a key."),
    spec!(
        "setrange",
        4,
        ["write", "denyoom"],
        1,
        1,
        1,
        Kv,
        "string",
        "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist."
    ),
    spec!(
        "mget",
        -2,
        ["readonly", "fast"],
        1,
        -1,
        1,
        Kv,
        "string",
        "Atomically returns the string values of one or more keys."
    ),
    spec!(
        "mset",
        -3,
        ["write", "denyoom"],
        1,
        -1,
        2,
        Kv,
        "string",
        "Atomically creates or modifies the string values of one or more keys."
    ),
    spec!(
        "msetnx",
        -3,
        ["write", "denyoom"],
        1,
        -1,
        2,
        Kv,
        "string",
        "Atomically modifies the string values of one or more keys only when all keys don't exist."
    ),
    spec!("expire", -3, ["write", "fast"], 1, 1, 1, Kv, "generic", "Sets the expiration time of a key in seconds."),
    spec!(
        "pexpire",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Kv,
        "generic",
        "Sets the expiration time of a key in milliseconds."
    ),
    spec!(
        "expireat",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Kv,
        "generic",
        "Sets the expiration time of a key to a Unix timestamp."
    ),
    spec!(
        "pexpireat",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Kv,
        "generic",
        "Sets the expiration time of a key to a Unix milliseconds timestamp."
    ),
    spec!("ttl", 2, ["readonly", "fast"], 1, 1, 1, Kv, "generic", "Returns the expiration time in seconds of a key."),
    spec!(
        "pttl",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Kv,
        "generic",
        "Returns the expiration time in milliseconds of a key."
    ),
    spec!(
        "expiretime",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Kv,
        "generic",
        "Returns the expiration time of a key as a Unix timestamp."
    ),
    spec!(
        "pexpiretime",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Kv,
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp."
    ),
    spec!("persist", 2, ["write", "fast"], 1, 1, 1, Kv, "generic", "Removes the expiration time of a key."),
    spec!("type", 2, ["readonly", "fast"], 1, 1, 1, Kv, "generic", "Determines the type of value stored at a key."),
    spec!("dbsize", 1, ["readonly", "fast"], 0, 0, 0, Kv, "server", "Returns the number of keys in the database."),
    spec!("keys", 2, ["readonly"], 0, 0, 0, Kv, "generic", "Returns all key names that match a pattern."),
    spec!("scan", -2, ["readonly"], 0, 0, 0, Kv, "generic", "Iterates over the key names in the database."),
    spec!("flushall", -1, ["write"], 0, 0, 0, Kv, "server", "Removes all keys from all databases."),
    spec!("flushdb", -1, ["write"], 0, 0, 0, Kv, "server", "Remove all keys from the current database."),
    spec!("ping", -1, ["fast"], 0, 0, 0, Node, "connection", "Returns the server's liveliness response."),
    spec!("echo", 2, ["fast"], 0, 0, 0, Node, "connection", "Returns the given string."),
    spec!("hello", -1, ["noauth", "fast"], 0, 0, 0, Node, "connection", "Handshakes with the Redis server."),
    spec!("auth", -2, ["noauth", "fast"], 0, 0, 0, Node, "connection", "Authenticates the connection."),
    spec!("select", 2, ["fast"], 0, 0, 0, Node, "connection", "Changes the selected database."),
    spec!("quit", -1, ["noauth", "fast"], 0, 0, 0, Node, "connection", "Closes the connection."),
    spec!("reset", 1, ["noauth", "fast"], 0, 0, 0, Node, "connection", "Resets the connection."),
    spec!("client", -2, [], 0, 0, 0, Node, "connection", "A container for client connection commands."),
    spec!("command", -1, [], 0, 0, 0, Node, "server", "Returns detailed information about all commands."),
    spec!("config", -2, [], 0, 0, 0, Node, "server", "A container for server configuration commands."),
    spec!("info", -1, [], 0, 0, 0, Node, "server", "Returns information and statistics about the server."),
    spec!("cluster", -2, [], 0, 0, 0, Node, "cluster", "A container for Redis Cluster commands."),
    spec!("role", 1, ["fast"], 0, 0, 0, Node, "server", "Returns the replication role."),
    spec!(
        "chorus.leader",
        -2,
        [],
        0,
        0,
        0,
        Node,
        "chorus",
        "CHORUS.LEADER TRANSFER [node]: hands leadership to a caught-up voter (the most caught-up one by default)."
    ),
    spec!(
        "chorus.debug",
        -2,
        [],
        0,
        0,
        0,
        Node,
        "chorus",
        "CHORUS.DEBUG ISOLATE ON|OFF | DC-PARTITION dc ON|OFF: drop every message from peers, or from one datacenter's nodes (fault injection; needs --enable-debug-commands)."
    ),
    spec!(
        "chorus.conflicts",
        -1,
        ["readonly"],
        0,
        0,
        0,
        Node,
        "chorus",
        "Multi-leader mode: CHORUS.CONFLICTS [count] lists the most recent conflicts this datacenter resolved, newest first."
    ),
    spec!(
        "chorus.versions",
        2,
        ["readonly"],
        1,
        1,
        1,
        Node,
        "chorus",
        "Multi-leader mode: the versions (siblings) of a key this datacenter holds, with origin, sequence and timestamp."
    ),
    spec!(
        "chorus.member",
        -2,
        [],
        0,
        0,
        0,
        Node,
        "chorus",
        "CHORUS.MEMBER ADD id peer-addr [LEARNER|VOTER] | REMOVE id | PROMOTE id | LIST: changes the group one node at a time (on the leader; replies once committed)."
    ),
    spec!(
        "wait",
        3,
        [],
        0,
        0,
        0,
        Kv,
        "generic",
        "Blocks until the writes sent before it are durable on the given number of replicas, or the timeout (ms) passes; returns how many are."
    ),
    spec!(
        "readonly",
        1,
        ["fast"],
        0,
        0,
        0,
        Node,
        "cluster",
        "Enables read-only queries (possibly stale) on a follower for this connection."
    ),
    spec!(
        "readwrite",
        1,
        ["fast"],
        0,
        0,
        0,
        Node,
        "cluster",
        "Disables read-only queries on a follower for this connection."
    ),
    spec!(
        "chorus.token",
        1,
        ["fast"],
        0,
        0,
        0,
        Node,
        "chorus",
        "Returns a session token: the log position this connection has seen (its writes, or what it read)."
    ),
    spec!(
        "chorus.session",
        2,
        ["fast"],
        0,
        0,
        0,
        Node,
        "chorus",
        "Makes later reads on this connection wait until this replica has applied the token's position."
    ),
    spec!("time", 1, ["fast"], 0, 0, 0, Node, "server", "Returns the server time."),
    spec!(
        "chorus.getall",
        2,
        ["readonly"],
        1,
        1,
        1,
        Node,
        "chorus",
        "Leaderless mode: every concurrent value (sibling) of a key, and the context to write back with."
    ),
    spec!(
        "chorus.put",
        4,
        ["write"],
        1,
        1,
        1,
        Node,
        "chorus",
        "Leaderless mode: CHORUS.PUT key value context writes a value superseding what the context (from CHORUS.GETALL; empty: nothing) saw."
    ),
    spec!(
        "chorus.quorum",
        -1,
        ["fast"],
        0,
        0,
        0,
        Node,
        "chorus",
        "Leaderless mode: CHORUS.QUORUM n w r | ONE | QUORUM | ALL | DEFAULT sets this connection's replication parameters (no argument: shows them)."
    ),
    spec!(
        "chorus.digest",
        -1,
        ["fast"],
        0,
        0,
        0,
        Node,
        "chorus",
        "Leaderless mode: the Merkle root of this node's store, or (CHORUS.DIGEST peer) of the slots it shares with that peer; CHORUS.DIGEST SLOTS [peer] gives [slot, digest] per slot held."
    ),
];

/// The table row for `name`, compared case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Redis's reply to a command it does not know.
pub fn unknown_command_reply(args: &[Bytes]) -> Reply {
    let name = args.first().map(|name| String::from_utf8_lossy(name)).unwrap_or_default();
    let mut text = format!("ERR unknown command '{}', with args beginning with: ", truncate(&name));
    for arg in args.iter().skip(1).take(20) {
        text.push_str(&format!("'{}' ", truncate(&String::from_utf8_lossy(arg))));
    }
    Reply::Error(text)
}

/// Redis's reply to a wrong argument count.
pub fn arity_reply(name: &str) -> Reply {
    Reply::Error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn truncate(text: &str) -> String {
    text.chars().take(128).collect()
}

pub(crate) fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

pub(crate) fn not_an_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// When a write sets an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryArg {
    /// Relative to the time the leader executes the command; resolved to an absolute time there.
    RelativeMillis(i64),
    Absolute(UnixMillis),
}

/// What `SET` does with an existing expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetExpiry {
    /// Plain `SET`: the key loses any previous expiry.
    Clear,
    Keep,
    Set(ExpiryArg),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    IfAbsent,
    IfPresent,
}

/// `EXPIRE`'s NX/XX/GT/LT option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    Always,
    NoExpiry,
    HasExpiry,
    GreaterThan,
    LessThan,
}

/// `GETEX`'s option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExOption {
    Leave,
    Persist,
    Set(ExpiryArg),
}

/// A parsed key-value command. Relative times stay relative here: the core resolves them against
/// the `now` it is given when it executes the command, and logs only absolute times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    Get {
        key: Bytes,
    },
    Set {
        key: Bytes,
        value: Bytes,
        condition: SetCondition,
        expiry: SetExpiry,
        return_old: bool,
        name: &'static str,
    },
    GetSet {
        key: Bytes,
        value: Bytes,
    },
    GetDel {
        key: Bytes,
    },
    GetEx {
        key: Bytes,
        option: GetExOption,
    },
    Delete {
        keys: Vec<Bytes>,
    },
    Exists {
        keys: Vec<Bytes>,
    },
    IncrBy {
        key: Bytes,
        delta: i64,
    },
    Append {
        key: Bytes,
        value: Bytes,
    },
    StrLen {
        key: Bytes,
    },
    GetRange {
        key: Bytes,
        start: i64,
        end: i64,
    },
    SetRange {
        key: Bytes,
        offset: i64,
        value: Bytes,
    },
    MGet {
        keys: Vec<Bytes>,
    },
    MSet {
        pairs: Vec<(Bytes, Bytes)>,
        only_if_none_exist: bool,
    },
    Expire {
        key: Bytes,
        at: ExpiryArg,
        condition: ExpireCondition,
        name: &'static str,
    },
    Ttl {
        key: Bytes,
        unit_millis: bool,
    },
    ExpireTime {
        key: Bytes,
        unit_millis: bool,
    },
    Persist {
        key: Bytes,
    },
    Type {
        key: Bytes,
    },
    DbSize,
    Keys {
        pattern: Bytes,
    },
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        type_filter: Option<Bytes>,
    },
    FlushAll,
    /// WAIT numreplicas timeout-ms (0 = forever): answered by the replica, not the key-value layer.
    Wait {
        replicas: u64,
        timeout_ms: u64,
    },
}

impl KvCommand {
    /// The first key the command names, if any (a redirect names that key's slot).
    pub fn first_key(&self) -> Option<&Bytes> {
        match self {
            KvCommand::Get { key }
            | KvCommand::Set { key, .. }
            | KvCommand::GetSet { key, .. }
            | KvCommand::GetDel { key }
            | KvCommand::GetEx { key, .. }
            | KvCommand::IncrBy { key, .. }
            | KvCommand::Append { key, .. }
            | KvCommand::StrLen { key }
            | KvCommand::GetRange { key, .. }
            | KvCommand::SetRange { key, .. }
            | KvCommand::Expire { key, .. }
            | KvCommand::Ttl { key, .. }
            | KvCommand::ExpireTime { key, .. }
            | KvCommand::Persist { key }
            | KvCommand::Type { key } => Some(key),
            KvCommand::Delete { keys } | KvCommand::Exists { keys } | KvCommand::MGet { keys } => keys.first(),
            KvCommand::MSet { pairs, .. } => pairs.first().map(|(key, _)| key),
            KvCommand::DbSize
            | KvCommand::Keys { .. }
            | KvCommand::Scan { .. }
            | KvCommand::FlushAll
            | KvCommand::Wait { .. } => None,
        }
    }

    /// Whether the command may change the keyspace (followers refuse these, later).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            KvCommand::Get { .. }
                | KvCommand::Exists { .. }
                | KvCommand::StrLen { .. }
                | KvCommand::GetRange { .. }
                | KvCommand::MGet { .. }
                | KvCommand::Ttl { .. }
                | KvCommand::ExpireTime { .. }
                | KvCommand::Type { .. }
                | KvCommand::DbSize
                | KvCommand::Keys { .. }
                | KvCommand::Scan { .. }
                | KvCommand::Wait { .. }
        )
    }

    /// Parses `args` (the command name first) for the table row `spec`, whose arity the caller has
    /// already checked. Errors are the replies Redis gives.
    pub fn parse(spec: &CommandSpec, args: &[Bytes]) -> Result<KvCommand, Reply> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        let key = arg(1);
        let command = match spec.name {
            "get" => KvCommand::Get { key },
            "set" => parse_set(args)?,
            "setnx" => KvCommand::Set {
                key,
                value: arg(2),
                condition: SetCondition::IfAbsent,
                expiry: SetExpiry::Clear,
                return_old: false,
                name: "setnx",
            },
            "setex" | "psetex" => {
                let amount = parse_i64(&arg(2)).ok_or_else(not_an_integer)?;
                let name = spec.name;
                let millis = relative_millis(amount, name == "setex", name)?;
                KvCommand::Set {
                    key,
                    value: arg(3),
                    condition: SetCondition::Always,
                    expiry: SetExpiry::Set(ExpiryArg::RelativeMillis(millis)),
                    return_old: false,
                    name,
                }
            }
            "getset" => KvCommand::GetSet { key, value: arg(2) },
            "getdel" => KvCommand::GetDel { key },
            "getex" => parse_getex(args)?,
            "del" | "unlink" => KvCommand::Delete { keys: args[1..].to_vec() },
            "exists" => KvCommand::Exists { keys: args[1..].to_vec() },
            "incr" => KvCommand::IncrBy { key, delta: 1 },
            "decr" => KvCommand::IncrBy { key, delta: -1 },
            "incrby" => KvCommand::IncrBy { key, delta: parse_i64(&arg(2)).ok_or_else(not_an_integer)? },
            "decrby" => {
                let delta = parse_i64(&arg(2)).ok_or_else(not_an_integer)?;
                let delta = delta.checked_neg().ok_or_else(|| Reply::err("decrement would overflow"))?;
                KvCommand::IncrBy { key, delta }
            }
            "append" => KvCommand::Append { key, value: arg(2) },
            "strlen" => KvCommand::StrLen { key },
            "getrange" => KvCommand::GetRange {
                key,
                start: parse_i64(&arg(2)).ok_or_else(not_an_integer)?,
                end: parse_i64(&arg(3)).ok_or_else(not_an_integer)?,
            },
            "setrange" => {
                let offset = parse_i64(&arg(2)).ok_or_else(not_an_integer)?;
                if offset < 0 {
                    return Err(Reply::err("offset is out of range"));
                }
                KvCommand::SetRange { key, offset, value: arg(3) }
            }
            "mget" => KvCommand::MGet { keys: args[1..].to_vec() },
            "mset" | "msetnx" => {
                if args.len().is_multiple_of(2) {
                    return Err(arity_reply(spec.name));
                }
                let pairs = args[1..].chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
                KvCommand::MSet { pairs, only_if_none_exist: spec.name == "msetnx" }
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => parse_expire(spec.name, args)?,
            "ttl" | "pttl" => KvCommand::Ttl { key, unit_millis: spec.name == "pttl" },
            "expiretime" | "pexpiretime" => KvCommand::ExpireTime { key, unit_millis: spec.name == "pexpiretime" },
            "persist" => KvCommand::Persist { key },
            "type" => KvCommand::Type { key },
            "dbsize" => KvCommand::DbSize,
            "keys" => KvCommand::Keys { pattern: key },
            "scan" => parse_scan(args)?,
            "wait" => {
                let replicas = parse_i64(&arg(1)).and_then(|n| u64::try_from(n).ok()).ok_or_else(not_an_integer)?;
                let timeout_ms = parse_i64(&arg(2))
                    .ok_or_else(not_an_integer)
                    .and_then(|n| u64::try_from(n).map_err(|_| Reply::err("timeout is negative")))?;
                KvCommand::Wait { replicas, timeout_ms }
            }
            "flushall" | "flushdb" => match &args[1..] {
                [] => KvCommand::FlushAll,
                [option] if option.eq_ignore_ascii_case(b"async") || option.eq_ignore_ascii_case(b"sync") => {
                    KvCommand::FlushAll
                }
                _ => return Err(syntax_error()),
            },
            _ => return Err(unknown_command_reply(args)),
        };
        Ok(command)
    }
}

/// Converts a relative `EX`/`PX` amount to milliseconds, refusing non-positive or overflowing ones
/// with Redis's text.
fn relative_millis(amount: i64, unit_seconds: bool, name: &str) -> Result<i64, Reply> {
    let invalid = || Reply::err(format!("invalid expire time in '{name}' command"));
    if amount <= 0 {
        return Err(invalid());
    }
    if unit_seconds { amount.checked_mul(1000).ok_or_else(invalid) } else { Ok(amount) }
}

fn absolute_millis(amount: i64, unit_seconds: bool, name: &str) -> Result<UnixMillis, Reply> {
    let millis = relative_millis(amount, unit_seconds, name)?;
    u64::try_from(millis).map(UnixMillis).map_err(|_| Reply::err(format!("invalid expire time in '{name}' command")))
}

fn parse_set(args: &[Bytes]) -> Result<KvCommand, Reply> {
    let mut condition = SetCondition::Always;
    let mut expiry = SetExpiry::Clear;
    // Redis accepts an option given twice (`NX NX`, `EX 1 EX 2`: the last wins) but not two
    // conflicting ones (`NX XX`, `EX 1 PX 2`, `EX 1 KEEPTTL`).
    let mut expiry_option: Option<Vec<u8>> = None;
    let mut return_old = false;
    let mut i = 3;
    while i < args.len() {
        let option = args[i].to_ascii_uppercase();
        let next = args.get(i + 1);
        let expiry_free = |wanted: &[u8]| expiry_option.as_deref().is_none_or(|given| given == wanted);
        match option.as_slice() {
            b"NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
            b"XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
            b"GET" => return_old = true,
            b"KEEPTTL" if expiry_free(b"KEEPTTL") => {
                expiry = SetExpiry::Keep;
                expiry_option = Some(option.clone());
            }
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expiry_free(&option) && next.is_some() => {
                expiry_option = Some(option.clone());
                let amount = next.and_then(|value| parse_i64(value)).ok_or_else(not_an_integer)?;
                let seconds = option == b"EX" || option == b"EXAT";
                let arg = if option.ends_with(b"AT") {
                    ExpiryArg::Absolute(absolute_millis(amount, seconds, "set")?)
                } else {
                    ExpiryArg::RelativeMillis(relative_millis(amount, seconds, "set")?)
                };
                expiry = SetExpiry::Set(arg);
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(KvCommand::Set { key: args[1].clone(), value: args[2].clone(), condition, expiry, return_old, name: "set" })
}

fn parse_getex(args: &[Bytes]) -> Result<KvCommand, Reply> {
    let mut option = GetExOption::Leave;
    let mut i = 2;
    while i < args.len() {
        let word = args[i].to_ascii_uppercase();
        let next = args.get(i + 1);
        match word.as_slice() {
            b"PERSIST" if option == GetExOption::Leave => option = GetExOption::Persist,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if option == GetExOption::Leave && next.is_some() => {
                let amount = next.and_then(|value| parse_i64(value)).ok_or_else(not_an_integer)?;
                let seconds = word == b"EX" || word == b"EXAT";
                option = GetExOption::Set(if word.ends_with(b"AT") {
                    ExpiryArg::Absolute(absolute_millis(amount, seconds, "getex")?)
                } else {
                    ExpiryArg::RelativeMillis(relative_millis(amount, seconds, "getex")?)
                });
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(KvCommand::GetEx { key: args[1].clone(), option })
}

fn parse_expire(name: &'static str, args: &[Bytes]) -> Result<KvCommand, Reply> {
    let amount = parse_i64(&args[2]).ok_or_else(not_an_integer)?;
    let seconds = name == "expire" || name == "expireat";
    let invalid = || Reply::err(format!("invalid expire time in '{name}' command"));
    // Unlike SET, EXPIRE accepts zero and negative times: they delete the key.
    let millis = if seconds { amount.checked_mul(1000).ok_or_else(invalid)? } else { amount };
    let at = if name.ends_with("at") {
        ExpiryArg::Absolute(UnixMillis(u64::try_from(millis).unwrap_or(0)))
    } else {
        ExpiryArg::RelativeMillis(millis)
    };
    let mut condition = ExpireCondition::Always;
    for option in &args[3..] {
        let wanted = match option.to_ascii_uppercase().as_slice() {
            b"NX" => ExpireCondition::NoExpiry,
            b"XX" => ExpireCondition::HasExpiry,
            b"GT" => ExpireCondition::GreaterThan,
            b"LT" => ExpireCondition::LessThan,
            _ => {
                return Err(Reply::err(format!("Unsupported option {}", String::from_utf8_lossy(option))));
            }
        };
        condition = match (condition, wanted) {
            (ExpireCondition::Always, wanted) => wanted,
            (current, wanted) if current == wanted => current,
            (ExpireCondition::GreaterThan, ExpireCondition::LessThan)
            | (ExpireCondition::LessThan, ExpireCondition::GreaterThan) => {
                return Err(Reply::err("GT and LT options at the same time are not compatible"));
            }
            _ => {
                return Err(Reply::err("NX and XX, GT or LT options at the same time are not compatible"));
            }
        };
    }
    Ok(KvCommand::Expire { key: args[1].clone(), at, condition, name })
}

fn parse_scan(args: &[Bytes]) -> Result<KvCommand, Reply> {
    let cursor = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| Reply::err("invalid cursor"))?;
    let mut pattern = None;
    let mut count = 10usize;
    let mut type_filter = None;
    let mut i = 2;
    while i < args.len() {
        let option = args[i].to_ascii_uppercase();
        let value = args.get(i + 1).ok_or_else(syntax_error)?;
        match option.as_slice() {
            b"MATCH" => pattern = Some(value.clone()),
            b"COUNT" => {
                let wanted = parse_i64(value).ok_or_else(not_an_integer)?;
                if wanted < 1 {
                    return Err(syntax_error());
                }
                count = usize::try_from(wanted).unwrap_or(usize::MAX).min(100_000);
            }
            b"TYPE" => type_filter = Some(value.clone()),
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    Ok(KvCommand::Scan { cursor, pattern, count, type_filter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<KvCommand, Reply> {
        let args: Vec<Bytes> = words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect();
        let spec = lookup(&args[0]).expect("known command");
        assert!(spec.arity_ok(args.len()), "arity of {words:?}");
        KvCommand::parse(spec, &args)
    }

    #[test]
    fn set_options_parse_like_redis() {
        let parsed = parse(&["SET", "k", "v", "nx", "px", "100", "get"]).expect("valid");
        assert_eq!(
            parsed,
            KvCommand::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                condition: SetCondition::IfAbsent,
                expiry: SetExpiry::Set(ExpiryArg::RelativeMillis(100)),
                return_old: true,
                name: "set",
            }
        );
        assert_eq!(parse(&["SET", "k", "v", "NX", "XX"]), Err(syntax_error()));
        assert_eq!(parse(&["SET", "k", "v", "EX", "10", "KEEPTTL"]), Err(syntax_error()));
        assert_eq!(parse(&["SET", "k", "v", "EX"]), Err(syntax_error()));
        assert_eq!(parse(&["SET", "k", "v", "EX", "ten"]), Err(not_an_integer()));
        assert_eq!(parse(&["SET", "k", "v", "EX", "0"]), Err(Reply::err("invalid expire time in 'set' command")));
        assert_eq!(
            parse(&["SET", "k", "v", "EX", "9223372036854775807"]),
            Err(Reply::err("invalid expire time in 'set' command"))
        );
    }

    #[test]
    fn expire_options_conflict_as_in_redis() {
        assert!(parse(&["EXPIRE", "k", "10", "NX"]).is_ok());
        assert_eq!(
            parse(&["EXPIRE", "k", "10", "GT", "LT"]),
            Err(Reply::err("GT and LT options at the same time are not compatible"))
        );
        assert_eq!(
            parse(&["EXPIRE", "k", "10", "NX", "XX"]),
            Err(Reply::err("NX and XX, GT or LT options at the same time are not compatible"))
        );
        assert_eq!(parse(&["EXPIRE", "k", "ten"]), Err(not_an_integer()));
    }

    #[test]
    fn mset_needs_pairs() {
        assert_eq!(parse(&["MSET", "a", "1", "b"]), Err(arity_reply("mset")));
    }

    #[test]
    fn unknown_command_text_matches_redis() {
        let args = [Bytes::from_static(b"foo"), Bytes::from_static(b"bar")];
        assert_eq!(
            unknown_command_reply(&args),
            Reply::Error("ERR unknown command 'foo', with args beginning with: 'bar' ".to_string())
        );
    }

    #[test]
    fn arity_follows_redis_convention() {
        let get = lookup(b"GeT").expect("get exists");
        assert!(get.arity_ok(2));
        assert!(!get.arity_ok(3));
        let del = lookup(b"del").expect("del exists");
        assert!(!del.arity_ok(1));
        assert!(del.arity_ok(5));
    }
}
