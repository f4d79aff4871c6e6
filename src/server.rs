//! Lifecycle: opens the store and starts the writer and the hub's pump
//! ([`App::open`]), serves a listener until told to stop, then finishes
//! in-flight writes and closes streams ([`serve`]). [`run`] does both on the
//! configured address, for the binary.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::Batcher;
use crate::config::{Backend, Config};
use crate::hub::{self, Hub};
use crate::registry::Registry;
use crate::rollup::live::{KEPT_SECONDS, LiveRollup, now_ms};
use crate::state::AppState;
use crate::store::{self, BlobStore, RollupQuery, StoreError};

/// How long shutdown waits for the writer to drain after the last request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for HTTP responses and WebSockets to finish; a
/// client that stopped reading its stream must not hold the process forever.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// A service ready to serve: the store open, the writer and the hub's pump
/// running.
pub struct App {
    state: AppState,
    writer: JoinHandle<()>,
    writer_stop: CancellationToken,
    pump: JoinHandle<()>,
}

impl App {
    /// Opens the store `config` names and starts what serves it.
    pub async fn open(config: Config) -> Result<App, StartError> {
        let opened = store::open(&config)
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
        let live = live_seed(&*opened.store).await;
        let (hub, pump) = Hub::start(
            opened.feed,
            opened.events,
            opened.start_seq,
            hub::RING_CAPACITY,
            live,
        );
        let writer_stop = CancellationToken::new();
        let (batcher, writer) = Batcher::start(
            opened.store.clone(),
            opened.write_concurrency,
            config.storage_quota_bytes,
            writer_stop.clone(),
        );
        let state = AppState {
            registry: Registry::new(config.max_connections),
            config: Arc::new(config),
            store: opened.store,
            batcher,
            hub,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        Ok(App {
            state,
            writer,
            writer_stop,
            pump,
        })
    }
}

/// How long the start waits for the store's last hour of KPIs (a CouchDB
/// view built at query time can take long; the live rollup then starts empty).
const LIVE_SEED_TIMEOUT: Duration = Duration::from_secs(5);

/// The live rollup as the store's last hour by second, read before the
/// hub's pump runs, so nothing written by this node is counted twice. (On
/// CouchDB, a change another node writes meanwhile may count twice in the
/// first hour's live windows.)
async fn live_seed(store: &dyn BlobStore) -> LiveRollup {
    let now = now_ms();
    let query = RollupQuery {
        start_ms: Some(now - (KEPT_SECONDS - 1) * 1000),
        end_ms: Some(now),
        bucket: Some(Duration::from_secs(1)),
    };
    match tokio::time::timeout(LIVE_SEED_TIMEOUT, store.rollup(&query)).await {
        Ok(Ok(rollup)) => LiveRollup::seeded(rollup.buckets),
        Ok(Err(e)) => {
            tracing::warn!("the live KPIs start empty: reading the last hour failed: {e}");
            LiveRollup::default()
        }
        Err(_) => {
            tracing::warn!(
                "the live KPIs start empty: the store's last hour took over {LIVE_SEED_TIMEOUT:?}"
            );
            LiveRollup::default()
        }
    }
}

/// Opens the store, binds `HOST:PORT`, and serves until `stop` resolves.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let app = App::open(config).await?;
    let addr = SocketAddr::new(app.state.config.host, app.state.config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    serve(listener, app, stop).await
}

/// Serves `app` on `listener` until `stop` resolves, then shuts down
/// gracefully: no new connections, in-flight writes answered, streams ended.
pub async fn serve(
    listener: TcpListener,
    app: App,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let App {
        state,
        writer,
        writer_stop,
        pump,
    } = app;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    tracing::info!(
        "kpiggybank listening on http://{addr} (backend {}, database {}, {})",
        state.config.backend.name(),
        state.config.db_name,
        state.store.describe()
    );
    let shutdown = state.shutdown.clone();
    let tracker = state.tracker.clone();
    let service = crate::app::router(state).into_make_service_with_connect_info::<SocketAddr>();
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
    let ended_early = tokio::select! {
        _ = stop => false,
        // Serving only ends early on a fatal error, or if something cancelled
        // the shutdown token.
        ended = &mut http => {
            tracing::error!("the HTTP server stopped on its own: {ended:?}");
            true
        }
    };
    tracing::info!("stopping: finishing in-flight requests");
    shutdown.cancel();
    // A finished JoinHandle must not be polled again.
    if !ended_early
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut http)
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
    // The store is closed with the last handle; nothing more reaches the ring.
    pump.abort();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serving_that_ends_on_its_own_shuts_down_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("DB_BACKEND", "memory"),
            ("DATA_DIR", dir.path().to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let app = App::open(Config::from_vars(&vars).unwrap()).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // What a fatal error looks like from here: serving ends before `stop`.
        app.state.shutdown.cancel();
        let served = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::spawn(serve(listener, app, std::future::pending())),
        )
        .await
        .expect("serve returns");
        assert!(served.expect("serve does not panic").is_ok());
    }
}
