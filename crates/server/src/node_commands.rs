//! Commands the node answers itself: connection state (HELLO, AUTH, CLIENT, SELECT, ...) and
//! information about the node (INFO, COMMAND, CONFIG GET, CLUSTER KEYSLOT, TIME). Key-value commands
//! are parsed here and handed to the core.

use std::sync::Arc;

use bytes::Bytes;
use chorus_core::Slot;
use chorus_core::command::{self, CommandKind, CommandSpec, KvCommand};
use chorus_core::kv::glob::glob_match;
use chorus_core::raft::MembershipChange;
use chorus_resp::{Protocol, Reply};

use crate::connection::ConnectionState;
use crate::context::{NodeContext, now_millis};
use crate::info;

/// What to do with one request.
pub enum Dispatch {
    Reply(Reply),
    Kv(KvCommand),
    /// Reply, then close the connection (QUIT).
    Close(Reply),
    /// A membership change for the replica (CHORUS.MEMBER), answered once it commits.
    Member {
        change: MembershipChange,
        address: Option<String>,
    },
    /// A key-value request for the leaderless coordinator (answered through the reply channel).
    Leaderless(crate::leaderless::Request),
}

/// The Redis version Chorus reports: the command set and replies follow Redis 7.2.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

pub fn dispatch(context: &Arc<NodeContext>, connection: &mut ConnectionState, args: Vec<Bytes>) -> Dispatch {
    let Some(spec) = command::lookup(&args[0]) else {
        return Dispatch::Reply(command::unknown_command_reply(&args));
    };
    if !spec.arity_ok(args.len()) {
        return Dispatch::Reply(command::arity_reply(spec.name));
    }
    if !connection.authenticated && !spec.flags.contains(&"noauth") {
        return Dispatch::Reply(Reply::Error("NOAUTH Authentication required.".into()));
    }
    if context.leaderless.is_some()
        && let Some(dispatch) = crate::leaderless::dispatch(context, connection, spec, &args)
    {
        return dispatch;
    }
    match spec.kind {
        CommandKind::Kv => match KvCommand::parse(spec, &args) {
            Ok(command) => Dispatch::Kv(command),
            Err(reply) => Dispatch::Reply(reply),
        },
        CommandKind::Node => node_command(context, connection, spec, &args),
    }
}

fn node_command(
    context: &Arc<NodeContext>,
    connection: &mut ConnectionState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Dispatch {
    let reply = match spec.name {
        "ping" => match args {
            [_] => Reply::Status("PONG"),
            [_, message] => Reply::Bulk(message.clone()),
            _ => command::arity_reply("ping"),
        },
        "echo" => Reply::Bulk(args[1].clone()),
        "quit" => return Dispatch::Close(Reply::OK),
        "reset" => {
            connection.protocol = Protocol::Resp2;
            connection.name = None;
            connection.authenticated = context.config.requirepass.is_none();
            Reply::Status("RESET")
        }
        "auth" => auth(context, connection, &args[1..]),
        "hello" => hello(context, connection, &args[1..]),
        "select" => match command_int(&args[1]) {
            Some(0) => Reply::OK,
            Some(_) => Reply::err("DB index is out of range"),
            None => Reply::err("value is not an integer or out of range"),
        },
        "client" => client(connection, args),
        "command" => command_command(args),
        "config" => config(context, args),
        "info" => info::info_reply(context, connection, &args[1..]),
        "cluster" => cluster(args),
        "role" => role(context),
        "chorus.leader" => leader_command(context, args),
        "chorus.member" => return member_command(context, args),
        "chorus.debug" => debug_command(context, args),
        "chorus.conflicts" => conflicts_command(context, args),
        "chorus.versions" => versions_command(context, args),
        "readonly" => {
            connection.readonly = true;
            Reply::OK
        }
        "readwrite" => {
            connection.readonly = false;
            Reply::OK
        }
        "chorus.token" => {
            let position = context.core.inspect(|inner| inner.replica.session_position());
            connection.session_index = connection.session_index.max(position.0);
            Reply::Integer(i64::try_from(connection.session_index).unwrap_or(i64::MAX))
        }
        "chorus.session" => match std::str::from_utf8(&args[1]).ok().and_then(|text| text.parse::<u64>().ok()) {
            Some(token) => {
                connection.session_index = connection.session_index.max(token);
                Reply::OK
            }
            None => Reply::err("invalid session token: expected a log position from CHORUS.TOKEN"),
        },
        "time" => {
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_micros())
                .unwrap_or_default();
            Reply::Array(vec![
                Reply::Bulk(Bytes::from((micros / 1_000_000).to_string())),
                Reply::Bulk(Bytes::from((micros % 1_000_000).to_string())),
            ])
        }
        "chorus.getall" | "chorus.put" | "chorus.quorum" | "chorus.digest" => {
            Reply::err(format!("{} needs leaderless mode (mode = \"leaderless\")", spec.name.to_ascii_uppercase()))
        }
        other => Reply::err(format!("internal error: no handler for '{other}'")),
    };
    Dispatch::Reply(reply)
}

