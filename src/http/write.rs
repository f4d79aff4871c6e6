//! `POST /wsapi/interaction_data`: store one blob or a list, answered once
//! every blob of the request is durable.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::StreamExt;

use crate::blob;
use crate::error::ApiError;
use crate::state::AppState;

/// Stores the body's blobs; `201 {"ok":true,"ids":[…]}`.
pub async fn post_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > limit);
    if too_large {
        return Err(ApiError::TooLarge { limit });
    }
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let blobs = blob::parse_http_body(content_type, &buf)?;
    let ids = state.batcher.submit(blobs).await?;
    tracing::debug!(blobs = ids.len(), "stored");
    let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
    let body = serde_json::json!({ "ok": true, "ids": ids });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}
