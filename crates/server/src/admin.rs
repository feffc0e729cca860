//! The admin HTTP port: Prometheus `/metrics` and a JSON `/status`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chorus_core::StateView;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::context::{NodeContext, ServerStats};
use crate::metrics_names as names;

#[derive(Clone)]
struct AdminState {
    context: Arc<NodeContext>,
    prometheus: Option<PrometheusHandle>,
}

/// Installs the process-wide Prometheus recorder, once; later calls (several nodes in one test
/// process) get the same handle.
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok()).clone()
}

pub fn router(context: Arc<NodeContext>) -> Router {
    let state = AdminState { context, prometheus: prometheus_handle() };
    Router::new().route("/metrics", get(metrics_page)).route("/status", get(status_page)).with_state(state)
}

async fn metrics_page(State(state): State<AdminState>) -> String {
    let status = state.context.core.inspect(|inner| inner.replica.status());
    metrics::gauge!(names::COMMIT_INDEX).set(status.commit_index.0 as f64);
    metrics::gauge!(names::APPLIED_INDEX).set(status.applied_index.0 as f64);
    let keys = match &state.context.leaderless {
        Some(node) => node.key_count() as u64,
        None => state.context.state.key_count().unwrap_or(0),
    };
    metrics::gauge!(names::KEYS).set(keys as f64);
    // Hot-path counters live in plain atomics (a metrics macro call per command costs a registry
    // lookup); they are copied into the registry when scraped.
    let stats = &state.context.stats;
    metrics::counter!(names::COMMANDS_TOTAL).absolute(ServerStats::get(&stats.total_commands));
    metrics::counter!(names::CONNECTIONS_TOTAL).absolute(ServerStats::get(&stats.total_connections));
    metrics::counter!(names::REJECTED_CONNECTIONS_TOTAL).absolute(ServerStats::get(&stats.rejected_connections));
    metrics::counter!(names::PROTOCOL_ERRORS_TOTAL).absolute(ServerStats::get(&stats.protocol_errors));
    metrics::gauge!(names::CONNECTED_CLIENTS).set(ServerStats::get(&stats.connected_clients) as f64);
    if let Some(node) = &state.context.leaderless {
        record_leaderless(&node.status());
    }
    if let Some(node) = &state.context.multileader {
        export_multileader(&state.context, node);
    }
    state.prometheus.as_ref().map(PrometheusHandle::render).unwrap_or_default()
}

/// The leaderless counters, copied into the registry when scraped (the same numbers as INFO's
/// `leaderless` section; counters restart with the process).
fn record_leaderless(status: &crate::leaderless::Status) {
    let (coordinator, node) = (status.coordinator, status.node);
    metrics::counter!(names::LL_READ_REPAIRS_TOTAL).absolute(coordinator.read_repairs);
    metrics::counter!(names::LL_ANTI_ENTROPY_ROUNDS_TOTAL).absolute(coordinator.anti_entropy_rounds);
    metrics::counter!(names::LL_ANTI_ENTROPY_KEYS_RECEIVED_TOTAL).absolute(coordinator.anti_entropy_keys_received);
    metrics::counter!(names::LL_ANTI_ENTROPY_KEYS_SENT_TOTAL).absolute(coordinator.anti_entropy_keys_sent);
    metrics::gauge!(names::LL_HINTS).set(status.hints as f64);
    metrics::counter!(names::LL_HINTS_STORED_TOTAL).absolute(coordinator.hints_stored);
    metrics::counter!(names::LL_HINTS_DELIVERED_TOTAL).absolute(coordinator.hints_delivered);
    metrics::counter!(names::LL_HANDOFFS_RECEIVED_TOTAL).absolute(coordinator.handoffs_received);
    metrics::counter!(names::LL_TOMBSTONES_PURGED_TOTAL).absolute(coordinator.tombstones_purged);
    metrics::gauge!(names::LL_KEYS).set(status.keys as f64);
    metrics::gauge!(names::LL_KEYS_WITH_SIBLINGS).set(status.keys_with_siblings as f64);
    metrics::gauge!(names::LL_SIBLINGS_MAX).set(status.siblings_max as f64);
    metrics::counter!(names::LL_FORWARDED_TOTAL).absolute(node.forwarded);
    metrics::counter!(names::LL_FORWARD_TIMEOUTS_TOTAL).absolute(node.forward_timeouts);
    metrics::gauge!(names::LL_PEERS_DOWN).set(status.peers_down.len() as f64);
    metrics::counter!(names::LL_PEER_DOWN_EVENTS_TOTAL).absolute(node.peers_down);
    metrics::gauge!(names::LL_IN_FLIGHT).set(status.in_flight as f64);
}

