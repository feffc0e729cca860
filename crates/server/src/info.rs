//! The INFO command, in Redis's `# Section` / `field:value` format, so tools that parse Redis's INFO
//! (redis-cli, client libraries, exporters) read it unchanged. Chorus-specific fields carry a
//! `chorus_` prefix.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chorus_resp::{Protocol, Reply};

use crate::connection::ConnectionState;
use crate::context::{NodeContext, ServerStats};
use crate::node_commands::{REDIS_COMPAT_VERSION, server_time_micros};

const DEFAULT_SECTIONS: &[&str] = &["server", "clients", "memory", "persistence", "stats", "replication", "keyspace"];

pub fn info_reply(context: &NodeContext, connection: &ConnectionState, args: &[Bytes]) -> Reply {
    let wanted: Vec<String> = args.iter().map(|arg| String::from_utf8_lossy(arg).to_ascii_lowercase()).collect();
    let everything = wanted.is_empty() || wanted.iter().any(|w| w == "all" || w == "everything" || w == "default");
    let mut text = String::new();
    let leaderless: &[&str] = if context.leaderless.is_some() { &["leaderless"] } else { &[] };
    let multileader: &[&str] = if context.multileader.is_some() { &["multileader"] } else { &[] };
    for section in DEFAULT_SECTIONS.iter().chain(leaderless).chain(multileader) {
        if everything || wanted.iter().any(|w| w == section) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            render_section(context, section, &mut text);
        }
    }
    let body = Bytes::from(text);
    match connection.protocol {
        Protocol::Resp2 => Reply::Bulk(body),
        Protocol::Resp3 => Reply::Verbatim(body),
    }
}

