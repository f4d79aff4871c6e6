//! `GET /wsapi/interaction_data/stream`: the change feed as a never-ending
//! response, one JSON change per line ending `\r\n`, empty lines as heartbeats.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio_util::sync::CancellationToken;

use super::params::{STREAM_PARAMS, only, param_i64};
use crate::batcher::WriteError;
use crate::error::ApiError;
use crate::hub::Subscription;
use crate::protocol::{self, Given};
use crate::sampler::Sampler;
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
    let follow = protocol::follow(
        param("since"),
        param("last"),
        param("epoch"),
        param("sample"),
    )?;
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
    let sampler = follow.sample.map(Sampler::new);
    let lines = change_lines(sub, sampler, heartbeat, state.shutdown.clone());
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

/// The body: changes and heartbeats until the subscription fails or the
/// server stops. The status went out with the headers, so either end is
/// told in a last line (`ApiError::stream_line`): a client that sees the
/// stream end without one knows the connection broke.
fn change_lines(
    sub: Subscription,
    sampler: Option<Sampler>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    futures::stream::unfold(Some((sub, ticker, sampler)), move |open| {
        let shutdown = shutdown.clone();
        async move {
            let (mut sub, mut ticker, mut sampler) = open?;
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => {
                    let why = ApiError::from(WriteError::ShuttingDown);
                    return Some((Ok(Bytes::from(why.stream_line())), None));
                }
                _ = ticker.tick() => Bytes::from_static(b"\r\n"),
                next = sub.next() => match next {
                    Ok(entries) => {
                        let live = !sub.delivering_from_store();
                        let mut buf = BytesMut::with_capacity(entries.iter().map(|e| e.frame.len() + 2).sum());
                        for entry in entries {
                            // As on the WebSocket: a sample of the live feed, a replay whole.
                            if live && sampler.as_mut().is_some_and(|s| !s.admit()) {
                                continue;
                            }
                            buf.extend_from_slice(&entry.frame);
                            buf.extend_from_slice(b"\r\n");
                        }
                        buf.freeze()
                    }
                    Err(e) => {
                        tracing::warn!("ending a change stream: {e}");
                        let why = ApiError::from(e);
                        return Some((Ok(Bytes::from(why.stream_line())), None));
                    }
                },
            };
            Some((Ok(chunk), Some((sub, ticker, sampler))))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use futures::StreamExt;

    use super::*;
    use crate::feed::{self, Change, ChangeFeed, FeedError, Seq, Start};
    use crate::hub::{Hub, RING_CAPACITY};

    /// A feed whose store fails every catch-up read.
    struct Broken;

    #[async_trait]
    impl ChangeFeed for Broken {
        fn epoch(&self) -> Arc<str> {
            "e".into()
        }
        fn order(&self, a: Option<&Seq>, b: &Seq) -> Option<std::cmp::Ordering> {
            feed::int_order(a, b)
        }
        async fn check_since(&self, _: &Seq) -> Result<(), FeedError> {
            Ok(())
        }
        async fn changes_since(&self, _: Option<&Seq>, _: usize) -> Result<Vec<Change>, FeedError> {
            Err(FeedError::Unavailable("the disk is gone".into()))
        }
        async fn replay_start(&self, _: usize) -> Result<Option<Seq>, FeedError> {
            Ok(None)
        }
    }

    /// A subscription from seq 0, whose first read is a catch-up: it fails
    /// after the headers would have gone out.
    async fn failing_subscription() -> Subscription {
        let (_tx, events) = feed::channel();
        let (hub, _pump) = Hub::start(
            Arc::new(Broken),
            events,
            Some(Seq::int(5)),
            RING_CAPACITY,
            Default::default(),
        );
        hub.subscribe(Start::Since(Seq::int(0)), None)
            .await
            .unwrap()
    }

    async fn body_of(lines: impl Stream<Item = Result<Bytes, std::io::Error>>) -> String {
        let chunks: Vec<_> = tokio::time::timeout(Duration::from_secs(10), lines.collect())
            .await
            .expect("the stream ends");
        let chunks: Vec<Bytes> = chunks.into_iter().map(Result::unwrap).collect();
        String::from_utf8(chunks.concat()).unwrap()
    }

    #[tokio::test]
    async fn a_subscription_that_fails_ends_the_stream_with_a_line_saying_why() {
        let sub = failing_subscription().await;
        let lines = change_lines(sub, None, Duration::from_secs(60), CancellationToken::new());
        let body = body_of(lines).await;
        let last = body.strip_suffix("\r\n").expect("a whole last line");
        let last: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(last["type"], "error");
        assert_eq!(last["code"], "store_unavailable");
        assert!(
            last["error"].as_str().unwrap().contains("the disk is gone"),
            "{last}"
        );
    }

    #[tokio::test]
    async fn a_stream_ended_by_shutdown_says_so_in_its_last_line() {
        let (_tx, events) = feed::channel();
        let (hub, _pump) = Hub::start(
            Arc::new(Broken),
            events,
            None,
            RING_CAPACITY,
            Default::default(),
        );
        let sub = hub.subscribe(Start::Now, None).await.unwrap();
        let shutdown = CancellationToken::new();
        let lines = change_lines(sub, None, Duration::from_millis(50), shutdown.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            shutdown.cancel();
        });
        let body = body_of(lines).await;
        let (heartbeats, last) = body.rsplit_once("\r\n{").expect("a last line");
        assert!(
            heartbeats.chars().all(|c| c == '\r' || c == '\n'),
            "{heartbeats:?}"
        );
        let last: serde_json::Value =
            serde_json::from_str(&format!("{{{}", last.strip_suffix("\r\n").unwrap())).unwrap();
        assert_eq!(last["code"], "shutting_down", "{last}");
    }
}