async fn status_page(State(state): State<AdminState>) -> axum::Json<serde_json::Value> {
    let context = &state.context;
    if let Some(node) = &context.leaderless {
        let ll = node.status();
        return axum::Json(serde_json::json!({
            "node_id": context.config.id,
            "mode": "leaderless",
            "quorum": { "n": ll.quorum.n, "w": ll.quorum.w, "r": ll.quorum.r },
            "keys": ll.keys,
            "keys_with_siblings": ll.keys_with_siblings,
            "hints": ll.hints,
            "peers_down": ll.peers_down.iter().map(|peer| peer.0).collect::<Vec<u64>>(),
            "in_flight": ll.in_flight,
            "client_addr": context.config.client_addr.to_string(),
            "fsync": context.config.fsync.to_string(),
            "uptime_seconds": context.started.elapsed().as_secs(),
        }));
    }
    let status = context.core.inspect(|inner| inner.replica.status());
    let mode =
        if context.config.initial_cluster.is_some() { context.config.mode.to_string() } else { "standalone".into() };
    let role = match status.role {
        _ if context.leaderless.is_some() => "leaderless",
        None | Some(chorus_core::raft::Role::Leader) => "leader",
        Some(chorus_core::raft::Role::Follower) => "follower",
        Some(_) => "candidate",
    };
    let datacenter = context.multileader.as_ref().map(|node| node.dcs.name(node.this).to_string());
    axum::Json(serde_json::json!({
        "node_id": context.config.id,
        "mode": mode,
        "role": role,
        "datacenter": datacenter,
        "term": status.term.0,
        "last_index": status.last_index.0,
        "commit_index": status.commit_index.0,
        "applied_index": status.applied_index.0,
        "keys": context.state.key_count().unwrap_or(0),
        "client_addr": context.config.client_addr.to_string(),
        "fsync": context.config.fsync.to_string(),
        "uptime_seconds": context.started.elapsed().as_secs(),
    }))
}

/// The multi-leader counters and, per remote datacenter, the link and its lag.
fn export_multileader(context: &NodeContext, node: &crate::multileader::MlNode) {
    let guard = context.state.read();
    let ml = guard.multileader();
    let stats = ml.map(chorus_core::multileader::MultiLeaderState::stats).unwrap_or_default();
    let journal_last = ml.map_or(0, chorus_core::multileader::MultiLeaderState::journal_last);
    let links = node.report(ml);
    drop(guard);
    metrics::counter!(names::ML_CONFLICTS_RESOLVED_TOTAL).absolute(stats.conflicts_resolved);
    metrics::counter!(names::ML_CHANGES_LOCAL_TOTAL).absolute(stats.changes_local);
    metrics::counter!(names::ML_CHANGES_REMOTE_TOTAL).absolute(stats.changes_remote_applied);
    metrics::counter!(names::ML_DUPLICATES_DROPPED_TOTAL).absolute(stats.duplicates_dropped);
    metrics::gauge!(names::ML_HELD_BACK).set(stats.held_back as f64);
    metrics::gauge!(names::ML_JOURNAL_LAST).set(journal_last as f64);
    for link in links {
        let label = [("datacenter", link.name.clone())];
        metrics::gauge!(names::ML_LINK_UP, &label).set(if link.state == "streaming" { 1.0 } else { 0.0 });
        metrics::gauge!(names::ML_LAG_CHANGES, &label).set(link.lag_changes as f64);
        metrics::gauge!(names::ML_LAG_SECONDS, &label).set(link.lag_ms as f64 / 1000.0);
        metrics::gauge!(names::ML_POSITION_SENT, &label).set(link.sent as f64);
        metrics::gauge!(names::ML_POSITION_ACKED, &label).set(link.acked as f64);
        metrics::gauge!(names::ML_POSITION_RECEIVED, &label).set(link.received_through as f64);
    }
}