fn resident_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn render_section(context: &NodeContext, section: &str, out: &mut String) {
    let stats = &context.stats;
    let status = context.core.inspect(|inner| inner.replica.status());
    let write_failure = context.core.inspect(|inner| inner.replica.failure().map(str::to_string));
    let uptime = context.started.elapsed().as_secs();
    // Writing into a String cannot fail.
    let _ = match section {
        "server" => write!(
            out,
            "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nchorus_version:{}\r\nredis_mode:standalone\r\n\
             os:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\nserver_time_usec:{}\r\n\
             uptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nchorus_node_id:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::process::id(),
            context.run_id,
            context.client_port,
            server_time_micros(),
            uptime / 86_400,
            context.config.id,
        ),
        "clients" => write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\nchorus_held_replies:{}\r\n",
            ServerStats::get(&stats.connected_clients),
            context.config.max_clients,
            status.held_replies,
        ),
        "memory" => {
            let rss = resident_memory_bytes();
            write!(out, "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\n")
        }
        "persistence" => write!(
            out,
            "# Persistence\r\nloading:0\r\naof_enabled:1\r\nchorus_fsync:{}\r\nchorus_log_last_index:{}\r\n\
             chorus_commit_index:{}\r\nchorus_applied_index:{}\r\nchorus_pending_keys:{}\r\nchorus_write_failure:{}\r\n",
            context.config.fsync,
            status.last_index,
            status.commit_index,
            status.applied_index,
            status.pending_keys,
            write_failure.unwrap_or_default(),
        ),
        "stats" => write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n\
             expired_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\nchorus_protocol_errors:{}\r\n",
            ServerStats::get(&stats.total_connections),
            ServerStats::get(&stats.total_commands),
            stats.rejected_connections.load(Ordering::Relaxed),
            status.kv.expired_keys,
            status.kv.keyspace_hits,
            status.kv.keyspace_misses,
            ServerStats::get(&stats.protocol_errors),
        ),
        "leaderless" => {
            let Some(node) = &context.leaderless else { return };
            let ll = node.status();
            let (c, n) = (ll.coordinator, ll.node);
            let down: Vec<String> = ll.peers_down.iter().map(ToString::to_string).collect();
            let unheard: Vec<String> = ll.peers_unheard.iter().map(ToString::to_string).collect();
            write!(
                out,
                "# Leaderless\r\nchorus_ll_n:{}\r\nchorus_ll_w:{}\r\nchorus_ll_r:{}\r\nchorus_ll_keys:{}\r\n\
                 chorus_ll_keys_with_siblings:{}\r\nchorus_ll_siblings_max:{}\r\nchorus_ll_hints:{}\r\n\
                 chorus_ll_hints_stored:{}\r\nchorus_ll_hints_delivered:{}\r\nchorus_ll_handoffs_received:{}\r\n\
                 chorus_ll_read_repairs:{}\r\nchorus_ll_anti_entropy_rounds:{}\r\nchorus_ll_anti_entropy_keys_received:{}\r\n\
                 chorus_ll_anti_entropy_keys_sent:{}\r\nchorus_ll_tombstones_purged:{}\r\nchorus_ll_forwarded:{}\r\n\
                 chorus_ll_forwards_received:{}\r\nchorus_ll_forward_timeouts:{}\r\nchorus_ll_peers_down:{}\r\n\
                 chorus_ll_peer_down_events:{}\r\nchorus_ll_in_flight:{}\r\nchorus_ll_store_records:{}\r\n\
                 chorus_ll_peers_unheard:{}\r\n",
                ll.quorum.n,
                ll.quorum.w,
                ll.quorum.r,
                ll.keys,
                ll.keys_with_siblings,
                ll.siblings_max,
                ll.hints,
                c.hints_stored,
                c.hints_delivered,
                c.handoffs_received,
                c.read_repairs,
                c.anti_entropy_rounds,
                c.anti_entropy_keys_received,
                c.anti_entropy_keys_sent,
                c.tombstones_purged,
                n.forwarded,
                n.forwards_received,
                n.forward_timeouts,
                down.join(","),
                n.peers_down,
                ll.in_flight,
                n.store_records,
                unheard.join(","),
            )
        }
        "multileader" => {
            let Some(node) = &context.multileader else { return };
            multileader_section(context, node, out);
            Ok(())
        }
        "replication" if context.leaderless.is_some() => write!(
            out,
            "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\nchorus_mode:leaderless\r\n\
             chorus_role:leaderless\r\n"
        ),
        "replication" => {
            let group_mode = if context.multileader.is_some() { "multi-leader" } else { "single-leader" };
            let (redis_role, chorus_role, mode) = match status.role {
                None => ("master", "standalone", "standalone"),
                Some(chorus_core::raft::Role::Leader) => ("master", "leader", group_mode),
                Some(chorus_core::raft::Role::Follower) => ("slave", "follower", group_mode),
                Some(_) => ("slave", "candidate", group_mode),
            };
            let leader = status.leader.map(|leader| leader.to_string()).unwrap_or_default();
            let own_id = chorus_core::NodeId(context.config.id);
            let (group, addrs, member) = context.core.inspect(|inner| {
                let member = match inner.replica.membership() {
                    None => "standalone",
                    Some(membership) if membership.is_voter(own_id) => "voter",
                    Some(membership) if membership.is_member(own_id) => "learner",
                    Some(_) => "none",
                };
                let group = inner.replica.group_status();
                let addrs: Vec<Option<String>> = group
                    .iter()
                    .flat_map(|group| group.followers.iter().map(|f| inner.replica.peer_client_addr(f.node_id)))
                    .collect();
                (group, addrs, member)
            });
            let now = crate::context::now_millis();
            let mut followers = String::new();
            let connected = group.as_ref().map_or(0, |group| group.followers.len());
            for (position, (follower, addr)) in
                group.iter().flat_map(|group| group.followers.iter()).zip(addrs).enumerate()
            {
                let addr = addr.unwrap_or_default();
                let (ip, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "0"));
                let lag_entries = status.last_index.0.saturating_sub(follower.match_index.0);
                let lag_ms = follower
                    .last_contact
                    .map_or(-1, |at| i64::try_from(now.0.saturating_sub(at.0)).unwrap_or(i64::MAX));
                let _ = write!(
                    followers,
                    "slave{position}:ip={ip},port={port},state=online,offset={},lag={},chorus_node={},chorus_voter={},chorus_lag_entries={lag_entries},chorus_lag_ms={lag_ms}\r\n",
                    follower.match_index,
                    lag_ms.max(0) / 1000,
                    follower.node_id,
                    u8::from(follower.voter),
                );
            }
            write!(
                out,
                "# Replication\r\nrole:{redis_role}\r\nconnected_slaves:{connected}\r\n{followers}master_repl_offset:{}\r\n\
                 chorus_mode:{mode}\r\nchorus_role:{chorus_role}\r\nchorus_member:{member}\r\nchorus_leader_ready:{}\r\nchorus_leader:{leader}\r\nchorus_term:{}\r\n\
                 chorus_commit_index:{}\r\nchorus_applied_index:{}\r\nchorus_durability:{}\r\nchorus_discarded_entries:{}\r\n\
                 chorus_discarded_acknowledged_events:{}\r\n",
                status.commit_index,
                u8::from(status.leader_ready),
                status.term,
                status.commit_index,
                status.applied_index,
                context.config.durability,
                status.discarded_entries,
                status.discarded_committed_events,
            )
        }
        "keyspace" if context.leaderless.is_some() => {
            let keys = context.leaderless.as_ref().map_or(0, |node| node.key_count());
            if keys > 0 {
                write!(out, "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n")
            } else {
                write!(out, "# Keyspace\r\n")
            }
        }
        "keyspace" => {
            let state_guard = context.state.read();
            let state = &*state_guard;
            let (keys, expires) = context.core.inspect(|inner| inner.replica.keyspace_counts(state));
            if keys > 0 {
                let avg_ttl = state_guard.average_ttl_millis(crate::context::now_millis());
                write!(out, "# Keyspace\r\ndb0:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n")
            } else {
                write!(out, "# Keyspace\r\n")
            }
        }
        _ => Ok(()),
    };
}

