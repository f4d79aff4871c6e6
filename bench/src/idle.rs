//! Idle connections: how much server memory one open, silent WebSocket costs
//! (the RSS delta of the server process over N connections).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::process::rss_bytes;
use crate::report::{ProgressLine, Row, Target};

/// Target: server bytes per idle connection.
pub const TARGET_BYTES: f64 = 20.0 * 1024.0;

/// Connections opened at once.
const CONNECT_PARALLEL: usize = 64;

/// Time for the server to settle (tasks parked, buffers released) before
/// its memory is read; short for small runs, where there is little to settle.
fn settle(connections: usize) -> Duration {
    if connections >= 1000 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(300)
    }
}

/// `idle` options.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    /// Idle WebSocket connections to open.
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// Subscribe each connection to the (quiet) change feed, like an idle dashboard.
    #[arg(long)]
    pub subscribed: bool,
}

/// Opens the connections; the RSS delta per connection of `pid`.
async fn measure(
    addr: std::net::SocketAddr,
    pid: u32,
    args: &IdleArgs,
    who: &str,
) -> Result<(f64, u64), String> {
    let path = if args.subscribed {
        "/wsapi/ws?subscribe"
    } else {
        "/wsapi/ws"
    };
    // One connection first, so one-time costs (the upgrade path's code and
    // allocator arenas) are not charged to the N.
    let mut warm = client::ws_connect(addr, path)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(settle(args.connections)).await;
    let before = rss_bytes(pid).ok_or("cannot read the server's memory")?;
    let line = ProgressLine::start(
        &format!("idle {who}"),
        args.connections as u64,
        "connections",
    );
    let counters = line.counters();
    let mut conns: Vec<Ws> = Vec::with_capacity(args.connections);
    let mut pending = futures::stream::iter(0..args.connections)
        .map(|_| async move {
            let mut ws = client::ws_connect(addr, path)
                .await
                .map_err(|e| e.to_string())?;
            if path.contains("subscribe") {
                // Wait until the server has set the subscription up.
                match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(_)))) => {}
                    other => return Err(format!("no `subscribed` answer: {other:?}")),
                }
            }
            Ok::<Ws, String>(ws)
        })
        .buffer_unordered(CONNECT_PARALLEL);
    while let Some(ws) = pending.next().await {
        conns.push(ws?);
        counters.done.fetch_add(1, Ordering::Relaxed);
    }
    drop(pending);
    drop(line);
    tokio::time::sleep(settle(args.connections)).await;
    let after = rss_bytes(pid).ok_or("cannot read the server's memory")?;
    let per = after.saturating_sub(before) as f64 / args.connections.max(1) as f64;
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
    let _ = warm.close(None).await;
    Ok((per, after))
}

/// The `idle` scenario: the bare WebSocket handler, then the server.
pub async fn run(ctx: &mut crate::ctx::Ctx, args: &IdleArgs) -> Result<(), String> {
    let label = format!(
        "idle n={}{}",
        args.connections,
        if args.subscribed { " subscribed" } else { "" }
    );
    let metric = "server bytes/connection";
    let mut bare = None;
    if !ctx.common.no_baseline {
        match crate::baseline::start_bare() {
            Ok(proc) => {
                let r = measure(proc.addr, proc.pid(), args, "bare").await;
                proc.stop();
                let (per, rss) = r?;
                ctx.rows.push(
                    Row::new(&label, "bare", metric, per)
                        .detail(format!("server RSS {} KiB", rss / 1024)),
                );
                bare = Some(per);
            }
            Err(e) => ctx.notes.push(format!("bare baseline not measured: {e}")),
        }
    }
    let env = [("MAX_CONNECTIONS", (args.connections + 100).to_string())];
    let server = ctx.server(&env).await?;
    let Some(pid) = server.pid else {
        ctx.notes
            .push("idle: no --server-pid for the --url server, memory not measured".into());
        return Ok(());
    };
    let r = measure(server.addr, pid, args, &server.backend).await;
    let name = server.backend.clone();
    server.stop();
    let (per, rss) = r?;
    let mut row = Row::new(&label, &name, metric, per)
        .detail(format!("server RSS {} KiB", rss / 1024))
        .target(Target::AtMost(TARGET_BYTES));
    if let Some(b) = bare {
        row = row.baseline("bare", b);
    }
    ctx.rows.push(row);
    Ok(())
}
