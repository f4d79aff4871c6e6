//! `GET /wsapi/interaction_data/stream`: the change feed as a never-ending
//! response, one JSON change per line ending `\r\n`, empty lines as heartbeats.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};

use super::params::{STREAM_PARAMS, only, param_i64};
use crate::error::ApiError;
use crate::protocol::{self, Given};
use crate::state::AppState;

/// Default time between heartbeat lines.
pub const STREAM_HEARTBEAT: Duration = Duration::from_secs(10);

/// Shortest heartbeat a client may ask for, so it cannot make us spin.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// Follows the feed from `since`, `last` or now.
pub async fn stream(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&params, STREAM_PARAMS)?;
    let param = |name: &str| {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| Given::Param(v))
    };
    let follow = protocol::follow(param("since"), param("last"), param("epoch"))?;
    let heartbeat = match param_i64(&params, "heartbeat")? {
        Some(ms) if ms > 0 => Duration::from_millis(ms as u64).max(MIN_HEARTBEAT),
        Some(_) => {
            return Err(ApiError::BadParam {
                name: "heartbeat",
                value: params["heartbeat"].clone(),
                expected: "a positive number of milliseconds",
            });
        }
        None => STREAM_HEARTBEAT,
    };
    let sub = state
        .hub
        .subscribe(follow.start, follow.epoch.as_deref())
        .await?;
    let epoch = sub.epoch().to_string();
    // Where to resume if the stream breaks before its first change.
    let resume = serde_json::to_string(&sub.resume_seq().map(|s| &s.0)).expect("JSON serializes");
    let shutdown = state.shutdown.clone();
    let ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let lines = futures::stream::unfold((sub, ticker), move |(mut sub, mut ticker)| {
        let shutdown = shutdown.clone();
        async move {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = ticker.tick() => Bytes::from_static(b"\r\n"),
                next = sub.next() => match next {
                    Ok(entries) => {
                        let mut buf = BytesMut::with_capacity(entries.iter().map(|e| e.frame.len() + 2).sum());
                        for entry in entries {
                            buf.extend_from_slice(&entry.frame);
                            buf.extend_from_slice(b"\r\n");
                        }
                        buf.freeze()
                    }
                    Err(e) => {
                        tracing::warn!("ending a change stream: {e}");
                        return None;
                    }
                },
            };
            Some((Ok::<_, std::io::Error>(chunk), (sub, ticker)))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (header::HeaderName::from_static("x-kpiggybank-epoch"), epoch),
            (header::HeaderName::from_static("x-kpiggybank-seq"), resume),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}