fn command_int(arg: &[u8]) -> Option<i64> {
    chorus_core::kv::number::parse_i64(arg)
}

fn check_password(context: &NodeContext, username: Option<&Bytes>, password: &Bytes) -> Result<(), Reply> {
    let Some(expected) = &context.config.requirepass else {
        // Without a password the default user has `nopass`: Redis accepts any password for it
        // when the user is named, and refuses only the legacy one-argument form.
        if username.is_some_and(|user| user.as_ref() == b"default") {
            return Ok(());
        }
        return Err(Reply::err(
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    };
    let user_ok = username.is_none_or(|user| user.as_ref() == b"default");
    if user_ok && password.as_ref() == expected.as_bytes() {
        Ok(())
    } else {
        Err(Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into()))
    }
}

fn auth(context: &NodeContext, connection: &mut ConnectionState, args: &[Bytes]) -> Reply {
    let result = match args {
        [password] => check_password(context, None, password),
        [username, password] => check_password(context, Some(username), password),
        _ => return Reply::err("syntax error"),
    };
    match result {
        Ok(()) => {
            connection.authenticated = true;
            Reply::OK
        }
        Err(reply) => reply,
    }
}

fn hello(context: &NodeContext, connection: &mut ConnectionState, args: &[Bytes]) -> Reply {
    let mut protocol = connection.protocol;
    if let Some(version) = args.first() {
        protocol = match command_int(version) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
            None => return Reply::err("Protocol version is not an integer or out of range"),
        };
    }
    let mut i = 1;
    let mut new_name = None;
    while i < args.len() {
        let option = args[i].to_ascii_uppercase();
        match option.as_slice() {
            b"AUTH" if i + 2 < args.len() => {
                if let Err(reply) = check_password(context, Some(&args[i + 1]), &args[i + 2]) {
                    return reply;
                }
                connection.authenticated = true;
                i += 3;
            }
            b"SETNAME" if i + 1 < args.len() => {
                if !valid_client_name(&args[i + 1]) {
                    return Reply::err("Client names cannot contain spaces, newlines or special characters.");
                }
                new_name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Reply::err(format!("Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i])));
            }
        }
    }
    if !connection.authenticated {
        return Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
        );
    }
    if new_name.is_some() {
        connection.name = new_name;
    }
    connection.protocol = protocol;
    let proto = match protocol {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_COMPAT_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(proto)),
        (Reply::bulk("id"), Reply::Integer(i64::try_from(connection.id).unwrap_or(i64::MAX))),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&byte| (b'!'..=b'~').contains(&byte))
}

fn subcommand_error(args: &[Bytes], container: &str) -> Reply {
    Reply::err(format!(
        "unknown subcommand '{}'. Try {} HELP.",
        String::from_utf8_lossy(&args[1]),
        container.to_ascii_uppercase()
    ))
}

