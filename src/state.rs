//! What every handler can reach: the one value the router carries.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::Batcher;
use crate::config::Config;
use crate::hub::Hub;
use crate::registry::Registry;
use crate::store::BlobStore;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The store, for reads.
    pub store: Arc<dyn BlobStore>,
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
