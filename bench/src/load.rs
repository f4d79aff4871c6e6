//! The load loops: requests over keep-alive HTTP connections, or push frames
//! over WebSockets with a window in flight, counting what the server
//! acknowledges and how long each answer took.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, HttpConn};
use crate::report::{LoadResult, Progress, histogram};

/// How long the WebSocket loop waits for outstanding acks after the last push.
const ACK_GRACE: Duration = Duration::from_secs(10);

/// A request builder: request index → complete request bytes.
pub type BuildRequest = Arc<dyn Fn(u64) -> Bytes + Send + Sync>;

/// An HTTP load: `requests` requests of `blobs_per_request` blobs each over
/// `connections` keep-alive connections, stopped at `max_time` at the latest.
#[derive(Clone, Debug)]
pub struct HttpLoad {
    /// Where to send.
    pub addr: SocketAddr,
    /// Concurrent clients, one connection each.
    pub connections: usize,
    /// Requests in all.
    pub requests: u64,
    /// Blobs one successful request stores.
    pub blobs_per_request: u64,
    /// Longest the loop may run.
    pub max_time: Duration,
}

/// Runs an HTTP load; a 2xx answer counts its blobs as acknowledged.
pub async fn http(load: &HttpLoad, build: BuildRequest, progress: Arc<Progress>) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.max_time;
    let tasks: Vec<_> = (0..load.connections)
        .map(|_| {
            let (next, build, progress, load) =
                (next.clone(), build.clone(), progress.clone(), load.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut conn = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= load.requests || Instant::now() > deadline {
                        break;
                    }
                    if conn.is_none() {
                        match HttpConn::connect(load.addr).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                errors += 1;
                                progress.errors.fetch_add(1, Ordering::Relaxed);
                                first_error.get_or_insert(format!("connect: {e}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let request = build(i);
                    let sent = Instant::now();
                    let answer = conn.as_mut().expect("connected").send(&request).await;
                    match answer {
                        Ok(a) if (200..300).contains(&a.status) => {
                            hist.saturating_record(sent.elapsed().as_micros() as u64);
                            ok += load.blobs_per_request;
                            progress
                                .done
                                .fetch_add(load.blobs_per_request, Ordering::Relaxed);
                        }
                        Ok(a) => {
                            errors += 1;
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert_with(|| {
                                format!("{}: {}", a.status, String::from_utf8_lossy(&a.body))
                            });
                        }
                        Err(e) => {
                            errors += 1;
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert(e.to_string());
                            conn = None;
                        }
                    }
                }
                (ok, errors, hist, first_error)
            })
        })
        .collect();
    collect(start, tasks).await
}

/// One client's acknowledged blobs, errors, latencies and first error.
type ClientTally = (u64, u64, hdrhistogram::Histogram<u64>, Option<String>);

async fn collect(start: Instant, tasks: Vec<tokio::task::JoinHandle<ClientTally>>) -> LoadResult {
    let mut result = LoadResult {
        ok_blobs: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
        first_error: None,
        cpu: String::new(),
    };
    for task in tasks {
        match task.await {
            Ok((ok, errors, hist, first_error)) => {
                result.ok_blobs += ok;
                result.errors += errors;
                result.latency.add(&hist).expect("same histogram bounds");
                if result.first_error.is_none() {
                    result.first_error = first_error;
                }
            }
            Err(e) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert(format!("client task failed: {e}"));
            }
        }
    }
    result.elapsed = start.elapsed();
    result
}

/// A WebSocket push load: `frames` push frames of `blobs_per_frame` blobs
/// each, over `connections` sockets with up to `window` pushes in flight on each.
#[derive(Clone, Debug)]
pub struct WsLoad {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The WebSocket path.
    pub path: String,
    /// Sockets.
    pub connections: usize,
    /// Push frames in all.
    pub frames: u64,
    /// Blobs per push frame.
    pub blobs_per_frame: u64,
    /// Pushes in flight per socket; below the server's own cap (1024), so
    /// the server never stops reading and the window is ours to measure.
    pub window: usize,
    /// Longest the loop may push.
    pub max_time: Duration,
}

/// A push frame builder: frame index (also its `ref`) → frame text.
pub type BuildFrame = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// The fields of a server answer the loop reads (the rest is skipped).
#[derive(Deserialize)]
struct WsAnswer<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    error: Option<String>,
}

/// Runs a WebSocket push load; an `ack` counts the frame's blobs.
pub async fn ws(load: &WsLoad, build: BuildFrame, progress: Arc<Progress>) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.max_time;
    let tasks: Vec<_> = (0..load.connections)
        .map(|_| {
            let (next, build, progress, load) =
                (next.clone(), build.clone(), progress.clone(), load.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
                let mut ws = match client::ws_connect(load.addr, &load.path).await {
                    Ok(ws) => ws,
                    Err(e) => return (0, 1, hist, Some(format!("connect: {e}"))),
                };
                let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(load.window);
                let mut exhausted = false;
                loop {
                    let mut fed = false;
                    while !exhausted && in_flight.len() < load.window {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= load.frames || Instant::now() > deadline {
                            exhausted = true;
                            break;
                        }
                        let frame = build(i);
                        in_flight.insert(i, Instant::now());
                        if let Err(e) = ws.feed(Message::Text(frame.into())).await {
                            first_error.get_or_insert(format!("send: {e}"));
                            errors += in_flight.len() as u64;
                            return (ok, errors, hist, first_error);
                        }
                        fed = true;
                    }
                    if fed && let Err(e) = ws.flush().await {
                        first_error.get_or_insert(format!("send: {e}"));
                        errors += in_flight.len() as u64;
                        return (ok, errors, hist, first_error);
                    }
                    if exhausted && in_flight.is_empty() {
                        break;
                    }
                    let wait = (deadline + ACK_GRACE).saturating_duration_since(Instant::now());
                    let msg = match tokio::time::timeout(wait, ws.next()).await {
                        Ok(Some(Ok(msg))) => msg,
                        Ok(Some(Err(e))) => {
                            first_error.get_or_insert(format!("receive: {e}"));
                            errors += in_flight.len() as u64;
                            break;
                        }
                        Ok(None) => {
                            first_error.get_or_insert("the server closed the socket".into());
                            errors += in_flight.len() as u64;
                            break;
                        }
                        Err(_) => {
                            first_error.get_or_insert(format!(
                                "{} pushes unanswered after the grace period",
                                in_flight.len()
                            ));
                            errors += in_flight.len() as u64;
                            break;
                        }
                    };
                    let Message::Text(text) = msg else { continue };
                    let Ok(answer) = serde_json::from_str::<WsAnswer>(text.as_str()) else {
                        continue;
                    };
                    let Some(sent) = answer.reference.and_then(|r| in_flight.remove(&r)) else {
                        continue;
                    };
                    if answer.kind == "ack" {
                        hist.saturating_record(sent.elapsed().as_micros() as u64);
                        ok += load.blobs_per_frame;
                        progress
                            .done
                            .fetch_add(load.blobs_per_frame, Ordering::Relaxed);
                    } else {
                        errors += 1;
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| {
                            answer.error.unwrap_or_else(|| text.as_str().to_string())
                        });
                    }
                }
                let _ = ws.close(None).await;
                (ok, errors, hist, first_error)
            })
        })
        .collect();
    collect(start, tasks).await
}
