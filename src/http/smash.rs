//! `POST /wsapi/interaction_data/smash`: the destructive read, behind
//! `ADMIN_TOKEN`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::answer::{json_array, json_response};
use super::params::range_query;
use crate::error::ApiError;
use crate::state::AppState;

/// Removes and returns the blobs in range.
pub async fn smash(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::SmashDisabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    let query = range_query(&params)?;
    let docs = state.store.smash(&query).await?;
    tracing::info!(blobs = docs.len(), "smashed");
    Ok(json_response(json_array(&docs)))
}

/// Compares secrets without leaking, through timing, how much of them matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
