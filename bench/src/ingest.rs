//! Ingest load: acknowledged blobs per second over HTTP (one keep-alive
//! connection per client) or WebSocket (a window of pushes in flight per
//! socket), with request-to-answer latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use kpiggybank::sample::login_sequence;

use crate::client::{self, HttpConn};
use crate::process::CpuMeter;
use crate::report::{LoadResult, Progress, histogram};

/// Distinct sample blobs cycled through; enough variety for the store's
/// indexes, small enough to build in a blink.
pub const POOL: u64 = 1024;

/// First sample timestamp (the fixture's).
pub const BASE_TIMESTAMP: i64 = 1_333_046_104_322;

/// How long the WebSocket loop waits for outstanding acks after the last push.
const ACK_GRACE: Duration = Duration::from_secs(10);

/// Sign-in sample blobs, built once, so the load loop only concatenates.
/// Timestamps rise with the blob index, as real sign-ins arrive: cycling
/// through a few timestamps would scatter inserts over the store's
/// timestamp index and measure a workload nobody has.
pub struct Payload {
    /// Each sample's text after its `timestamp` member.
    rests: Vec<String>,
}

impl Payload {
    /// [`POOL`] login sequences.
    pub fn new() -> Payload {
        let prefix = format!("{{\"timestamp\":{BASE_TIMESTAMP},");
        Payload {
            rests: (0..POOL)
                .map(|n| {
                    let blob = login_sequence(BASE_TIMESTAMP, n);
                    blob.strip_prefix(&prefix)
                        .expect("samples start with their timestamp")
                        .to_string()
                })
                .collect(),
        }
    }

    /// The `i`th blob's JSON text: sample `i % POOL` at timestamp base + `i`.
    pub fn blob(&self, i: u64) -> String {
        let rest = &self.rests[(i % POOL) as usize];
        let mut out = String::with_capacity(rest.len() + 30);
        out.push_str("{\"timestamp\":");
        out.push_str(&(BASE_TIMESTAMP + i as i64).to_string());
        out.push(',');
        out.push_str(rest);
        out
    }

    /// Blobs `first..first+n` as one JSON value: the blob itself when `n` is 1,
    /// else a list.
    pub fn data(&self, first: u64, n: u64) -> String {
        if n == 1 {
            return self.blob(first);
        }
        let mut out = String::with_capacity(n as usize * 720 + 2);
        out.push('[');
        for j in 0..n {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&self.blob(first + j));
        }
        out.push(']');
        out
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::new()
    }
}

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

/// Request bytes for a JSON `POST` of `per_request` blobs to `path`,
/// assembled from the pre-built samples (copies, no serialization).
pub fn json_posts(
    addr: SocketAddr,
    path: &str,
    payload: Arc<Payload>,
    per_request: u64,
) -> BuildRequest {
    let path = path.to_string();
    Arc::new(move |i| {
        let body = payload.data(i * per_request, per_request);
        Bytes::from(client::post(
            addr,
            &path,
            "application/json",
            body.as_bytes(),
        ))
    })
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

/// Push frames of pool blobs: `{"type":"push","ref":i,"data":…}`.
pub fn push_frames(payload: Arc<Payload>, per_frame: u64) -> BuildFrame {
    Arc::new(move |i| {
        let data = payload.data(i * per_frame, per_frame);
        let mut frame = String::with_capacity(data.len() + 40);
        frame.push_str("{\"type\":\"push\",\"ref\":");
        frame.push_str(&i.to_string());
        frame.push_str(",\"data\":");
        frame.push_str(&data);
        frame.push('}');
        frame
    })
}

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

/// How blobs travel.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `POST /wsapi/interaction_data`, JSON body, one keep-alive connection per client.
    Http,
    /// Push frames on `/wsapi/ws`, a window of pushes in flight per socket.
    Ws,
}

/// `ingest` options.
#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    /// How blobs travel.
    #[arg(long, value_enum, default_value_t = Transport::Http)]
    pub transport: Transport,
    /// Concurrent clients (HTTP connections or WebSockets).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Blobs in all.
    #[arg(long, default_value_t = 100_000)]
    pub blobs: u64,
    /// Blobs per request or push frame (a JSON list when above 1).
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// WebSocket pushes in flight per socket.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
}

