//! The Rust client, mirroring the original JavaScript API: `save_data`,
//! `fetch_range`, `count`, `last`, and `follow_changes`, a stream of changes
//! that reconnects by itself and resumes by `seq`; plus the KPIs the server
//! computes: `stats` over a window and `follow_stats`, the live rollup.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::Backoff;

/// First reconnect step, doubling up to [`MAX_BACKOFF`] (see [`Backoff`]).
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Changes buffered between the socket and a slow consumer; past it the
/// socket is not read and the server holds the rest.
const FOLLOW_BUFFER: usize = 1024;

/// What can go wrong talking to kpiggybank.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an answer.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's `error` message.
        message: String,
    },
    /// The change feed was refused (e.g. a `since` from another epoch).
    #[error("change feed error {code}: {message}")]
    Feed {
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
}

/// A range query, as in the original's `fetchRange(options)`.
#[derive(Debug, Clone, Default)]
pub struct RangeOptions {
    /// Smallest timestamp, inclusive.
    pub start: Option<i64>,
    /// Greatest timestamp, inclusive.
    pub end: Option<i64>,
    /// At most this many blobs.
    pub limit: Option<u64>,
    /// Newest first.
    pub descending: bool,
}

/// A window of KPIs, as in `GET /wsapi/interaction_data/stats`.
#[derive(Debug, Clone, Default)]
pub struct StatsOptions {
    /// Start, inclusive, ms since the epoch; `None`: the oldest blob.
    pub start: Option<i64>,
    /// End, inclusive, ms since the epoch; `None`: the newest blob.
    pub end: Option<i64>,
    /// The bucket width (`1s`, `10s`, `1m`, `1h`, `1d`); `None`: chosen from the window.
    pub bucket: Option<String>,
}

/// One change from the feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
    /// Where it sits in the feed; pass it back to resume.
    pub seq: Value,
    /// The blob's id.
    pub id: String,
    /// The blob.
    pub doc: Value,
}

/// Where `follow_changes` starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Follow {
    /// Changes from now on.
    Now,
    /// The last `n` blobs, then live.
    Last(u64),
    /// Every change after `seq` of store `epoch`.
    Since {
        /// The last seq seen.
        seq: Value,
        /// The store epoch it belongs to.
        epoch: String,
    },
}

/// A kpiggybank server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `http://host:port`.
    pub fn new(host: &str, port: u16) -> Client {
        Client::from_url(&format!("http://{host}:{port}"))
    }

    /// A client for a base URL such as `http://127.0.0.1:3000`.
    pub fn from_url(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http: crate::net::http_client_builder()
                .build()
                .expect("a reqwest client builds"),
        }
    }

    async fn check(res: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(ClientError::Server { status, message })
    }

    /// Stores one blob or a list (a JSON array); returns the stored ids once durable.
    pub async fn save_data(&self, blob: &Value) -> Result<Vec<String>, ClientError> {
        #[derive(Deserialize)]
        struct Ack {
            ids: Vec<String>,
        }
        let res = self
            .http
            .post(format!("{}/wsapi/interaction_data", self.base))
            .json(blob)
            .send()
            .await?;
        Ok(Client::check(res).await?.json::<Ack>().await?.ids)
    }

    /// The blobs in a timestamp range.
    pub async fn fetch_range(&self, options: &RangeOptions) -> Result<Vec<Value>, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(start) = options.start {
            query.push(("start", start.to_string()));
        }
        if let Some(end) = options.end {
            query.push(("end", end.to_string()));
        }
        if let Some(limit) = options.limit {
            query.push(("limit", limit.to_string()));
        }
        if options.descending {
            query.push(("descending", "true".into()));
        }
        let url = reqwest::Url::parse_with_params(
            &format!("{}/wsapi/interaction_data", self.base),
            &query,
        )
        .expect("base URL is valid");
        let res = self.http.get(url).send().await?;
        Ok(Client::check(res).await?.json().await?)
    }

    /// How many blobs are stored.
    pub async fn count(&self) -> Result<u64, ClientError> {
        let res = self
            .http
            .get(format!("{}/wsapi/interaction_data/count", self.base))
            .send()
            .await?;
        Ok(Client::check(res).await?.json().await?)
    }

    /// The blob with the greatest timestamp, `None` when there is none.
    pub async fn last(&self) -> Result<Option<Value>, ClientError> {
        let res = self
            .http
            .get(format!("{}/wsapi/interaction_data/last", self.base))
            .send()
            .await?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(Client::check(res).await?.json().await?))
    }

    /// The KPIs of a window, by bucket: the server's JSON answer
    /// (`total`, `buckets`, `bucket_ms`; see README.md).
    pub async fn stats(&self, options: &StatsOptions) -> Result<Value, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(start) = options.start {
            query.push(("start", start.to_string()));
        }
        if let Some(end) = options.end {
            query.push(("end", end.to_string()));
        }
        if let Some(bucket) = &options.bucket {
            query.push(("bucket", bucket.clone()));
        }
        let url = reqwest::Url::parse_with_params(
            &format!("{}/wsapi/interaction_data/stats", self.base),
            &query,
        )
        .expect("base URL is valid");
        let res = self.http.get(url).send().await?;
        Ok(Client::check(res).await?.json().await?)
    }

    /// Follows the node's live rollup: a `stats` frame per interval
    /// (`windows` of 10 s, 5 min and 1 h, `per_second` counts). It
    /// reconnects with backoff after any break; frames missed meanwhile
    /// are not replayed (each frame is whole on its own).
    pub fn follow_stats(&self) -> StatsFrames {
        let (tx, rx) = mpsc::channel(STATS_BUFFER);
        let task = tokio::spawn(follow_stats(
            self.http.clone(),
            format!("{}/wsapi/interaction_data/stats/stream", self.base),
            tx,
        ));
        StatsFrames { rx, task }
    }

    /// Follows the change feed over a WebSocket. The stream reconnects with
    /// backoff after any break and resumes after the last change it yielded,
    /// so it neither misses nor repeats one. It ends with an error only when
    /// the server refuses to resume (the store was replaced).
    pub fn follow_changes(&self, from: Follow) -> Changes {
        let ws_base = self.base.replacen("http", "ws", 1);
        let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
        let task = tokio::spawn(follow(ws_base, from, tx));
        Changes { rx, task }
    }
}

