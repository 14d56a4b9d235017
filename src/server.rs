//! The small HTTP server for the controller's own observability: `/metrics` and `/healthz`.
//! Binds to 127.0.0.1 unless told otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::docker::Store;
use crate::metrics::Metrics;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr}: {source} (is another operator running? pick another --listen)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server on {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    store: Store,
}

async fn serve_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// 200 once the first full list is in and the event stream is attached; 503 otherwise,
/// with the reason.
///
/// A cluster whose Prometheus cannot be asked leaves it 200, said on the body's first line
/// (`ok (degraded: ...)`): the controller still keeps every container in its declared state
/// (that Prometheus may be one of them), only the checks are frozen, and that episode is an
/// `observability-lost` ticket. A 503 there would have a health-driven restarter restart
/// the one process that can bring Prometheus back.
async fn serve_healthz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.store.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: first list of containers not complete\n".to_string(),
        )
    } else if !state.store.is_connected() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: docker event stream disconnected, reconnecting\n".to_string(),
        )
    } else if state.metrics.store_writable.get() == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: the ticket store cannot be written; no repairs until it can\n".to_string(),
        )
    } else {
        let blind = blind_clusters(&state.metrics);
        if blind.is_empty() {
            return (StatusCode::OK, "ok\n".to_string());
        }
        (
            StatusCode::OK,
            format!(
                "ok (degraded: Prometheus cannot be asked for cluster {}; its checks are frozen, \
                 containers are still repaired)\n",
                blind.join(", ")
            ),
        )
    }
}

/// The clusters whose Prometheus cannot be asked now (`operator_observability_up` 0), read
/// from the exposition the controller serves, where that state is kept.
fn blind_clusters(metrics: &Metrics) -> Vec<String> {
    let mut blind: Vec<String> = metrics
        .render()
        .lines()
        .filter_map(|line| {
            let (labels, value) = line
                .strip_prefix("operator_observability_up{")?
                .rsplit_once("} ")?;
            if value.trim() != "0" {
                return None;
            }
            // Cluster names are DNS labels: no quote or comma to unescape.
            let cluster = labels
                .split(',')
                .find_map(|l| l.strip_prefix("cluster=\""))?
                .strip_suffix('"')?;
            Some(cluster.to_string())
        })
        .collect();
    blind.sort();
    blind
}

/// Binds now (so a taken port is an error at start-up) and returns the bound address and
/// the serving future, which ends when `cancel` fires.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Store,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServerError>>), ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_healthz))
        .with_state(AppState { metrics, store });
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
            .map_err(|source| ServerError::Serve {
                addr: bound,
                source,
            })
    };
    Ok((bound, serve))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn healthz(metrics: &Arc<Metrics>, store: &Store) -> (StatusCode, String) {
        let response = serve_healthz(State(AppState {
            metrics: metrics.clone(),
            store: store.clone(),
        }))
        .await
        .into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A store after its first list, with the event stream attached: ready.
    fn listed_and_connected() -> Store {
        let writer = crate::docker::store::Writer::new();
        writer.replace_all(Vec::new(), 0);
        writer.set_connected(true);
        writer.reader()
    }

    #[tokio::test]
    async fn healthz_is_degraded_while_the_ticket_store_cannot_be_written() {
        let (metrics, store) = (Arc::new(Metrics::new()), listed_and_connected());
        assert_eq!(healthz(&metrics, &store).await.0, StatusCode::OK);
        metrics.store_writable.set(0);
        let (status, body) = healthz(&metrics, &store).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("ticket store cannot be written"), "{body}");
    }

    #[tokio::test]
    async fn healthz_stays_ok_but_says_degraded_while_a_clusters_prometheus_is_lost() {
        let (metrics, store) = (Arc::new(Metrics::new()), listed_and_connected());
        let up = |cluster: &str| {
            metrics
                .observability_up
                .get_or_create(&vec![("cluster", cluster.to_string())])
                .clone()
        };
        up("seen").set(1);
        assert_eq!(
            healthz(&metrics, &store).await,
            (StatusCode::OK, "ok\n".into())
        );
        up("tikv").set(0);
        up("etcd").set(0);
        let (status, body) = healthz(&metrics, &store).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.starts_with("ok (degraded: Prometheus cannot be asked for cluster etcd, tikv;"),
            "{body}"
        );
        // A store that cannot be written is worse, and wins.
        metrics.store_writable.set(0);
        assert_eq!(
            healthz(&metrics, &store).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
