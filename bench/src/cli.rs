//! The command line: the common options and one subcommand per scenario.

use clap::{Parser, Subcommand};

use crate::options::Common;
use crate::{fanout, idle, ingest, logins, rollup};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "kpiggybank-bench",
    about = "Load generator for kpiggybank: ingest, fan-out, idle memory, the original's login scenario"
)]
pub struct Cli {
    /// Options every scenario takes.
    #[command(flatten)]
    pub common: Common,
    /// What to measure.
    #[command(subcommand)]
    pub command: Scenario,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// The original's scenario: N login sequences by C clients, then all read back.
    Logins(logins::LoginsArgs),
    /// Acknowledged blobs/s over HTTP or WebSocket, with latency.
    Ingest(ingest::IngestArgs),
    /// One producer at a fixed rate, S subscribers: deliveries/s, latency, lost, duplicated.
    Fanout(fanout::FanoutArgs),
    /// Server memory per idle WebSocket connection.
    Idle(idle::IdleArgs),
    /// A day of sign-ins, then its KPIs by hour against the old blob download.
    Rollup(rollup::RollupArgs),
    /// Every scenario at the sizes of docs/benchmarks.md, with baselines.
    All,
    /// Every scenario with tiny numbers in a few seconds (run by the test suite).
    Smoke,
    /// The bare baseline server (started by the bench itself).
    #[command(hide = true)]
    BaselineServer,
}
