//! KPIs computed by the server: a day holding a million sign-ins, then its
//! rollup by hour, against reading blobs the way a dashboard had to before
//! (the old range explorer's 50,000-blob download).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use kpiggybank::sample::login_sequence;

use crate::client::{self, HttpConn};
use crate::load::{self, HttpLoad};
use crate::report::{ProgressLine, Row, Target};

/// Midnight of a day in 2012, ms: old enough that the live rollup ignores it.
const DAY: i64 = 1_333_065_600_000;

/// A day in ms.
const DAY_MS: i64 = 86_400_000;

/// Blobs the old range explorer downloaded at most to chart a window.
const OLD_EXPLORER_CAP: u64 = 50_000;

/// The target: a day's rollup answers within this many seconds.
pub const TARGET_SECONDS: f64 = 1.0;

/// Rollup reads timed; the median is reported.
const READS: usize = 5;

/// `rollup` options.
#[derive(clap::Args, Debug, Clone)]
pub struct RollupArgs {
    /// Sign-ins spread over the day.
    #[arg(long, default_value_t = 1_000_000)]
    pub blobs: u64,
    /// Sign-ins per POST while filling.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Concurrent clients while filling.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
}

/// One timed GET; the answer's JSON.
async fn timed_get(
    conn: &mut HttpConn,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(Duration, Value), String> {
    let started = Instant::now();
    let answer = conn
        .send(&client::get(addr, path))
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let took = started.elapsed();
    if answer.status != 200 {
        return Err(format!("GET {path} answered {}", answer.status));
    }
    let json = serde_json::from_slice(&answer.body).map_err(|e| format!("GET {path}: {e}"))?;
    Ok((took, json))
}

/// Fills a day, then times its rollup and the old way of charting it.
pub async fn run(ctx: &mut crate::ctx::Ctx, args: &RollupArgs) -> Result<(), String> {
    let server = ctx
        .server(&[("MAX_BODY_BYTES", (16 << 20).to_string())])
        .await?;
    let addr = server.addr;
    let (n, batch) = (args.blobs, args.batch.max(1));
    let step = (DAY_MS / n.max(1) as i64).max(1);
    let requests = n.div_ceil(batch);
    let build = Arc::new(move |r: u64| {
        let first = r * batch;
        let mut body = String::from("[");
        for i in first..(first + batch).min(n) {
            if i > first {
                body.push(',');
            }
            body.push_str(&login_sequence(DAY + i as i64 * step, i));
        }
        body.push(']');
        Bytes::from(client::post(
            addr,
            "/wsapi/interaction_data",
            "application/json",
            body.as_bytes(),
        ))
    });
    let label = format!("rollup day n={n}");
    let line = ProgressLine::start(&label, n, "sign-ins");
    let load = HttpLoad {
        addr,
        connections: args.clients,
        requests,
        blobs_per_request: batch,
        max_time: ctx.max_time(),
    };
    let stored = load::http(&load, build, line.counters()).await;
    drop(line);
    let name = server.backend.clone();

    let mut conn = HttpConn::connect(addr).await.map_err(|e| e.to_string())?;
    let day = format!(
        "/wsapi/interaction_data/stats?start={DAY}&end={}&bucket=1h",
        DAY + DAY_MS - 1
    );
    let mut times = Vec::new();
    let mut counted = 0;
    for _ in 0..READS {
        let (took, json) = timed_get(&mut conn, addr, &day).await?;
        counted = json["total"]["count"].as_u64().unwrap_or(0);
        times.push(took);
    }
    times.sort();
    let rollup = times[READS / 2];
    let minutes = format!(
        "/wsapi/interaction_data/stats?start={DAY}&end={}&bucket=1m",
        DAY + DAY_MS - 1
    );
    let (by_minute, _) = timed_get(&mut conn, addr, &minutes).await?;
    let old = format!(
        "/wsapi/interaction_data?start={DAY}&end={}&limit={OLD_EXPLORER_CAP}",
        DAY + DAY_MS - 1
    );
    let (download, docs) = timed_get(&mut conn, addr, &old).await?;
    let downloaded = docs.as_array().map_or(0, |d| d.len());
    server.stop();

    ctx.rows.push(
        Row::new(&label, &name, "stored/s (with rollups)", stored.rate())
            .detail(format!("errors {}", stored.errors)),
    );
    ctx.rows.push(
        Row::new(&label, &name, "day rollup by hour, s", rollup.as_secs_f64())
            .detail(format!(
                "median of {READS}; {counted} counted; by minute {:.0} ms",
                by_minute.as_secs_f64() * 1e3
            ))
            .target(Target::AtMost(TARGET_SECONDS)),
    );
    ctx.rows.push(
        Row::new(
            &label,
            &name,
            "rollup speed vs old download",
            download.as_secs_f64() / rollup.as_secs_f64().max(1e-9),
        )
        .detail(format!(
            "{downloaded} blobs downloaded in {:.0} ms for a chart of at most {OLD_EXPLORER_CAP} of {n}",
            download.as_secs_f64() * 1e3
        )),
    );
    ctx.rows.push(
        Row::new(
            &label,
            &name,
            "blobs missing from the rollup",
            n.saturating_sub(counted) as f64,
        )
        .target(Target::AtMost(0.0)),
    );
    Ok(())
}