fn sub_arity_error(container: &str, sub: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{container}|{sub}' command"))
}

fn client(connection: &mut ConnectionState, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    match (sub.as_slice(), args.len()) {
        (b"id", 2) => Reply::Integer(i64::try_from(connection.id).unwrap_or(i64::MAX)),
        (b"getname", 2) => connection.name.clone().map_or(Reply::Null, Reply::Bulk),
        (b"setname", 3) => {
            if !valid_client_name(&args[2]) {
                return Reply::err("Client names cannot contain spaces, newlines or special characters.");
            }
            connection.name = if args[2].is_empty() { None } else { Some(args[2].clone()) };
            Reply::OK
        }
        (b"setinfo", 4) => {
            let attribute = args[2].to_ascii_lowercase();
            match attribute.as_slice() {
                b"lib-name" => connection.library_name = Some(args[3].clone()),
                b"lib-ver" => connection.library_version = Some(args[3].clone()),
                _ => {
                    return Reply::err(format!("Unrecognized option '{}'", String::from_utf8_lossy(&args[2])));
                }
            }
            Reply::OK
        }
        (b"info", 2) => Reply::Verbatim(Bytes::from(client_line(connection))),
        (b"list", _) => Reply::Verbatim(Bytes::from(client_line(connection))),
        (b"help", 2) => help_reply(&[
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "LIST",
            "    Return information about client connections (this node lists the calling one).",
            "SETINFO <option> <value>",
            "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "HELP",
            "    Print this help.",
        ]),
        (b"id" | b"getname" | b"setname" | b"setinfo" | b"info" | b"help", _) => {
            sub_arity_error("client", &String::from_utf8_lossy(&sub))
        }
        _ => subcommand_error(args, "client"),
    }
}

fn help_reply(lines: &[&'static str]) -> Reply {
    Reply::Array(lines.iter().map(|line| Reply::Status(line)).collect())
}

/// One line of CLIENT INFO / CLIENT LIST, with every field Redis 7.2 prints (clients such as
/// redis-py parse them all). Fields about features Chorus lacks (pub/sub, MULTI) carry the values
/// Redis shows for a client not using them; buffer sizes are not tracked per connection and read 0.
fn client_line(connection: &ConnectionState) -> String {
    let text =
        |value: &Option<Bytes>| value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let age = connection.connected_at.elapsed().as_secs();
    format!(
        "id={} addr={} laddr={} fd=0 name={} age={age} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 \
         watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r \
         cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        connection.id,
        connection.peer,
        connection.local,
        text(&connection.name),
        if connection.protocol == Protocol::Resp3 { 3 } else { 2 },
        text(&connection.library_name),
        text(&connection.library_version),
    )
}

fn command_info(spec: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Set(spec.flags.iter().map(|flag| Reply::Status(flag)).collect()),
        Reply::Integer(i64::from(spec.first_key)),
        Reply::Integer(i64::from(spec.last_key)),
        Reply::Integer(i64::from(spec.key_step)),
        Reply::Set(vec![Reply::StatusOwned(format!("@{}", spec.group))]),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn command_doc(spec: &CommandSpec) -> Reply {
    Reply::Map(vec![
        (Reply::bulk("summary"), Reply::bulk(spec.summary)),
        (Reply::bulk("since"), Reply::bulk("1.0.0")),
        (Reply::bulk("group"), Reply::bulk(spec.group)),
    ])
}

fn command_command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|sub| sub.to_ascii_lowercase()) else {
        return Reply::Array(command::COMMANDS.iter().map(command_info).collect());
    };
    let named = |names: &[Bytes]| -> Vec<&'static CommandSpec> {
        if names.is_empty() {
            command::COMMANDS.iter().collect()
        } else {
            names.iter().filter_map(|name| command::lookup(name)).collect()
        }
    };
    match sub.as_slice() {
        b"count" if args.len() == 2 => Reply::Integer(command::COMMANDS.len() as i64),
        b"count" => sub_arity_error("command", "count"),
        b"list" => Reply::Array(command::COMMANDS.iter().map(|spec| Reply::bulk(spec.name)).collect()),
        b"getkeys" if args.len() >= 3 => getkeys(&args[2..]),
        b"getkeys" => sub_arity_error("command", "getkeys"),
        b"help" => help_reply(&[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands in this server.",
            "LIST",
            "    Return a list of all commands in this server.",
            "INFO [<command-name> ...]",
            "    Return details about the specified commands, or all of them.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about the specified commands, or all of them.",
            "GETKEYS <full-command>",
            "    Return the keys from a full command.",
            "HELP",
            "    Print this help.",
        ]),
        b"info" => {
            let names = &args[2..];
            if names.is_empty() {
                Reply::Array(command::COMMANDS.iter().map(command_info).collect())
            } else {
                Reply::Array(
                    names.iter().map(|name| command::lookup(name).map_or(Reply::NullArray, command_info)).collect(),
                )
            }
        }
        b"docs" => {
            Reply::Map(named(&args[2..]).into_iter().map(|spec| (Reply::bulk(spec.name), command_doc(spec))).collect())
        }
        _ => subcommand_error(args, "command"),
    }
}

