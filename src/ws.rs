//! The WebSocket endpoint `/wsapi/ws`: push blobs and follow the change feed
//! on one socket (the frames are described in [`crate::protocol`]).
//!
//! One task per connection runs a `select!` over: the answers of pushes in
//! flight, incoming frames, the subscription's next changes, server pings,
//! and shutdown. Nothing is queued per subscriber: changes are pulled from
//! the hub only when the socket has taken the previous batch, so a slow
//! reader falls behind in the hub (and is caught up from the store), never
//! in our memory.
//!
//! The upgrade is taken by hand rather than through axum's WebSocket, so
//! the connection's bytes pass through a [`close_gate`]: a client's Close
//! waits there until the pushes read before it are answered.

mod close_gate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use close_gate::{Gate, GatedIo};

use crate::config::Origins;
use crate::error::ApiError;
use crate::feed::{FeedError, Seq, Start};
use crate::http::params;
use crate::hub::{Entry, Subscription};
use crate::protocol::{self, ClientFrame, Follow, FrameError, Given};
use crate::registry::ConnGuard;
use crate::sampler::Sampler;
use crate::state::AppState;

/// Pushes a connection may have waiting for the store; past it we stop
/// reading the socket, so a flooding producer is slowed by TCP, not buffered.
pub const MAX_INFLIGHT_PUSHES: usize = 1024;

/// Bytes of pushes a connection may have waiting for the store.
pub const MAX_INFLIGHT_BYTES: usize = 4 * 1024 * 1024;

/// Read buffer per connection; small, so an idle connection costs little.
const READ_BUFFER: usize = 4 * 1024;

/// Frames are flushed once this much is buffered for one connection.
const WRITE_BUFFER: usize = 16 * 1024;

/// How long shutdown waits for a connection's pending acks.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// How long a close frame may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client's Close waits for the answers of the pushes read
/// before it; as long as shutdown waits, for the same reason: a store
/// slower than that is in trouble, and the client is waiting to be done.
const CLOSE_DRAIN: Duration = SHUTDOWN_DRAIN;

/// Close code for a peer that broke the framing rules (RFC 6455 §7.4.1).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// Close code for a text frame that is not UTF-8 (RFC 6455 §7.4.1).
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;

/// Room for a close frame's reason: 125 bytes of payload less the code.
const MAX_CLOSE_REASON: usize = 123;

/// Close code for a subscriber that stopped reading; the reason carries
/// `{"since":…,"epoch":…}` to resume from.
pub const CLOSE_TOO_SLOW: u16 = 4000;

/// The WebSocket route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/wsapi/ws", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    handshake: Handshake,
) -> Result<Response, ApiError> {
    check_origin(&state.config.allowed_origins, &headers)?;
    let auto = auto_subscribe(&params)?;
    // `?stats`: the live KPIs from the start, as `?subscribe` is for changes.
    let wants_stats = params.contains_key("stats");
    let guard = state
        .registry
        .admit(peer)
        .ok_or_else(|| ApiError::TooManyConnections(state.registry.max()))?;
    let max = state.config.max_body_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let Handshake { key, on_upgrade } = handshake;
    state.tracker.clone().spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%peer, "a WebSocket upgrade did not complete: {e}");
                return;
            }
        };
        let gate = Arc::new(Gate::default());
        let io = GatedIo::new(TokioIo::new(upgraded), gate.clone(), CLOSE_DRAIN);
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        serve(socket, gate, state, guard, auto, wants_stats).await;
    });
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .expect("base64 is a header value");
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("a valid response"))
}

