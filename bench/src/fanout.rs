//! Fan-out: one producer pushes at a fixed rate over a WebSocket, S
//! subscribers follow the change feed. Each blob carries its index and its
//! send time, so every subscriber can tell lost and duplicated changes and
//! the push-to-receive latency (one process, one monotonic clock).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::payload::Payload;
use crate::process::CpuMeter;
use crate::report::{Progress, ProgressLine, Row, Target, latency_text, small_histogram};

/// Target: deliveries per second to 1,000 subscribers.
pub const TARGET_DELIVERIES: f64 = 1_000_000.0;

/// Target: push-to-receive p99, milliseconds.
pub const TARGET_P99_MS: f64 = 50.0;

/// Subscribers connecting at once; more would only queue in the accept backlog.
const CONNECT_PARALLEL: usize = 64;

/// How long subscribers may take to receive the last changes after the
/// producer is done; past it, what is missing counts as lost.
const DRAIN: Duration = Duration::from_secs(10);

/// How long a subscriber may wait for its `subscribed` answer.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// `fanout` options.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// WebSocket subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Blobs pushed per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of pushing.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Milliseconds between push frames (each carries the blobs due).
    #[arg(long, default_value_t = 5)]
    pub tick_ms: u64,
}

/// What one fan-out run measured.
struct Outcome {
    deliveries: u64,
    span: Duration,
    latency: hdrhistogram::Histogram<u64>,
    lost: u64,
    duplicated: u64,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    cpu: String,
}

/// The answer fields the producer reads.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "ref")]
    reference: Option<u64>,
}

/// The number after `"key":` in `text`, looked up without a JSON parse:
/// a thousand subscribers read a million frames a second.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

async fn measure(
    addr: SocketAddr,
    pid: Option<u32>,
    args: &FanoutArgs,
    max_time: Duration,
    who: &str,
) -> Result<Outcome, String> {
    let planned = args.rate * args.seconds;
    // Connect and subscribe, a few at a time.
    let mut subs = Vec::with_capacity(args.subscribers);
    let connect = ProgressLine::start(
        &format!("fanout {who} subscribing"),
        args.subscribers as u64,
        "subscribers",
    );
    let counters = connect.counters();
    let mut pending = futures::stream::iter(0..args.subscribers)
        .map(|_| async move {
            let mut ws = client::ws_connect(addr, "/wsapi/ws?subscribe")
                .await
                .map_err(|e| e.to_string())?;
            let answer = tokio::time::timeout(SUBSCRIBE_TIMEOUT, ws.next()).await;
            match answer {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"subscribed\"") => Ok(ws),
                other => Err(format!("no `subscribed` answer: {other:?}")),
            }
        })
        .buffer_unordered(CONNECT_PARALLEL);
    while let Some(ws) = pending.next().await {
        subs.push(ws?);
        counters.done.fetch_add(1, Ordering::Relaxed);
    }
    drop(pending);
    drop(connect);

    let line = ProgressLine::start(
        &format!("fanout {who}"),
        planned * args.subscribers as u64,
        "deliveries",
    );
    let progress = line.counters();
    let clock = Instant::now();
    let cpu = CpuMeter::start(pid);
    // The producer's final count of acknowledged blobs, once it is done.
    let (done_tx, done_rx) = watch::channel(None::<(u64, Instant)>);
    let mut tasks = Vec::with_capacity(subs.len());
    for mut ws in subs {
        let (mut done_rx, progress) = (done_rx.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![0u64; (planned / 64 + 1) as usize];
            let (mut unique, mut dup, mut received) = (0u64, 0u64, 0u64);
            let mut hist = small_histogram();
            let mut last_rx = clock;
            loop {
                let finish = *done_rx.borrow_and_update();
                if let Some((acked, _)) = finish
                    && unique >= acked
                {
                    break;
                }
                let until = match finish {
                    Some((_, at)) => at + DRAIN,
                    None => clock + max_time + DRAIN,
                };
                let msg = tokio::select! {
                    m = tokio::time::timeout_at(until.into(), ws.next()) => m,
                    changed = done_rx.changed() => {
                        // The producer failed and is gone: nothing more to wait for.
                        if changed.is_err() { break }
                        continue
                    }
                };
                let text = match msg {
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                let text = text.as_str();
                if !text.starts_with("{\"type\":\"change\"") {
                    continue;
                }
                let (Some(k), Some(t)) = (field(text, "\"bench_k\":"), field(text, "\"bench_t\":"))
                else {
                    continue;
                };
                let now = clock.elapsed();
                last_rx = Instant::now();
                received += 1;
                progress.done.fetch_add(1, Ordering::Relaxed);
                hist.saturating_record((now.as_nanos() as u64).saturating_sub(t) / 1000);
                if k >= planned {
                    continue;
                }
                let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
                if seen[word] & bit != 0 {
                    dup += 1;
                } else {
                    seen[word] |= bit;
                    unique += 1;
                }
            }
            let _ = ws.close(None).await;
            (unique, dup, received, hist, last_rx)
        }));
    }

    let producer = produce(addr, args, planned, clock, max_time, progress).await;
    let (acked, errors, first_error) = producer?;
    let _ = done_tx.send(Some((acked, Instant::now())));

    let mut outcome = Outcome {
        deliveries: 0,
        span: Duration::ZERO,
        latency: small_histogram(),
        lost: 0,
        duplicated: 0,
        acked,
        errors,
        first_error,
        cpu: String::new(),
    };
    let mut last = clock;
    for task in tasks {
        let (unique, dup, received, hist, last_rx) = task.await.map_err(|e| e.to_string())?;
        outcome.deliveries += received;
        outcome.duplicated += dup;
        outcome.lost += acked.saturating_sub(unique);
        outcome.latency.add(&hist).expect("same histogram bounds");
        last = last.max(last_rx);
    }
    outcome.span = last - clock;
    outcome.cpu = cpu.text();
    drop(line);
    Ok(outcome)
}

