//! The read routes: a range of blobs (or one by `?id=`), the count, the last.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use super::answer::{chunk, json_array, json_response};
use super::params::{GET_PARAMS, only, range_query};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::RangeCursor;

/// Blobs read from the store per chunk of a range answer; large ranges
/// stream page by page instead of being held in memory.
pub const RANGE_PAGE: usize = 1000;

/// `GET /wsapi/interaction_data`: a range, oldest first, or `?id=`.
pub async fn get_data(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&params, GET_PARAMS)?;
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

/// `GET …/count`: how many blobs are stored.
pub async fn count(State(state): State<AppState>) -> Result<axum::Json<u64>, ApiError> {
    Ok(axum::Json(state.store.count().await?))
}

/// `GET …/last`: the blob with the greatest timestamp.
pub async fn last(State(state): State<AppState>) -> Result<Response, ApiError> {
    let doc = state
        .store
        .last()
        .await?
        .ok_or_else(|| ApiError::NotFound("no blobs stored yet".into()))?;
    Ok(json_response(doc.as_str().to_string()))
}
