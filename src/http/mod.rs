//! The HTTP routes, compatible with the Node.js original (see README.md):
//! one file per route family, over the shared [`answer`] and [`params`].

mod answer;
pub(crate) mod params;
mod read;
mod smash;
mod stats;
mod stream;
mod write;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

/// The HTTP routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/wsapi/ping", get(ping))
        .route(
            "/wsapi/interaction_data",
            post(write::post_data).get(read::get_data),
        )
        .route("/wsapi/interaction_data/count", get(read::count))
        .route("/wsapi/interaction_data/last", get(read::last))
        .route("/wsapi/interaction_data/stream", get(stream::stream))
        .route("/wsapi/interaction_data/smash", post(smash::smash))
        .route("/wsapi/interaction_data/stats", get(stats::stats))
        .route("/wsapi/interaction_data/stats/stream", get(stats::stream))
        .route("/wsapi/stats", get(stats))
        .fallback(not_found)
}

async fn ping() -> &'static str {
    "pong"
}

async fn not_found(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn stats(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let mut stats = serde_json::json!({
        "backend": state.config.backend.name(),
        "epoch": &*state.hub.epoch(),
        "count": state.store.count().await?,
        "used_bytes": state.store.used_bytes(),
        "connections": state.registry.connections(),
        "subscribers": state.registry.subscribers(),
        "refused_connections": state.registry.refused(),
        "closed_too_slow": state.registry.closed_too_slow(),
        "catch_ups": state.hub.catch_ups(),
    });
    // Only a store with a spool (CouchDB) has blobs acknowledged but not yet
    // in it: waiting to be forwarded, or refused and kept aside.
    if let Some(backlog) = state.store.backlog() {
        stats["spooled"] = backlog.spooled.into();
        stats["rejected"] = backlog.rejected.into();
    }
    Ok(axum::Json(stats))
}