/// Pushes `planned` blobs at `args.rate`; returns acknowledged blobs, errors
/// and the first error.
async fn produce(
    addr: SocketAddr,
    args: &FanoutArgs,
    planned: u64,
    clock: Instant,
    max_time: Duration,
    progress: Arc<Progress>,
) -> Result<(u64, u64, Option<String>), String> {
    let payload = Payload::new();
    let ws = client::ws_connect(addr, "/wsapi/ws")
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let sizes: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (sizes, acked, progress) = (sizes.clone(), acked.clone(), progress.clone());
        tokio::spawn(async move {
            let (mut errors, mut first_error) = (0u64, None::<String>);
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(answer) = serde_json::from_str::<Answer>(text.as_str()) else {
                    continue;
                };
                let Some(n) = answer.reference.and_then(|r| sizes.lock().remove(&r)) else {
                    continue;
                };
                if answer.kind == "ack" {
                    acked.fetch_add(n, Ordering::Relaxed);
                } else {
                    errors += n;
                    progress.errors.fetch_add(n, Ordering::Relaxed);
                    first_error.get_or_insert_with(|| text.as_str().to_string());
                }
                if sizes.lock().is_empty() && acked.load(Ordering::Relaxed) + errors >= planned {
                    break;
                }
            }
            (errors, first_error)
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    let (mut sent, mut reference) = (0u64, 0u64);
    let stop_at = clock + max_time.min(Duration::from_secs(args.seconds) * 2);
    while sent < planned && Instant::now() < stop_at {
        ticker.tick().await;
        let due = ((clock.elapsed().as_secs_f64() * args.rate as f64) as u64).min(planned);
        if due <= sent {
            continue;
        }
        let mut frame = format!("{{\"type\":\"push\",\"ref\":{reference},\"data\":[");
        let stamp = clock.elapsed().as_nanos() as u64;
        for k in sent..due {
            if k > sent {
                frame.push(',');
            }
            let blob = payload.blob(k);
            frame.push_str(&format!("{{\"bench_k\":{k},\"bench_t\":{stamp},"));
            frame.push_str(&blob[1..]);
        }
        frame.push_str("]}");
        sizes.lock().insert(reference, due - sent);
        sink.send(Message::Text(frame.into()))
            .await
            .map_err(|e| format!("push: {e}"))?;
        reference += 1;
        sent = due;
    }
    // Wait for the last acks, bounded.
    let (errors, first_error) = match tokio::time::timeout(DRAIN, reader).await {
        Ok(Ok(r)) => r,
        _ => (
            sizes.lock().values().sum(),
            Some("acks missing after the drain period".into()),
        ),
    };
    let _ = sink.close().await;
    Ok((acked.load(Ordering::Relaxed), errors, first_error))
}

/// The `fanout` scenario: the bare broadcast, then the server.
pub async fn run(ctx: &mut crate::ctx::Ctx, args: &FanoutArgs) -> Result<(), String> {
    let label = format!(
        "fanout s={} r={}/s t={}s",
        args.subscribers, args.rate, args.seconds
    );
    let full_size = args.subscribers >= 1000
        && (args.rate * args.subscribers as u64) as f64 >= TARGET_DELIVERIES;
    let mut bare = None;
    if !ctx.common.no_baseline {
        match crate::baseline::start_bare() {
            Ok(proc) => {
                let o = measure(proc.addr, Some(proc.pid()), args, ctx.max_time(), "bare").await;
                proc.stop();
                let o = o?;
                let rate = o.deliveries as f64 / o.span.as_secs_f64().max(1e-9);
                ctx.rows.push(
                    Row::new(&label, "bare", "deliveries/s", rate).detail(format!(
                        "latency p50/p99/max {}, lost {} duplicated {}",
                        latency_text(&o.latency),
                        o.lost,
                        o.duplicated
                    )),
                );
                bare = Some((rate, o.latency.value_at_quantile(0.99) as f64 / 1000.0));
            }
            Err(e) => ctx.notes.push(format!("bare baseline not measured: {e}")),
        }
    }
    let env = [("MAX_CONNECTIONS", (args.subscribers + 100).to_string())];
    let server = ctx.server(&env).await?;
    let o = measure(
        server.addr,
        server.pid,
        args,
        ctx.max_time(),
        &server.backend,
    )
    .await;
    let name = server.backend.clone();
    server.stop();
    let o = o?;
    let rate = o.deliveries as f64 / o.span.as_secs_f64().max(1e-9);
    let mut row = Row::new(&label, &name, "deliveries/s", rate).detail(format!(
        "{} deliveries of {} acked blobs in {:.1} s, push errors {}, {}{}",
        o.deliveries,
        o.acked,
        o.span.as_secs_f64(),
        o.errors,
        o.cpu,
        o.first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));
    let p99 = o.latency.value_at_quantile(0.99) as f64 / 1000.0;
    let mut lat = Row::new(&label, &name, "push-to-receive p99 ms", p99)
        .detail(format!("p50/p99/max {}", latency_text(&o.latency)));
    if let Some((b, bp99)) = bare {
        row = row.baseline("bare", b);
        lat = lat.baseline("bare", bp99);
    }
    if full_size {
        row = row.target(Target::AtLeast(TARGET_DELIVERIES));
        lat = lat.target(Target::AtMost(TARGET_P99_MS));
    }
    ctx.rows.push(row);
    ctx.rows.push(lat);
    ctx.rows
        .push(Row::new(&label, &name, "lost changes", o.lost as f64).target(Target::AtMost(0.0)));
    ctx.rows.push(
        Row::new(&label, &name, "duplicated changes", o.duplicated as f64)
            .target(Target::AtMost(0.0)),
    );
    Ok(())
}
