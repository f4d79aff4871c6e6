//! The ingest scenario: acknowledged blobs per second over HTTP (one
//! keep-alive connection per client) or WebSocket (a window of pushes in
//! flight per socket), with request-to-answer latency, against the bare
//! baseline and, for CouchDB, direct writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::client;
use crate::load::{BuildFrame, BuildRequest, HttpLoad, WsLoad, http, ws};
use crate::payload::Payload;
use crate::process::CpuMeter;
use crate::report::LoadResult;

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
pub async fn run(ctx: &mut crate::ctx::Ctx, args: &IngestArgs) -> Result<(), String> {
    use crate::options::Backend;
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
    ctx: &mut crate::ctx::Ctx,
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
