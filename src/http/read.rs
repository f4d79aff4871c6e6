//! The read routes: a range of blobs (or one by `?id=`), the count, the last.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use super::answer::{chunk, json_array, json_response};
use super::params::{GET_PARAMS, only, range_query};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{BlobStore, RangeCursor, RangeQuery};

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
    range(state.store.clone(), range_query(&params)?).await
}

/// A range as one JSON array, streamed page by page.
async fn range(store: Arc<dyn BlobStore>, query: RangeQuery) -> Result<Response, ApiError> {
    // The first page is read before answering, so that a failing store is a
    // proper status; later pages stream as the client reads.
    let mut remaining = query.limit.unwrap_or(u64::MAX);
    let page_size = |remaining: u64| remaining.min(RANGE_PAGE as u64) as usize;
    let first = if remaining == 0 {
        Default::default()
    } else {
        store.range_page(&query, None, page_size(remaining)).await?
    };
    remaining -= first.docs.len() as u64;
    let Some(next) = first.next.filter(|_| remaining > 0) else {
        return Ok(json_response(json_array(&first.docs)));
    };
    let head = chunk(b"[", &first.docs).freeze();
    /// What the body sends next.
    enum Next {
        Page(RangeCursor, u64),
        Close,
        Done,
    }
    let rest = futures::stream::unfold(Next::Page(next, remaining), move |next| {
        let store = store.clone();
        let query = query.clone();
        async move {
            let (cursor, remaining) = match next {
                Next::Done => return None,
                Next::Close => {
                    return Some((Ok(Bytes::from_static(b"]")), Next::Done));
                }
                Next::Page(cursor, remaining) => (cursor, remaining),
            };
            let page = match store
                .range_page(&query, Some(&cursor), page_size(remaining))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    // The 200 is out, and an array has no room for an error:
                    // the body ends with an error instead, and nothing after
                    // it (no `]`), so the connection is cut before the final
                    // chunk. A client sees an unfinished body and an unclosed
                    // array, never a shorter array that looks whole.
                    tracing::warn!("cutting a range answer short: {e}");
                    return Some((Err(std::io::Error::other(e.to_string())), Next::Done));
                }
            };
            let remaining = remaining - page.docs.len() as u64;
            let bytes = if page.docs.is_empty() {
                Bytes::new()
            } else {
                chunk(b",", &page.docs).freeze()
            };
            let next = match page.next.filter(|_| remaining > 0) {
                Some(cursor) => Next::Page(cursor, remaining),
                None => Next::Close,
            };
            Some((Ok(bytes), next))
        }
    });
    let body = futures::stream::once(async move { Ok(head) }).chain(rest);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::blob::{Blob, Doc};
    use crate::store::{Page, StoreError};

    /// A store whose first page reads and whose second fails.
    struct FailsOnPageTwo;

    #[async_trait]
    impl BlobStore for FailsOnPageTwo {
        fn describe(&self) -> String {
            "fails on page two".into()
        }
        fn used_bytes(&self) -> u64 {
            0
        }
        async fn write(&self, blobs: Vec<Blob>) -> Vec<Result<(), StoreError>> {
            vec![Err(StoreError::Unavailable("read only".into())); blobs.len()]
        }
        async fn range_page(
            &self,
            _: &RangeQuery,
            after: Option<&RangeCursor>,
            _: usize,
        ) -> Result<Page, StoreError> {
            match after {
                None => Ok(Page {
                    docs: vec![Doc::from_stored(r#"{"_id":"a","timestamp":1}"#)],
                    next: Some(RangeCursor {
                        timestamp: 1,
                        id: "a".into(),
                    }),
                }),
                Some(_) => {
                    // Late enough for the first page to have gone out.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err(StoreError::Unavailable("the disk is gone".into()))
                }
            }
        }
        async fn get(&self, _: &str) -> Result<Option<Doc>, StoreError> {
            Ok(None)
        }
        async fn count(&self) -> Result<u64, StoreError> {
            Ok(1)
        }
        async fn begin_smash(
            &self,
            _: &RangeQuery,
        ) -> Result<Box<dyn crate::store::Smash>, StoreError> {
            Err(StoreError::Unavailable("no smash here".into()))
        }
    }

    /// Serves the range of [`FailsOnPageTwo`] on a loopback port.
    async fn serve() -> std::net::SocketAddr {
        let app = axum::Router::new().route(
            "/",
            get(|| range(Arc::new(FailsOnPageTwo), RangeQuery::default())),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_range_that_fails_after_its_first_page_is_cut_never_closed() {
        let addr = serve().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The server ends the connection: an end of file, or a reset.
        let mut raw = Vec::new();
        // The server ends the connection: an end of file, or a reset.
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
            .await
            .expect("the server ends the connection");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        assert!(text.contains(r#"[{"_id":"a","timestamp":1}"#), "{text}");
        // No `]` and no last chunk: nothing that reads as a whole answer.
        assert!(!text.contains(']'), "{text}");
        assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn an_http_client_sees_an_error_not_a_short_array() {
        let addr = serve().await;
        let http = crate::net::http_client_builder().build().unwrap();
        let res = http.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.text().await;
        assert!(body.is_err(), "a body that reads whole: {body:?}");
    }
}