/// COMMAND GETKEYS: the key arguments of a full command, from the table's key positions.
fn getkeys(command_args: &[Bytes]) -> Reply {
    let Some(spec) = command::lookup(&command_args[0]) else {
        return Reply::err("Invalid command specified");
    };
    if !spec.arity_ok(command_args.len()) {
        return Reply::err("Invalid number of arguments specified for command");
    }
    if spec.first_key <= 0 || spec.key_step <= 0 {
        return Reply::err("The command has no key arguments");
    }
    let first = spec.first_key as usize;
    let last =
        if spec.last_key < 0 { command_args.len() - 1 } else { (spec.last_key as usize).min(command_args.len() - 1) };
    Reply::Array((first..=last).step_by(spec.key_step as usize).map(|i| Reply::Bulk(command_args[i].clone())).collect())
}

fn config(context: &NodeContext, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"get" if args.len() >= 3 => {
            let parameters = config_parameters(context);
            let mut pairs = Vec::new();
            for (name, value) in &parameters {
                if args[2..].iter().any(|pattern| glob_match(&pattern.to_ascii_lowercase(), name.as_bytes())) {
                    pairs.push((Reply::bulk(*name), Reply::Bulk(Bytes::from(value.clone()))));
                }
            }
            Reply::Map(pairs)
        }
        b"get" => sub_arity_error("config", "get"),
        b"resetstat" => Reply::OK,
        b"set" => Reply::err("CONFIG SET is not supported: edit the node's TOML configuration and restart it"),
        _ => subcommand_error(args, "config"),
    }
}

/// The Redis parameters clients ask about (redis-benchmark reads `save` and `appendonly`), with the
/// values that describe what Chorus does.
fn config_parameters(context: &NodeContext) -> Vec<(&'static str, String)> {
    let config = &context.config;
    let appendfsync = match config.fsync {
        crate::config::FsyncPolicy::Always => "always",
        crate::config::FsyncPolicy::Periodic(_) => "everysec",
        crate::config::FsyncPolicy::Never => "no",
    };
    vec![
        ("save", String::new()),
        ("appendonly", "yes".into()),
        ("appendfsync", appendfsync.into()),
        ("databases", "1".into()),
        ("maxclients", config.max_clients.to_string()),
        ("maxmemory", "0".into()),
        ("port", context.client_port.to_string()),
        ("bind", config.client_addr.ip().to_string()),
        ("dir", config.data_dir.display().to_string()),
        ("proto-max-bulk-len", config.limits.bulk_bytes_max.to_string()),
        ("cluster-enabled", "no".into()),
    ]
}