/// Live stats frames kept for a slow consumer; past it the stream is not read.
const STATS_BUFFER: usize = 16;

/// Longest stats line read; a frame with every breakdown full is far smaller.
const MAX_STATS_LINE: usize = 1024 * 1024;

/// The stream returned by [`Client::follow_stats`]; stops following when dropped.
pub struct StatsFrames {
    rx: mpsc::Receiver<Result<Value, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for StatsFrames {
    type Item = Result<Value, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for StatsFrames {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow_stats(
    http: reqwest::Client,
    url: String,
    tx: mpsc::Sender<Result<Value, ClientError>>,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        match http.get(&url).send().await.map_err(ClientError::from) {
            Ok(res) => match Client::check(res).await {
                Ok(res) => {
                    let mut body = res.bytes_stream();
                    let mut line = Vec::new();
                    while let Some(Ok(chunk)) = body.next().await {
                        for &byte in chunk.iter() {
                            if byte != b'\n' {
                                // A frame is a few KiB; a line past the cap is not ours.
                                if line.len() < MAX_STATS_LINE {
                                    line.push(byte);
                                }
                                continue;
                            }
                            let frame = serde_json::from_slice::<Value>(line.trim_ascii());
                            line.clear();
                            if let Ok(frame) = frame {
                                backoff.reset();
                                if tx.send(Ok(frame)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            },
            Err(e) => {
                if tx.send(Err(e)).await.is_err() {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The stream returned by [`Client::follow_changes`]; stops following when dropped.
pub struct Changes {
    rx: mpsc::Receiver<Result<Change, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Changes {
    type Item = Result<Change, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    seq: Value,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

async fn follow(ws_base: String, mut from: Follow, tx: mpsc::Sender<Result<Change, ClientError>>) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        let url = match &from {
            Follow::Now => format!("{ws_base}/wsapi/ws?subscribe"),
            Follow::Last(n) => format!("{ws_base}/wsapi/ws?last={n}"),
            Follow::Since { seq, epoch } => {
                let seq = match seq {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let url = reqwest::Url::parse_with_params(
                    &format!("{ws_base}/wsapi/ws"),
                    &[("since", seq.as_str()), ("epoch", epoch.as_str())],
                )
                .expect("valid URL");
                url.to_string()
            }
        };
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
            let (mut sink, mut stream) = socket.split();
            let mut epoch = match &from {
                Follow::Since { epoch, .. } => Some(epoch.clone()),
                _ => None,
            };
            while let Some(Ok(msg)) = stream.next().await {
                let text = match msg {
                    Message::Text(text) => text,
                    Message::Ping(data) => {
                        let _ = sink.send(Message::Pong(data)).await;
                        continue;
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                    continue;
                };
                match frame.kind.as_str() {
                    "subscribed" => {
                        backoff.reset();
                        epoch = frame.epoch.clone();
                        // Nothing seen yet: resume from where the feed stood
                        // (null: an empty store, or a replay is coming).
                        if let Some(epoch) = &epoch
                            && !matches!(from, Follow::Since { .. })
                            && (!frame.seq.is_null() || from == Follow::Now)
                        {
                            let seq = if frame.seq.is_null() {
                                Value::from(0)
                            } else {
                                frame.seq.clone()
                            };
                            from = Follow::Since {
                                seq,
                                epoch: epoch.clone(),
                            };
                        }
                    }
                    "change" => {
                        let Ok(change) = serde_json::from_str::<Change>(&text) else {
                            continue;
                        };
                        if let Some(epoch) = &epoch {
                            from = Follow::Since {
                                seq: change.seq.clone(),
                                epoch: epoch.clone(),
                            };
                        }
                        if tx.send(Ok(change)).await.is_err() {
                            return;
                        }
                    }
                    "error" => {
                        let code = frame.code.unwrap_or_default();
                        let message = frame.error.unwrap_or_default();
                        let fatal = code == "epoch_mismatch" || code == "bad_seq";
                        let _ = tx.send(Err(ClientError::Feed { code, message })).await;
                        if fatal {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
