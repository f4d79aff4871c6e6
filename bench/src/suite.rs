//! `all` and `smoke`: every scenario in one run, at the sizes of
//! docs/benchmarks.md or tiny.

use crate::ctx::Ctx;
use crate::options::Backend;
use crate::{fanout, idle, ingest, logins, rollup};

/// Every scenario, at full or smoke size. The backend of each is the one its
/// target names; `--backend couchdb` adds the CouchDB comparison.
pub async fn run(ctx: &mut Ctx, smoke: bool) -> Result<(), String> {
    let chosen = ctx.common.backend;
    let with = |ctx: &mut Ctx, b: Backend| ctx.common.backend = b;
    let n = |full: u64, small: u64| if smoke { small } else { full };

    with(ctx, Backend::Embedded);
    logins::run(
        ctx,
        &logins::LoginsArgs {
            sequences: n(20_000, 200),
            clients: n(32, 4) as usize,
        },
    )
    .await?;

    let http = |c: usize, blobs: u64, batch: u64| ingest::IngestArgs {
        transport: ingest::Transport::Http,
        connections: c,
        blobs,
        batch,
        window: 64,
    };
    ingest::run(ctx, &http(n(32, 4) as usize, n(100_000, 400), 1)).await?;

    let ws = |blobs: u64, batch: u64| ingest::IngestArgs {
        transport: ingest::Transport::Ws,
        connections: 1,
        blobs,
        batch,
        window: 256,
    };
    for backend in [Backend::Dummy, Backend::Embedded] {
        with(ctx, backend);
        ingest::run(ctx, &ws(n(300_000, 400), 1)).await?;
        ingest::run(ctx, &ws(n(1_000_000, 2_000), 100)).await?;
    }

    with(ctx, Backend::Embedded);
    fanout::run(
        ctx,
        &fanout::FanoutArgs {
            subscribers: n(1000, 5) as usize,
            rate: n(1000, 200),
            seconds: n(10, 1),
            tick_ms: 5,
        },
    )
    .await?;

    idle::run(
        ctx,
        &idle::IdleArgs {
            connections: n(5000, 20) as usize,
            subscribed: false,
        },
    )
    .await?;
    idle::run(
        ctx,
        &idle::IdleArgs {
            connections: n(5000, 20) as usize,
            subscribed: true,
        },
    )
    .await?;

    rollup::run(
        ctx,
        &rollup::RollupArgs {
            blobs: n(1_000_000, 2_000),
            batch: n(1000, 100),
            clients: 4,
        },
    )
    .await?;

    if chosen == Backend::Couchdb {
        with(ctx, Backend::Couchdb);
        // The CouchDB backend may not be merged yet: its baselines are still
        // worth having, so a server that does not start is a note, not a failure.
        // One blob per request (what one-POST-per-blob producers send), and
        // lists of 100 (the shape of the direct `_bulk_docs` baseline).
        for batch in [1, 100] {
            let args = http(n(32, 4) as usize, n(20_000, 400), batch);
            if let Err(e) = ingest::run(ctx, &args).await {
                ctx.notes.push(format!("CouchDB backend not measured: {e}"));
            }
        }
    }
    ctx.common.backend = chosen;
    Ok(())
}
