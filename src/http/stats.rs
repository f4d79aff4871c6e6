//! The KPI routes: `GET /wsapi/interaction_data/stats` (a window, by bucket,
//! computed by the store) and `…/stats/stream` (the node's live rollup, one
//! line per interval).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};

use super::answer::json_response;
use super::params::{STATS_PARAMS, only, param_i64};
use crate::error::ApiError;
use crate::rollup::window::parse_bucket;
use crate::state::AppState;
use crate::store::{RollupQuery, StoreError};

/// The KPIs of `start..=end` (ms; blobs sent in seconds are placed by their
/// time too), cut into `bucket`s.
pub async fn stats(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&params, STATS_PARAMS)?;
    let start_ms = param_i64(&params, "start")?;
    let end_ms = param_i64(&params, "end")?;
    if let (Some(s), Some(e)) = (start_ms, end_ms)
        && s > e
    {
        return Err(ApiError::BadParam {
            name: "start",
            value: s.to_string(),
            expected: "at most `end`",
        });
    }
    let bucket = params
        .get("bucket")
        .filter(|b| !b.is_empty())
        .map(|b| parse_bucket(b).map_err(StoreError::from))
        .transpose()?;
    let query = RollupQuery {
        start_ms,
        end_ms,
        bucket,
    };
    let rollup = state.store.rollup(&query).await?;
    Ok(json_response(rollup.to_json().to_string()))
}

/// The live rollup as a never-ending response: one JSON frame per line.
pub async fn stream(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&params, &[])?;
    let frames = state.hub.watch_stats();
    let shutdown = state.shutdown.clone();
    let lines = futures::stream::unfold(frames, move |mut frames| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    changed = frames.changed() => changed.ok()?,
                }
                let frame = frames.borrow_and_update().clone();
                if let Some(frame) = frame {
                    let mut line = BytesMut::with_capacity(frame.len() + 2);
                    line.extend_from_slice(&frame);
                    line.extend_from_slice(b"\r\n");
                    return Some((Ok::<Bytes, std::io::Error>(line.freeze()), frames));
                }
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}