/// Share of the blobs sent first and not counted, so that connection setup,
/// file creation and allocator growth do not weigh on the figure.
const WARM_UP_SHARE: u64 = 20;

/// Blobs one-POST-per-blob CouchDB writes at most: at a few hundred per
/// second it would otherwise dominate the run.
const COUCH_ONE_PER_POST_CAP: u64 = 5_000;

/// Target: durable HTTP ingest at least half the bare handler's rate.
pub const TARGET_HTTP_VS_BARE: f64 = 0.5;
/// Target: WebSocket push on one socket, dummy store, blobs/s.
pub const TARGET_WS_DUMMY: f64 = 100_000.0;
/// Target: WebSocket push on one socket, embedded store, blobs/s.
pub const TARGET_WS_EMBEDDED: f64 = 50_000.0;
/// Target: CouchDB backend against direct `_bulk_docs`.
pub const TARGET_COUCH_VS_BULK: f64 = 0.8;
/// Target: CouchDB backend against one POST per blob.
pub const TARGET_COUCH_VS_ONE_PER_POST: f64 = 10.0;

impl IngestArgs {
    fn label(&self) -> String {
        let transport = match self.transport {
            Transport::Http => "http",
            Transport::Ws => "ws",
        };
        format!(
            "ingest {transport} c={} b={} n={}",
            self.connections, self.batch, self.blobs
        )
    }
}

/// Warms up, then measures one load against `addr`.
async fn measure(
    addr: SocketAddr,
    args: &IngestArgs,
    payload: &Arc<Payload>,
    max_time: Duration,
    who: &str,
    pid: Option<u32>,
) -> LoadResult {
    let batch = args.batch.max(1);
    let requests = args.blobs.div_ceil(batch);
    let label = format!("{} {who}", args.label());
    match args.transport {
        Transport::Http => {
            let build = json_posts(addr, "/wsapi/interaction_data", payload.clone(), batch);
            let mut load = HttpLoad {
                addr,
                connections: args.connections,
                requests: (requests / WARM_UP_SHARE).max(1),
                blobs_per_request: batch,
                max_time,
            };
            let warm = crate::report::ProgressLine::start(
                &format!("{label} warm-up"),
                load.requests * batch,
                "blobs",
            );
            http(&load, build.clone(), warm.counters()).await;
            drop(warm);
            load.requests = requests;
            let line = crate::report::ProgressLine::start(&label, requests * batch, "blobs");
            let cpu = CpuMeter::start(pid);
            let mut r = http(&load, build, line.counters()).await;
            r.cpu = cpu.text();
            r
        }
        Transport::Ws => {
            let build = push_frames(payload.clone(), batch);
            let mut load = WsLoad {
                addr,
                path: "/wsapi/ws".into(),
                connections: args.connections,
                frames: (requests / WARM_UP_SHARE).max(1),
                blobs_per_frame: batch,
                window: args.window,
                max_time,
            };
            let warm = crate::report::ProgressLine::start(
                &format!("{label} warm-up"),
                load.frames * batch,
                "blobs",
            );
            ws(&load, build.clone(), warm.counters()).await;
            drop(warm);
            load.frames = requests;
            let line = crate::report::ProgressLine::start(&label, requests * batch, "blobs");
            let cpu = CpuMeter::start(pid);
            let mut r = ws(&load, build, line.counters()).await;
            r.cpu = cpu.text();
            r
        }
    }
}

fn detail(r: &LoadResult) -> String {
    let mut text = format!(
        "latency p50/p99/max {}, errors {}",
        r.latency_text(),
        r.errors,
    );
    if !r.cpu.is_empty() {
        text.push_str(&format!(", {}", r.cpu));
    }
    if let Some(e) = &r.first_error {
        let e: String = e.chars().take(120).collect();
        text.push_str(&format!(" (first: {e})"));
    }
    text
}

