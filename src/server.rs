//! Wires config, store, batcher, hub and routes together; serves until told
//! to stop, then finishes in-flight writes and closes streams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::Batcher;
use crate::config::{Backend, Config};
use crate::hub::Hub;
use crate::store::{self, Store, StoreError};
use crate::ws::registry::Registry;

/// How long shutdown waits for the writer to drain after the last request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for HTTP responses and WebSockets to finish; a
/// client that stopped reading its stream must not hold the process forever.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The store, for reads.
    pub store: Arc<dyn Store>,
    /// The writer, for every write.
    pub batcher: Batcher,
    /// The change fan-out.
    pub hub: Arc<Hub>,
    /// Cancelled when the server stops: ends streams and sockets.
    pub shutdown: CancellationToken,
    /// Open WebSocket connections.
    pub registry: Arc<Registry>,
    /// WebSocket connection tasks, awaited at shutdown.
    pub tracker: TaskTracker,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not open.
    #[error("cannot open the {backend} store: {source}")]
    Store {
        /// `DB_BACKEND`.
        backend: &'static str,
        /// What went wrong.
        source: StoreError,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr} (HOST, PORT): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The router over a state: every route of the service.
pub fn app(state: AppState) -> Router {
    crate::http::routes()
        .merge(crate::ws::routes())
        .merge(crate::assets::routes())
        .with_state(state)
}

/// Opens the store, binds, serves until `stop` resolves, then shuts down
/// gracefully: no new connections, in-flight writes answered, streams ended.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let hub = Hub::new();
    let store = store::open(&config, hub.clone())
        .await
        .map_err(|source| StartError::Store {
            backend: config.backend.name(),
            source,
        })?;
    if matches!(config.backend, Backend::Memory | Backend::Dummy) {
        tracing::warn!(
            "DB_BACKEND={}: nothing is saved, every blob is gone when the process stops",
            config.backend.name()
        );
    }
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    let writer_stop = CancellationToken::new();
    let (batcher, writer) = Batcher::start(
        store.clone(),
        config.storage_quota_bytes,
        writer_stop.clone(),
    );
    let shutdown = CancellationToken::new();
    tracing::info!(
        "kpiggybank listening on http://{addr} (backend {}, database {}, {})",
        config.backend.name(),
        config.db_name,
        store.describe()
    );
    let tracker = TaskTracker::new();
    let state = AppState {
        registry: Registry::new(config.max_connections),
        config: Arc::new(config),
        store,
        batcher,
        hub,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    // No Nagle delay: change frames and acks are small and latency matters
    // (fan-out p99 fell several-fold in the benchmark).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut http = tokio::spawn(
        axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    tokio::select! {
        _ = stop => {}
        // Serving only ends early on a fatal error.
        ended = &mut http => {
            tracing::error!("the HTTP server stopped on its own: {ended:?}");
        }
    }
    tracing::info!("stopping: finishing in-flight requests");
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut http)
        .await
        .is_err()
    {
        tracing::warn!(
            "some HTTP responses did not finish within {SHUTDOWN_GRACE:?} (a client not reading?); leaving them"
        );
    }
    // WebSocket tasks outlive the HTTP server: they answer their pending
    // pushes and close with 1001.
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("WebSocket connections did not close within {SHUTDOWN_GRACE:?}");
    }
    // Write what was queued, then end.
    writer_stop.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, writer).await.is_err() {
        tracing::warn!("the writer did not drain within {DRAIN_TIMEOUT:?}");
    }
    tracing::info!("stopped");
    Ok(())
}
