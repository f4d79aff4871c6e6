//! `kpiggybank-bench`: the load generator for kpiggybank (issue 6).
//!
//! Each scenario starts what it measures as separate processes on free
//! loopback ports (the kpiggybank server, the bare baseline server, a
//! pouchdb-server as the CouchDB), drives them from this process, stops
//! them by PID, and adds rows to one summary table. Baselines run in the
//! same invocation, so ratios hold on a noisy, shared machine.
//!
//! - [`logins`]: the original's scenario, N sign-ins by C clients, then all read back.
//! - [`ingest`]: acknowledged blobs/s and latency over HTTP or WebSocket.
//! - [`fanout`]: one producer, S subscribers: deliveries/s, latency, lost, duplicated.
//! - [`idle`]: server memory per idle WebSocket connection.
//! - [`rollup`]: a day of a million sign-ins, and its KPIs by hour.
//! - [`suite`]: `all` and `smoke`, every scenario in one run.
//! - [`baseline`]: the bare handler and direct CouchDB writes.
//! - [`load`]: the HTTP and WebSocket load loops the scenarios share.
//! - [`payload`]: the sample blobs they send.
//! - [`cli`], [`options`]: the command line.
//! - [`ctx`]: what a scenario runs in: options, table, servers under test.
//! - [`client`], [`process`], [`report`]: the plumbing.

mod baseline;
mod cli;
mod client;
mod ctx;
mod fanout;
mod idle;
mod ingest;
mod load;
mod logins;
mod options;
mod payload;
mod process;
mod report;
mod rollup;
mod suite;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Scenario};
use ctx::Ctx;

/// Parses the command line and runs it.
fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Scenario::BaselineServer) {
        return baseline::serve();
    }
    process::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let machine = report::machine();
    eprintln!("kpiggybank-bench on {machine}");
    let mut ctx = Ctx {
        common: cli.common,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let result = runtime.block_on(run(&mut ctx, &cli.command));
    report::print_table(&ctx.rows, &machine);
    for note in &ctx.notes {
        println!("note: {note}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kpiggybank-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario the command line names.
async fn run(ctx: &mut Ctx, scenario: &Scenario) -> Result<(), String> {
    match scenario {
        Scenario::Logins(a) => logins::run(ctx, a).await,
        Scenario::Ingest(a) => ingest::run(ctx, a).await,
        Scenario::Fanout(a) => fanout::run(ctx, a).await,
        Scenario::Idle(a) => idle::run(ctx, a).await,
        Scenario::Rollup(a) => rollup::run(ctx, a).await,
        Scenario::All => suite::run(ctx, false).await,
        Scenario::Smoke => suite::run(ctx, true).await,
        Scenario::BaselineServer => unreachable!("handled before the runtime starts"),
    }
}
