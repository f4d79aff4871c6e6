//! `POST /wsapi/interaction_data`: store one blob or a list, answered once
//! every blob of the request is durable.

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::blob;
use crate::error::ApiError;
use crate::state::AppState;

/// Most bytes of a body over `MAX_BODY_BYTES` read and thrown away before
/// answering 413. A client that writes its whole body before reading
/// (Python's http.client, requests) is otherwise reset: closing a socket
/// with unread data sends a reset, and it loses the 413 with it. Thrown
/// away costs no memory; the bound stops a client from holding a
/// connection by sending forever. Twice the 64 MiB uploads of the report.
pub const OVERSIZE_DRAIN_BYTES: u64 = 128 * 1024 * 1024;

/// How long that reading may take: about what `OVERSIZE_DRAIN_BYTES` take
/// at 100 Mbit/s. A slower client is cut off (and may see the reset).
pub const OVERSIZE_DRAIN_TIME: Duration = Duration::from_secs(10);

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
        // A client that sent `Expect: 100-continue` waits for our answer
        // before sending: reading would invite the body it need not send.
        let waits = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        // Past the bound the reset comes anyway: do not read for nothing.
        if !waits && declared <= OVERSIZE_DRAIN_BYTES {
            discard(body.into_data_stream(), 0, &state.shutdown).await;
        }
        return Err(ApiError::TooLarge { limit });
    }
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            let read = (buf.len() + chunk.len()) as u64;
            drop(buf);
            discard(data, read, &state.shutdown).await;
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

/// Reads and drops the rest of a refused body, `read` bytes of it already
/// taken, within `OVERSIZE_DRAIN_BYTES` and `OVERSIZE_DRAIN_TIME`, so that
/// the answer that follows is read rather than reset. Stops at shutdown.
async fn discard(mut data: BodyDataStream, mut read: u64, shutdown: &CancellationToken) {
    let drain = async {
        while read < OVERSIZE_DRAIN_BYTES {
            match data.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                // The end, or a broken body: nothing left to protect.
                Some(Err(_)) | None => return,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(OVERSIZE_DRAIN_TIME, drain) => {}
        _ = shutdown.cancelled() => {}
    }
}
