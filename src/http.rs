//! The HTTP routes, compatible with the Node.js original (see README.md).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::blob::{self, Doc};
use crate::error::ApiError;
use crate::protocol::{self, Given};
use crate::state::AppState;
use crate::store::{RangeCursor, RangeQuery};

/// Blobs read from the store per chunk of a range answer; large ranges
/// stream page by page instead of being held in memory.
pub const RANGE_PAGE: usize = 1000;

/// Default time between heartbeat lines on `/stream`.
pub const STREAM_HEARTBEAT: Duration = Duration::from_secs(10);

/// Shortest heartbeat a client may ask for, so it cannot make us spin.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// The HTTP routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/wsapi/ping", get(ping))
        .route("/wsapi/interaction_data", post(post_data).get(get_data))
        .route("/wsapi/interaction_data/count", get(count))
        .route("/wsapi/interaction_data/last", get(last))
        .route("/wsapi/interaction_data/stream", get(stream))
        .route("/wsapi/interaction_data/smash", post(smash))
        .route("/wsapi/stats", get(stats))
        .fallback(not_found)
}

type Params = Query<HashMap<String, String>>;

async fn ping() -> &'static str {
    "pong"
}

async fn not_found(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn post_data(
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

fn param_i64(
    params: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| ApiError::BadParam {
                name,
                value: v.clone(),
                expected: "a whole number",
            })
        })
        .transpose()
}

/// Reads `start`, `end`, `limit` and `descending`.
fn range_query(params: &HashMap<String, String>) -> Result<RangeQuery, ApiError> {
    let limit = params
        .get("limit")
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| ApiError::BadParam {
                name: "limit",
                value: v.clone(),
                expected: "a whole number, 0 or more",
            })
        })
        .transpose()?;
    let descending = match params.get("descending").map(|v| v.as_str()) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::BadParam {
                name: "descending",
                value: other.to_string(),
                expected: "true or false",
            });
        }
    };
    Ok(RangeQuery {
        start: param_i64(params, "start")?,
        end: param_i64(params, "end")?,
        limit,
        descending,
    })
}

fn json_response(body: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

async fn get_data(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    if let Some(id) = params.get("id") {
        let doc = state
            .store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no blob with id {id:?}")))?;
        return Ok(json_response(format!("{{\"results\":{}}}", doc.as_str())));
    }
    let query = range_query(&params)?;
    // The first page is read before answering, so that a failing store is a
    // proper status; later pages stream as the client reads.
    let mut remaining = query.limit.unwrap_or(u64::MAX);
    let page_size = |remaining: u64| remaining.min(RANGE_PAGE as u64) as usize;
    let first = if remaining == 0 {
        Default::default()
    } else {
        state
            .store
            .range_page(&query, None, page_size(remaining))
            .await?
    };
    remaining -= first.docs.len() as u64;
    let next = first.next.filter(|_| remaining > 0);
    if next.is_none() {
        return Ok(json_response(json_array(&first.docs)));
    }
    let head = chunk(b"[", &first.docs).freeze();
    let store = state.store.clone();
    let rest = futures::stream::try_unfold(
        (next, remaining),
        move |(cursor, remaining): (Option<RangeCursor>, u64)| {
            let store = store.clone();
            let query = query.clone();
            async move {
                let Some(cursor) = cursor else {
                    return Ok::<_, ApiError>(None);
                };
                let page = store
                    .range_page(&query, Some(&cursor), page_size(remaining))
                    .await?;
                let remaining = remaining - page.docs.len() as u64;
                let next = page.next.filter(|_| remaining > 0);
                let bytes = if page.docs.is_empty() {
                    Bytes::new()
                } else {
                    chunk(b",", &page.docs).freeze()
                };
                Ok(Some((bytes, (next, remaining))))
            }
        },
    )
    .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
    let body = futures::stream::once(async move { Ok(head) })
        .chain(rest)
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]"))
        }));
    Ok(json_response(Body::from_stream(body)))
}

/// `lead` then the docs joined by commas.
fn chunk(lead: &[u8], docs: &[Doc]) -> BytesMut {
    let size = docs.iter().map(|d| d.as_str().len() + 1).sum::<usize>() + 2;
    let mut buf = BytesMut::with_capacity(size);
    buf.extend_from_slice(lead);
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(doc.as_str().as_bytes());
    }
    buf
}

/// The docs as one JSON array.
fn json_array(docs: &[Doc]) -> Bytes {
    let mut buf = chunk(b"[", docs);
    buf.extend_from_slice(b"]");
    buf.freeze()
}

async fn count(State(state): State<AppState>) -> Result<axum::Json<u64>, ApiError> {
    Ok(axum::Json(state.store.count().await?))
}

async fn last(State(state): State<AppState>) -> Result<Response, ApiError> {
    let doc = state
        .store
        .last()
        .await?
        .ok_or_else(|| ApiError::NotFound("no blobs stored yet".into()))?;
    Ok(json_response(doc.as_str().to_string()))
}

async fn stream(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Response, ApiError> {
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

async fn stats(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(serde_json::json!({
        "backend": state.config.backend.name(),
        "epoch": &*state.hub.epoch(),
        "count": state.store.count().await?,
        "used_bytes": state.store.used_bytes(),
        "connections": state.registry.connections(),
        "subscribers": state.registry.subscribers(),
        "refused_connections": state.registry.refused(),
        "closed_too_slow": state.registry.closed_too_slow(),
        "catch_ups": state.hub.catch_ups(),
    })))
}

async fn smash(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Params,
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