/// A WebSocket opening handshake (RFC 6455 §4.2.1): the client's key, and
/// the connection, once hyper hands it over after our 101.
struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let has_token = |name: HeaderName, token: &str| {
            parts.headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        if !has_token(header::UPGRADE, "websocket") {
            return Err(ApiError::NotWebSocket(
                "the `Upgrade` header must name `websocket`",
            ));
        }
        if !has_token(header::CONNECTION, "upgrade") {
            return Err(ApiError::NotWebSocket(
                "the `Connection` header must include `upgrade`",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(ApiError::NotWebSocket(
                "the `Sec-WebSocket-Version` header must be 13",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(ApiError::NotWebSocket(
                "the `Sec-WebSocket-Key` header is missing",
            ))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(ApiError::NotWebSocket(
                "this connection cannot be upgraded: open the WebSocket over HTTP/1.1",
            ))?;
        Ok(Handshake { key, on_upgrade })
    }
}

/// Refuses browser pages from other sites (cross-site WebSocket hijacking).
/// Clients that send no `Origin` (websocat, programs) are not browsers.
fn check_origin(allowed: &Origins, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let same = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
    let ok = same
        || match allowed {
            Origins::SameOrigin => false,
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        };
    if ok {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed(origin.to_string()))
    }
}

/// What `/wsapi/ws` takes in its query string.
const WS_PARAMS: &[&str] = &["subscribe", "since", "last", "epoch", "sample", "stats"];

/// `?subscribe`, `?since=…&epoch=…` or `?last=N` subscribe at connect time,
/// so watching the feed with websocat takes one command.
fn auto_subscribe(params: &HashMap<String, String>) -> Result<Option<Follow>, ApiError> {
    // A misspelt `?subscrbe` would otherwise open a socket that never
    // subscribes, and say nothing.
    params::only(params, WS_PARAMS)?;
    let param = |name: &str| {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| Given::Param(v))
    };
    let (since, last, sample) = (param("since"), param("last"), param("sample"));
    if since.is_none() && last.is_none() && sample.is_none() && !params.contains_key("subscribe") {
        return Ok(None);
    }
    Ok(Some(protocol::follow(since, last, param("epoch"), sample)?))
}

/// Why a connection ended.
enum End {
    /// The peer went away.
    Gone,
    /// The peer closed; our answer to its Close is queued.
    Closed,
    /// The server is stopping.
    Shutdown,
    /// A frame over `MAX_BODY_BYTES`.
    TooBig,
    /// The peer broke the protocol: the close code and why.
    Broken(u16, String),
    /// No pong for two ping intervals.
    Silent,
    /// The socket took no frames for `WS_SEND_TIMEOUT_MS`.
    TooSlow,
}

type Socket = WebSocketStream<GatedIo<TokioIo<Upgraded>>>;
type Sink = SplitSink<Socket, Message>;

/// One connection's state.
struct Conn {
    sink: Sink,
    state: AppState,
    guard: ConnGuard,
    sub: Option<Subscription>,
    /// The change subscription's sample budget, when it asked for one.
    sampler: Option<Sampler>,
    /// The live KPI frames, while the client follows them.
    stats: Option<watch::Receiver<Option<Bytes>>>,
    /// The epoch last announced to the client.
    epoch: String,
    /// Seq of the last change handed to the socket: where to resume.
    last_sent: Option<Seq>,
    /// Answers of pushes waiting for the store, with their sizes.
    pending: FuturesUnordered<BoxFuture<'static, (String, usize)>>,
    pending_bytes: usize,
    /// Keeps the client's Close from tungstenite while answers are owed.
    gate: Arc<Gate>,
}

async fn serve(
    socket: Socket,
    gate: Arc<Gate>,
    state: AppState,
    guard: ConnGuard,
    auto: Option<Follow>,
    wants_stats: bool,
) {
    let (sink, mut stream) = socket.split();
    let send_timeout = state.config.ws_send_timeout;
    let ping_every = state.config.ws_ping_interval;
    let shutdown = state.shutdown.clone();
    let mut conn = Conn {
        sink,
        state,
        guard,
        sub: None,
        sampler: None,
        stats: None,
        epoch: String::new(),
        last_sent: None,
        pending: FuturesUnordered::new(),
        pending_bytes: 0,
        gate,
    };
    if let Some(follow) = auto
        && conn.subscribe(None, follow).await.is_err()
    {
        return;
    }
    if wants_stats && conn.subscribe_stats(None).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();

    let end = loop {
        let can_read =
            conn.pending.len() < MAX_INFLIGHT_PUSHES && conn.pending_bytes < MAX_INFLIGHT_BYTES;
        // A Close read now would leave these pushes unanswered: it waits.
        conn.gate.hold(!conn.pending.is_empty());
        tokio::select! {
            _ = shutdown.cancelled() => break End::Shutdown,
            Some((answer, bytes)) = conn.pending.next(), if !conn.pending.is_empty() => {
                conn.pending_bytes -= bytes;
                let mut answers = vec![answer];
                // A group commit answers many pushes at once: send every
                // answer that is ready with one flush.
                while let Some(Some((answer, bytes))) = conn.pending.next().now_or_never() {
                    conn.pending_bytes -= bytes;
                    answers.push(answer);
                }
                if conn.send_texts(answers, send_timeout).await.is_err() {
                    break End::TooSlow;
                }
            }
            incoming = stream.next(), if can_read => {
                last_heard = Instant::now();
                let outcome = match incoming {
                    None => break End::Gone,
                    Some(Ok(Message::Close(_))) => break End::Closed,
                    Some(Err(e)) => break read_error(e),
                    Some(Ok(Message::Text(text))) => conn.handle_text(&text).await,
                    Some(Ok(Message::Binary(_))) => {
                        let err = ApiError::from(FrameError::BadFrame("binary frames are not accepted: send JSON text frames".into()));
                        conn.send_text(err.ws_frame(None), send_timeout).await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                };
                if outcome.is_err() {
                    break End::TooSlow;
                }
            }
            batch = next_changes(&mut conn.sub) => match batch {
                Ok(entries) => {
                    let live = conn.sub.as_ref().is_some_and(|s| !s.delivering_from_store());
                    if conn.announce_new_epoch().await.is_err() {
                        break End::TooSlow;
                    }
                    if conn.send_changes(&entries, live, send_timeout).await.is_err() {
                        break End::TooSlow;
                    }
                }
                Err(e) => {
                    tracing::warn!("ending a subscription: {e}");
                    conn.sub = None;
                    conn.guard.info.subscribed.store(false, Ordering::Relaxed);
                    let _ = conn.send_text(ApiError::from(e).ws_frame(None), send_timeout).await;
                }
            },
            frame = next_stats(&mut conn.stats) => {
                if conn.send_stats(frame, send_timeout).await.is_err() {
                    break End::TooSlow;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    break End::Silent;
                }
                let ping = conn.sink.send(Message::Ping(Default::default()));
                if timed(&shutdown, send_timeout, ping).await.is_err() {
                    break End::TooSlow;
                }
            }
        }
    };
    // A send cut short by shutdown is a shutdown, not a slow reader.
    let end = match end {
        End::TooSlow if shutdown.is_cancelled() => End::Shutdown,
        other => other,
    };
    conn.finish(end, stream).await;
}

/// Waits for the subscription's next changes; never resolves without one.
async fn next_changes(sub: &mut Option<Subscription>) -> Result<Vec<Arc<Entry>>, FeedError> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for the next live KPI frame; never resolves while not following them.
async fn next_stats(stats: &mut Option<watch::Receiver<Option<Bytes>>>) -> Option<Bytes> {
    let Some(rx) = stats else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            // The hub is gone: the server is stopping.
            return std::future::pending().await;
        }
        if let Some(frame) = rx.borrow_and_update().clone() {
            return Some(frame);
        }
    }
}

/// How a failed read ends the connection. A peer that breaks the protocol
/// is told which rule, with the code RFC 6455 names, rather than seeing the
/// connection drop for no reason.
fn read_error(e: tokio_tungstenite::tungstenite::Error) -> End {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        Error::Capacity(_) => End::TooBig,
        Error::Utf8(_) => End::Broken(
            CLOSE_INVALID_PAYLOAD,
            "invalid UTF-8 in a text frame or close reason".into(),
        ),
        // The peer went away: there is no one to tell.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        Error::Protocol(p) => End::Broken(
            CLOSE_PROTOCOL_ERROR,
            close_reason(format!("protocol error: {p}")),
        ),
        _ => End::Gone,
    }
}