/// CHORUS.LEADER TRANSFER [node].
fn leader_command(context: &NodeContext, args: &[Bytes]) -> Reply {
    if !args[1].eq_ignore_ascii_case(b"transfer") || args.len() > 3 {
        return Reply::err("syntax: CHORUS.LEADER TRANSFER [node-id]");
    }
    let target = match args.get(2) {
        None => None,
        Some(id) => match std::str::from_utf8(id).ok().and_then(|id| id.parse::<u64>().ok()) {
            Some(id) => Some(chorus_core::NodeId(id)),
            None => return Reply::err("node id must be a number"),
        },
    };
    let now = crate::context::now_millis();
    match context.core.with_remote(|inner| inner.replica.transfer_leadership(now, target)) {
        Ok(target) => Reply::StatusOwned(format!("OK transferring to node {target}")),
        Err(reason) => Reply::err(reason),
    }
}

/// CHORUS.DEBUG ISOLATE ON|OFF: fault injection for tests and demos.
fn debug_command(context: &NodeContext, args: &[Bytes]) -> Reply {
    if !context.config.debug_commands {
        return Reply::err("CHORUS.DEBUG is disabled: start the node with --enable-debug-commands");
    }
    if args.get(1).is_some_and(|sub| sub.eq_ignore_ascii_case(b"dc-partition")) {
        return dc_partition(context, args);
    }
    let on = match (args.get(1), args.get(2), args.len()) {
        (Some(sub), Some(flag), 3) if sub.eq_ignore_ascii_case(b"isolate") => {
            if flag.eq_ignore_ascii_case(b"on") {
                true
            } else if flag.eq_ignore_ascii_case(b"off") {
                false
            } else {
                return Reply::err("syntax: CHORUS.DEBUG ISOLATE ON|OFF");
            }
        }
        _ => return Reply::err("syntax: CHORUS.DEBUG ISOLATE ON|OFF"),
    };
    context.isolated.store(on, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(isolated = on, "CHORUS.DEBUG ISOLATE");
    Reply::OK
}

/// CHORUS.DEBUG DC-PARTITION dc ON|OFF: cuts this node off from every node of datacenter `dc`, both
/// ways (multi-leader mode; run it on every node of one side to partition two datacenters).
fn dc_partition(context: &NodeContext, args: &[Bytes]) -> Reply {
    const SYNTAX: &str = "syntax: CHORUS.DEBUG DC-PARTITION <datacenter> ON|OFF";
    let Some(ml) = &context.multileader else {
        return Reply::err("CHORUS.DEBUG DC-PARTITION needs multi-leader mode");
    };
    let [_, _, dc, flag] = args else { return Reply::err(SYNTAX) };
    let on = if flag.eq_ignore_ascii_case(b"on") {
        true
    } else if flag.eq_ignore_ascii_case(b"off") {
        false
    } else {
        return Reply::err(SYNTAX);
    };
    let name = String::from_utf8_lossy(dc);
    let Some(dc) = ml.dcs.by_name(&name) else {
        return Reply::err(format!("no datacenter named '{name}'"));
    };
    if dc == ml.this {
        return Reply::err("a node cannot be partitioned from its own datacenter (use CHORUS.DEBUG ISOLATE)");
    }
    ml.set_partitioned(dc, on);
    tracing::warn!(datacenter = %name, partitioned = on, "CHORUS.DEBUG DC-PARTITION");
    Reply::OK
}

/// CHORUS.CONFLICTS [COUNT]: the most recent conflicts this datacenter resolved, newest first, each
/// as [key, winner origin, winner seq, loser origin, loser seq, policy, timestamp].
fn conflicts_command(context: &NodeContext, args: &[Bytes]) -> Reply {
    let Some(node) = &context.multileader else {
        return Reply::err("CHORUS.CONFLICTS needs multi-leader mode (mode = \"multi-leader\")");
    };
    let count = match args.get(1) {
        None => 10,
        Some(arg) => match command_int(arg).and_then(|count| usize::try_from(count).ok()) {
            Some(count) => count,
            None => return Reply::err("COUNT must be a non-negative integer"),
        },
    };
    let state = context.state.read();
    let Some(ml) = state.multileader() else { return Reply::Array(Vec::new()) };
    let name = |dc| Reply::Bulk(Bytes::from(node.dcs.name(dc).to_string()));
    let policy = |policy| match policy {
        chorus_core::multileader::ConflictPolicy::LastWriteWins => "lww",
        chorus_core::multileader::ConflictPolicy::Siblings => "siblings",
    };
    Reply::Array(
        ml.recent_conflicts()
            .take(count)
            .map(|record| {
                Reply::Array(vec![
                    Reply::Bulk(record.key.clone()),
                    name(record.winner.0),
                    Reply::Integer(i64::try_from(record.winner.1).unwrap_or(i64::MAX)),
                    name(record.loser.0),
                    Reply::Integer(i64::try_from(record.loser.1).unwrap_or(i64::MAX)),
                    Reply::Bulk(Bytes::from_static(policy(record.policy).as_bytes())),
                    Reply::Bulk(Bytes::from(record.at.to_string())),
                ])
            })
            .collect(),
    )
}

/// CHORUS.VERSIONS key: the versions of a key this datacenter holds (siblings under the siblings
/// policy, else the winner), largest (timestamp, origin) first, each as [origin, seq, timestamp,
/// value or nil for a delete]; a counter key shows its value on the first.
fn versions_command(context: &NodeContext, args: &[Bytes]) -> Reply {
    let Some(node) = &context.multileader else {
        return Reply::err("CHORUS.VERSIONS needs multi-leader mode (mode = \"multi-leader\")");
    };
    let state = context.state.read();
    let Some(ml) = state.multileader() else { return Reply::Array(Vec::new()) };
    Reply::Array(
        ml.versions(&args[1])
            .into_iter()
            .map(|(origin, seq, timestamp, value)| {
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(node.dcs.name(origin).to_string())),
                    Reply::Integer(i64::try_from(seq).unwrap_or(i64::MAX)),
                    Reply::Bulk(Bytes::from(timestamp.to_string())),
                    value.map_or(Reply::Null, Reply::Bulk),
                ])
            })
            .collect(),
    )
}