/// `# MultiLeader`: this datacenter, its policy and topology, the replicated counters, and one line
/// per remote datacenter with the outgoing link (on the datacenter's leader) and what was received.
fn multileader_section(context: &NodeContext, node: &crate::multileader::MlNode, out: &mut String) {
    let state = context.state.read();
    let ml = state.multileader();
    let stats = ml.map(chorus_core::multileader::MultiLeaderState::stats).unwrap_or_default();
    let journal_last = ml.map_or(0, chorus_core::multileader::MultiLeaderState::journal_last);
    let links = node.report(ml);
    drop(state);
    let _ = write!(
        out,
        "# MultiLeader\r\nchorus_ml_datacenter:{}\r\nchorus_ml_datacenter_id:{}\r\nchorus_ml_datacenters:{}\r\n\
         chorus_ml_policy:{}\r\nchorus_ml_topology:{}\r\nchorus_ml_conflicts_resolved:{}\r\nchorus_ml_changes_local:{}\r\n\
         chorus_ml_changes_remote:{}\r\nchorus_ml_held_back:{}\r\nchorus_ml_duplicates_dropped:{}\r\n\
         chorus_ml_own_origin_dropped:{}\r\nchorus_ml_malformed_dropped:{}\r\nchorus_ml_bootstraps_merged:{}\r\n\
         chorus_ml_siblings_keys:{}\r\nchorus_ml_journal_last:{journal_last}\r\nchorus_ml_journal_trimmed_through:{}\r\n\
         chorus_ml_unreachable:{}\r\n",
        node.dcs.name(node.this),
        node.this.0,
        node.dcs.all().iter().map(|&dc| node.dcs.name(dc)).collect::<Vec<_>>().join(","),
        node.policy_text(),
        node.topology_text(),
        stats.conflicts_resolved,
        stats.changes_local,
        stats.changes_remote_applied,
        stats.held_back,
        stats.duplicates_dropped,
        stats.own_origin_dropped,
        stats.malformed_dropped,
        stats.bootstraps_merged,
        stats.siblings_keys,
        stats.journal_trimmed_through,
        node.unreachable().join(","),
    );
    for link in links {
        let _ = write!(
            out,
            "chorus_ml_dc_{}:id={},link={},routed={},leader={},sent={},acked={},lag_changes={},lag_ms={},received_through={},batches_sent={},bootstraps_sent={},resets={},partitioned={}\r\n",
            link.name,
            link.dc.0,
            link.state,
            u8::from(link.routed),
            link.target.map(|target| target.to_string()).unwrap_or_default(),
            link.sent,
            link.acked,
            link.lag_changes,
            link.lag_ms,
            link.received_through,
            link.batches_sent,
            link.bootstraps_sent,
            link.resets,
            u8::from(link.partitioned),
        );
    }
}