/// `reason` cut to fit a close frame, on a character boundary.
fn close_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Runs a send with a deadline; `Err` when it failed, took too long, or the
/// server started stopping (a blocked send must not hold up shutdown).
async fn timed<T, E>(
    shutdown: &CancellationToken,
    limit: Duration,
    send: impl Future<Output = Result<T, E>>,
) -> Result<T, ()> {
    tokio::select! {
        sent = tokio::time::timeout(limit, send) => match sent {
            Ok(Ok(v)) => Ok(v),
            _ => Err(()),
        },
        _ = shutdown.cancelled() => Err(()),
    }
}

impl Conn {
    async fn send_text(&mut self, text: String, limit: Duration) -> Result<(), ()> {
        timed(
            &self.state.shutdown,
            limit,
            self.sink.send(Message::Text(text.into())),
        )
        .await
    }

    /// Hands several text frames to the socket, then flushes once.
    async fn send_texts(&mut self, texts: Vec<String>, limit: Duration) -> Result<(), ()> {
        let shutdown = self.state.shutdown.clone();
        let deadline = Instant::now() + limit;
        for text in texts {
            let left = deadline.saturating_duration_since(Instant::now());
            timed(&shutdown, left, self.sink.feed(Message::Text(text.into()))).await?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        timed(&shutdown, left, self.sink.flush()).await
    }

    /// Hands a batch of changes to the socket, then flushes; the deadline
    /// covers the whole batch.
    async fn send_changes(
        &mut self,
        entries: &[Arc<Entry>],
        live: bool,
        limit: Duration,
    ) -> Result<(), ()> {
        let shutdown = self.state.shutdown.clone();
        let deadline = Instant::now() + limit;
        for entry in entries {
            // A sampled subscription skips what is over its budget; its
            // place in the feed still moves on. A replay (or a catch-up)
            // comes whole: it is what the subscriber asked to see.
            if live
                && let Some(sampler) = &mut self.sampler
                && !sampler.admit()
            {
                self.last_sent = Some(entry.seq.clone());
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // The ring's frames are built as UTF-8 (protocol::change_frame);
            // this check is a plain scan of an ASCII-heavy buffer.
            let text = Utf8Bytes::try_from(entry.frame.clone()).map_err(|_| ())?;
            let frame = Message::Text(text);
            timed(&shutdown, left, self.sink.feed(frame)).await?;
            self.last_sent = Some(entry.seq.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        timed(&shutdown, left, self.sink.flush()).await
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), ()> {
        let limit = self.state.config.ws_send_timeout;
        match protocol::parse(text) {
            Ok(ClientFrame::Push {
                reference,
                blobs: Ok(blobs),
            }) => {
                let reference = reference.map(|r| r.to_owned());
                let batcher = self.state.batcher.clone();
                let bytes = text.len();
                self.pending_bytes += bytes;
                self.pending.push(
                    async move {
                        let answer = match batcher.submit(blobs).await {
                            Ok(ids) => protocol::ack(reference.as_deref(), &ids),
                            Err(e) => ApiError::from(e).ws_frame(reference.as_deref()),
                        };
                        (answer, bytes)
                    }
                    .boxed(),
                );
                Ok(())
            }
            Ok(ClientFrame::Push {
                reference,
                blobs: Err(e),
            }) => {
                self.send_text(ApiError::from(e).ws_frame(reference), limit)
                    .await
            }
            Ok(ClientFrame::Subscribe { reference, follow }) => {
                let reference = reference.map(|r| r.to_owned());
                self.subscribe(reference.as_deref(), follow).await
            }
            Ok(ClientFrame::SubscribeStats { reference }) => {
                let reference = reference.map(|r| r.to_owned());
                self.subscribe_stats(reference.as_deref()).await
            }
            Ok(ClientFrame::UnsubscribeStats { reference }) => {
                self.stats = None;
                self.send_text(protocol::unsubscribed_stats(reference), limit)
                    .await
            }
            Ok(ClientFrame::Unsubscribe { reference }) => {
                self.sub = None;
                self.guard.info.subscribed.store(false, Ordering::Relaxed);
                self.send_text(protocol::unsubscribed(reference), limit)
                    .await
            }
            Err((reference, e)) => {
                self.send_text(ApiError::from(e).ws_frame(reference), limit)
                    .await
            }
        }
    }

    /// Tells the client when the store was replaced under its subscription:
    /// a new `subscribed` frame with the new epoch (seqs start over).
    async fn announce_new_epoch(&mut self) -> Result<(), ()> {
        let Some(sub) = &self.sub else { return Ok(()) };
        if sub.epoch() == self.epoch {
            return Ok(());
        }
        self.epoch = sub.epoch().to_string();
        let frame = protocol::subscribed(None, &self.epoch, None);
        self.send_text(frame, self.state.config.ws_send_timeout)
            .await
    }

    /// Follows the node's live KPIs and says so; a frame comes each second.
    async fn subscribe_stats(&mut self, reference: Option<&RawValue>) -> Result<(), ()> {
        self.stats = Some(self.state.hub.watch_stats());
        let frame = protocol::subscribed_stats(reference);
        self.send_text(frame, self.state.config.ws_send_timeout)
            .await
    }

    /// Sends one live KPI frame (shared bytes, built once for every watcher).
    async fn send_stats(&mut self, frame: Option<Bytes>, limit: Duration) -> Result<(), ()> {
        let Some(frame) = frame else { return Ok(()) };
        let text = Utf8Bytes::try_from(frame).map_err(|_| ())?;
        timed(
            &self.state.shutdown,
            limit,
            self.sink.send(Message::Text(text)),
        )
        .await
    }

    /// Starts (or replaces) this connection's subscription and says so.
    async fn subscribe(&mut self, reference: Option<&RawValue>, follow: Follow) -> Result<(), ()> {
        let limit = self.state.config.ws_send_timeout;
        let replay = matches!(follow.start, Start::Last(_));
        match self
            .state
            .hub
            .subscribe(follow.start, follow.epoch.as_deref())
            .await
        {
            Ok(sub) => {
                let seq = if replay {
                    None
                } else {
                    sub.resume_seq().cloned()
                };
                let frame = protocol::subscribed(reference, sub.epoch(), seq.as_ref());
                self.last_sent = seq;
                self.epoch = sub.epoch().to_string();
                self.sub = Some(sub);
                self.sampler = follow.sample.map(Sampler::new);
                self.guard.info.subscribed.store(true, Ordering::Relaxed);
                self.send_text(frame, limit).await
            }
            Err(e) => {
                self.send_text(ApiError::from(e).ws_frame(reference), limit)
                    .await
            }
        }
    }

    /// Says goodbye the way `end` calls for.
    async fn finish(mut self, end: End, mut stream: SplitStream<Socket>) {
        let close = |code: u16, reason: String| {
            Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
        };
        let frame = match end {
            End::Gone => return,
            End::Closed => {
                if !self.pending.is_empty() {
                    tracing::info!(
                        peer = %self.guard.info.peer,
                        "{} pushes still unanswered {CLOSE_DRAIN:?} after the client's close",
                        self.pending.len()
                    );
                }
                // Send the answer tungstenite queued for the client's Close,
                // completing the handshake; then the socket may go.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.flush()).await;
                return;
            }
            End::Silent => close(1011, "no answer to pings".into()),
            End::Broken(code, reason) => {
                tracing::debug!(peer = %self.guard.info.peer, "closing with {code}: {reason}");
                close(code, reason)
            }
            End::TooBig => close(
                1009,
                format!(
                    "frame larger than {} bytes (MAX_BODY_BYTES)",
                    self.state.config.max_body_bytes
                ),
            ),
            End::Shutdown => {
                // Every push read before the signal gets its answer.
                let drain = async {
                    while let Some((answer, _)) = self.pending.next().await {
                        if self.sink.send(Message::Text(answer.into())).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(SHUTDOWN_DRAIN, drain).await;
                close(1001, "server shutting down".into())
            }
            End::TooSlow => {
                // The epoch announced to this client, which `last_sent`
                // belongs to (the store's may have changed since).
                let epoch = self.epoch.clone();
                let seq = self.last_sent.as_ref().map(|s| s.0.clone());
                let reason = serde_json::json!({ "since": seq, "epoch": epoch }).to_string();
                let reason = if reason.len() <= MAX_CLOSE_REASON {
                    reason
                } else {
                    "too slow: resume from the last seq you received".into()
                };
                tracing::info!(peer = %self.guard.info.peer, "closing a subscriber that stopped reading");
                self.state.registry.record_too_slow();
                close(CLOSE_TOO_SLOW, reason)
            }
        };
        // Answered or given up: the peer's Close, our answer, may pass.
        self.gate.hold(false);
        let closing = async {
            if self.sink.send(frame).await.is_err() {
                return;
            }
            // Finish the closing handshake: read (and drop) what the peer
            // still sends until its close. Closing a socket with unread
            // data would reset it, and the peer could lose our close frame.
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}