/// CHORUS.MEMBER ADD id peer-addr [LEARNER|VOTER] | REMOVE id | PROMOTE id | LIST.
fn member_command(context: &NodeContext, args: &[Bytes]) -> Dispatch {
    const SYNTAX: &str = "syntax: CHORUS.MEMBER ADD id peer-addr [LEARNER|VOTER] | REMOVE id | PROMOTE id | LIST";
    let word = |index: usize| args.get(index).map(|arg| String::from_utf8_lossy(arg).to_ascii_lowercase());
    let node = |index: usize| {
        args.get(index)
            .and_then(|arg| std::str::from_utf8(arg).ok())
            .and_then(|id| id.parse::<u64>().ok())
            .filter(|&id| id > 0)
            .map(chorus_core::NodeId)
    };
    let Some(sub) = word(1) else { return Dispatch::Reply(Reply::err(SYNTAX)) };
    let change = match (sub.as_str(), args.len()) {
        ("list", 2) => return Dispatch::Reply(member_list(context)),
        ("add", 4 | 5) => {
            let Some(id) = node(2) else { return Dispatch::Reply(Reply::err("node id must be a positive number")) };
            let Some(address) = args.get(3).and_then(|arg| std::str::from_utf8(arg).ok()) else {
                return Dispatch::Reply(Reply::err(SYNTAX));
            };
            if address.parse::<std::net::SocketAddr>().is_err() {
                return Dispatch::Reply(Reply::err(format!("peer address '{address}' is not HOST:PORT")));
            }
            let change = match word(4).as_deref() {
                None | Some("learner") => MembershipChange::AddLearner(id),
                Some("voter") => MembershipChange::AddVoter(id),
                Some(_) => return Dispatch::Reply(Reply::err(SYNTAX)),
            };
            return Dispatch::Member { change, address: Some(address.to_string()) };
        }
        ("remove", 3) => node(2).map(MembershipChange::RemoveNode),
        ("promote", 3) => node(2).map(MembershipChange::PromoteLearner),
        _ => return Dispatch::Reply(Reply::err(SYNTAX)),
    };
    match change {
        Some(change) => Dispatch::Member { change, address: None },
        None => Dispatch::Reply(Reply::err("node id must be a positive number")),
    }
}

