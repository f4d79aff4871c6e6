//! The router: every route of the service over one [`AppState`], built apart
//! from serving so it can be driven in-process.

use axum::Router;

use crate::state::AppState;

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    crate::http::routes()
        .merge(crate::ws::routes())
        .merge(crate::assets::routes())
        .with_state(state)
}
