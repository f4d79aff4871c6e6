//! The original's scenario: N login sequences thrown by C concurrent
//! clients (form posts, one blob each, as the Node.js producers sent them),
//! then all retrieved with one range read.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use kpiggybank::sample::login_sequence;

use crate::client::{self, HttpConn};
use crate::load::{self, HttpLoad};
use crate::report::{ProgressLine, Row, Target};

/// The original's bar: login sequences stored and retrieved per second.
pub const ORIGINAL_BAR: f64 = 200.0;

/// The target: this many times the original's bar.
pub const TARGET_FACTOR: f64 = 100.0;

/// `logins` options.
#[derive(clap::Args, Debug, Clone)]
pub struct LoginsArgs {
    /// Login sequences to store and retrieve.
    #[arg(long, default_value_t = 20_000)]
    pub sequences: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

/// Runs the scenario against a fresh server.
pub async fn run(ctx: &mut crate::ctx::Ctx, args: &LoginsArgs) -> Result<(), String> {
    let server = ctx.server(&[]).await?;
    let addr = server.addr;
    let n = args.sequences;
    // A timestamp window of our own, so the range read returns exactly ours
    // even on a server given by --url.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let requests: Arc<Vec<Bytes>> = Arc::new(
        (0..n)
            .map(|i| {
                let blob = login_sequence(base + i as i64, i);
                let body: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("data", &blob)
                    .finish();
                Bytes::from(client::post(
                    addr,
                    "/wsapi/interaction_data",
                    "application/x-www-form-urlencoded",
                    body.as_bytes(),
                ))
            })
            .collect(),
    );
    let load = HttpLoad {
        addr,
        connections: args.clients,
        requests: n,
        blobs_per_request: 1,
        max_time: ctx.max_time(),
    };
    let label = format!("logins n={n} c={}", args.clients);
    let line = ProgressLine::start(&label, n, "sign-ins");
    let stored = load::http(
        &load,
        Arc::new(move |i| requests[i as usize].clone()),
        line.counters(),
    )
    .await;
    drop(line);

    let started = Instant::now();
    let path = format!(
        "/wsapi/interaction_data?start={base}&end={}",
        base + n as i64 - 1
    );
    let read = async {
        let mut conn = HttpConn::connect(addr).await.map_err(|e| e.to_string())?;
        let a = conn
            .send(&client::get(addr, &path))
            .await
            .map_err(|e| e.to_string())?;
        if a.status != 200 {
            return Err(format!("GET {path} answered {}", a.status));
        }
        let docs: Vec<&RawValue> = serde_json::from_slice(&a.body).map_err(|e| e.to_string())?;
        Ok::<u64, String>(docs.len() as u64)
    };
    let retrieved = tokio::time::timeout(ctx.max_time(), read)
        .await
        .map_err(|_| "the range read did not finish in time".to_string())??;
    let read_time = started.elapsed();
    let name = server.backend.clone();
    server.stop();

    let total = stored.elapsed + read_time;
    let both = retrieved.min(stored.ok_blobs) as f64 / total.as_secs_f64().max(1e-9);
    ctx.rows.push(
        Row::new(&label, &name, "stored/s", stored.rate()).detail(format!(
            "latency p50/p99/max {}, errors {}",
            stored.latency_text(),
            stored.errors
        )),
    );
    ctx.rows.push(
        Row::new(
            &label,
            &name,
            "retrieved/s",
            retrieved as f64 / read_time.as_secs_f64().max(1e-9),
        )
        .detail(format!(
            "{retrieved} in one range read, {:.0} ms",
            read_time.as_secs_f64() * 1000.0
        )),
    );
    ctx.rows.push(
        Row::new(&label, &name, "stored+retrieved/s", both)
            .detail(format!("{:.2} s in all", total.as_secs_f64()))
            .baseline("original's bar (fixed)", ORIGINAL_BAR)
            .target(Target::AtLeast(ORIGINAL_BAR * TARGET_FACTOR)),
    );
    ctx.rows.push(
        Row::new(
            &label,
            &name,
            "missing after read-back",
            (n - retrieved.min(n)) as f64 + stored.errors as f64,
        )
        .target(Target::AtMost(0.0)),
    );
    Ok(())
}