/// CHORUS.MEMBER LIST: one entry per member: id, role (voter / learner), peer address if recorded.
fn member_list(context: &NodeContext) -> Reply {
    let Some(membership) = context.core.inspect(|inner| inner.replica.membership().cloned()) else {
        return Reply::err("this node runs standalone");
    };
    let rows = membership
        .members()
        .map(|node| {
            let role = if membership.is_voter(node) { "voter" } else { "learner" };
            let address = membership.addresses.get(&node).cloned().unwrap_or_default();
            Reply::Array(vec![
                Reply::Integer(i64::try_from(node.0).unwrap_or(i64::MAX)),
                Reply::Bulk(Bytes::from(role)),
                Reply::Bulk(Bytes::from(address)),
            ])
        })
        .collect();
    Reply::Array(rows)
}

/// ROLE, in Redis's shape: a leader is a `master` listing its followers (address and the index
/// each has durable), a follower a `slave` of the leader's client address.
fn role(context: &NodeContext) -> Reply {
    let (status, addrs) = context.core.inspect(|inner| {
        let status = inner.replica.group_status();
        let addrs: Vec<(chorus_core::NodeId, Option<String>)> = status
            .iter()
            .flat_map(|status| status.followers.iter().map(|f| f.node_id).chain(status.leader).collect::<Vec<_>>())
            .map(|node| (node, inner.replica.peer_client_addr(node)))
            .collect();
        (status, addrs)
    });
    let address_of =
        |node: chorus_core::NodeId| addrs.iter().find(|(id, _)| *id == node).and_then(|(_, addr)| addr.clone());
    let split = |addr: Option<String>| -> (String, i64) {
        let addr = addr.unwrap_or_default();
        match addr.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(0)),
            None => (addr, 0),
        }
    };
    let Some(status) = status else {
        let offset = context.core.inspect(|inner| inner.replica.status().commit_index);
        return Reply::Array(vec![
            Reply::bulk("master"),
            Reply::Integer(i64::try_from(offset.0).unwrap_or(i64::MAX)),
            Reply::Array(Vec::new()),
        ]);
    };
    if status.role == chorus_core::raft::Role::Leader {
        let followers = status
            .followers
            .iter()
            .map(|follower| {
                let (host, port) = split(address_of(follower.node_id));
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(host)),
                    Reply::Bulk(Bytes::from(port.to_string())),
                    Reply::Bulk(Bytes::from(follower.match_index.0.to_string())),
                ])
            })
            .collect();
        Reply::Array(vec![
            Reply::bulk("master"),
            Reply::Integer(i64::try_from(status.commit_index.0).unwrap_or(i64::MAX)),
            Reply::Array(followers),
        ])
    } else {
        let (host, port) = split(status.leader.and_then(address_of));
        let state = if status.leader.is_some() { "connected" } else { "connect" };
        Reply::Array(vec![
            Reply::bulk("slave"),
            Reply::Bulk(Bytes::from(host)),
            Reply::Integer(port),
            Reply::bulk(state),
            Reply::Integer(i64::try_from(status.commit_index.0).unwrap_or(i64::MAX)),
        ])
    }
}

fn cluster(args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    match (sub.as_slice(), args.len()) {
        (b"keyslot", 3) => Reply::Integer(i64::from(Slot::of_key(&args[2]).0)),
        (b"keyslot", _) => sub_arity_error("cluster", "keyslot"),
        _ => Reply::err("This instance has cluster support disabled"),
    }
}

/// Milliseconds since the epoch, for INFO.
pub fn server_time_micros() -> u64 {
    now_millis().0 * 1000
}