/// The `ingest` scenario: the bare baseline (and, for CouchDB, direct
/// writes), then the server, same load, same run.
pub async fn run(ctx: &mut crate::Ctx, args: &IngestArgs) -> Result<(), String> {
    use crate::Backend;
    use crate::report::{Row, Target};
    let payload = Arc::new(Payload::new());
    let label = args.label();
    let max_time = ctx.max_time();
    let backend = ctx.common.backend;
    let metric = "acked blobs/s";

    let mut bare = None;
    let mut couch_rates = None;
    if !ctx.common.no_baseline {
        match crate::baseline::start_bare() {
            Ok(proc) => {
                let r = measure(
                    proc.addr,
                    args,
                    &payload,
                    max_time,
                    "bare",
                    Some(proc.pid()),
                )
                .await;
                proc.stop();
                ctx.rows
                    .push(Row::new(&label, "bare", metric, r.rate()).detail(detail(&r)));
                bare = Some(r.rate());
            }
            Err(e) => ctx.notes.push(format!("bare baseline not measured: {e}")),
        }
        if backend == Backend::Couchdb && args.transport == Transport::Http {
            couch_rates = Some(couch_direct(ctx, args, &payload).await?);
        }
    }

    let server = ctx.server(&[]).await?;
    let r = measure(
        server.addr,
        args,
        &payload,
        max_time,
        &server.backend,
        server.pid,
    )
    .await;
    let name = server.backend.clone();
    server.stop();
    let mut row = Row::new(&label, &name, metric, r.rate()).detail(detail(&r));
    if let Some(b) = bare {
        row = row.baseline("bare", b);
    }
    match (args.transport, backend) {
        (Transport::Http, Backend::Embedded) => {
            row = row.target(Target::RatioAtLeast(TARGET_HTTP_VS_BARE))
        }
        (Transport::Ws, Backend::Dummy) if args.connections == 1 => {
            row = row.target(Target::AtLeast(TARGET_WS_DUMMY))
        }
        (Transport::Ws, Backend::Embedded) if args.connections == 1 => {
            row = row.target(Target::AtLeast(TARGET_WS_EMBEDDED))
        }
        _ => {}
    }
    ctx.rows.push(row);
    if let Some((one, bulk)) = couch_rates {
        ctx.rows.push(
            Row::new(&label, &name, metric, r.rate())
                .baseline("couch _bulk_docs x100", bulk)
                .target(Target::RatioAtLeast(TARGET_COUCH_VS_BULK)),
        );
        ctx.rows.push(
            Row::new(&label, &name, metric, r.rate())
                .baseline("couch 1 POST/blob", one)
                .target(Target::RatioAtLeast(TARGET_COUCH_VS_ONE_PER_POST)),
        );
    }
    ctx.rows
        .push(Row::new(&label, &name, "errors", r.errors as f64).target(Target::AtMost(0.0)));
    Ok(())
}

/// The same blobs written straight to CouchDB, one POST each and in
/// `_bulk_docs` of 100; returns both rates.
async fn couch_direct(
    ctx: &mut crate::Ctx,
    args: &IngestArgs,
    payload: &Arc<Payload>,
) -> Result<(f64, f64), String> {
    use crate::report::{ProgressLine, Row};
    const BULK: u64 = 100;
    let couch = ctx.couch().await?;
    let label = args.label();
    let db = format!("bench_direct_{}", std::process::id());
    couch.create_db(&db).await?;

    let blobs = args.blobs.min(COUCH_ONE_PER_POST_CAP);
    let load = HttpLoad {
        addr: couch.addr,
        connections: args.connections,
        requests: blobs,
        blobs_per_request: 1,
        max_time: ctx.max_time(),
    };
    let line = ProgressLine::start(&format!("{label} couch 1 POST/blob"), blobs, "blobs");
    let one = http(
        &load,
        crate::baseline::couch_one_per_post(&couch, &db, payload.clone()),
        line.counters(),
    )
    .await;
    drop(line);
    ctx.rows.push(
        Row::new(
            &format!("{label} (capped n={blobs})"),
            "couch-direct 1 POST/blob",
            "acked blobs/s",
            one.rate(),
        )
        .detail(detail(&one)),
    );

    let load = HttpLoad {
        requests: args.blobs.div_ceil(BULK),
        blobs_per_request: BULK,
        ..load
    };
    let line = ProgressLine::start(
        &format!("{label} couch _bulk_docs"),
        load.requests * BULK,
        "blobs",
    );
    let bulk = http(
        &load,
        crate::baseline::couch_bulk(&couch, &db, payload.clone(), BULK),
        line.counters(),
    )
    .await;
    drop(line);
    ctx.rows.push(
        Row::new(
            &label,
            "couch-direct _bulk_docs x100",
            "acked blobs/s",
            bulk.rate(),
        )
        .detail(detail(&bulk)),
    );
    Ok((one.rate(), bulk.rate()))
}
