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
    metrics::gauge!(names::KEYS).set(state.context.state.key_count().unwrap_or(0) as f64);
    // Hot-path counters live in plain atomics (a metrics macro call per command costs a registry
    // lookup); they are copied into the registry when scraped.
    let stats = &state.context.stats;
    metrics::counter!(names::COMMANDS_TOTAL).absolute(ServerStats::get(&stats.total_commands));
    metrics::counter!(names::CONNECTIONS_TOTAL).absolute(ServerStats::get(&stats.total_connections));
    metrics::counter!(names::REJECTED_CONNECTIONS_TOTAL).absolute(ServerStats::get(&stats.rejected_connections));
    metrics::counter!(names::PROTOCOL_ERRORS_TOTAL).absolute(ServerStats::get(&stats.protocol_errors));
    metrics::gauge!(names::CONNECTED_CLIENTS).set(ServerStats::get(&stats.connected_clients) as f64);
    state.prometheus.as_ref().map(PrometheusHandle::render).unwrap_or_default()
}

async fn status_page(State(state): State<AdminState>) -> axum::Json<serde_json::Value> {
    let context = &state.context;
    let status = context.core.inspect(|inner| inner.replica.status());
    axum::Json(serde_json::json!({
        "node_id": context.config.id,
        "mode": "standalone",
        "role": "leader",
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
