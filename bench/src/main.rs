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
//! - [`baseline`]: the bare handler and direct CouchDB writes.
//! - [`load`]: the HTTP and WebSocket load loops the scenarios share.
//! - [`payload`]: the sample blobs they send.
//! - [`client`], [`process`], [`report`]: the plumbing.

mod baseline;
mod client;
mod fanout;
mod idle;
mod ingest;
mod load;
mod logins;
mod payload;
mod process;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use process::{Proc, TempDir};
use report::Row;

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

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Store of the server the bench starts.
    #[arg(long, global = true, value_enum, default_value_t = Backend::Embedded)]
    pub backend: Backend,
    /// Measure a server already running at this loopback URL instead of starting one.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// PID of the `--url` server, so the idle scenario can read its memory.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// The kpiggybank binary to start (default: next to this binary).
    #[arg(long, global = true)]
    pub server_bin: Option<PathBuf>,
    /// pouchdb-server to start as the CouchDB (default: $KPIGGYBANK_POUCHDB_SERVER,
    /// then .tools/pouchdb/node_modules/.bin/pouchdb-server).
    #[arg(long, global = true)]
    pub pouchdb_bin: Option<PathBuf>,
    /// A running CouchDB on loopback (`http://user:pass@127.0.0.1:5984`) instead of starting pouchdb-server.
    #[arg(long, global = true)]
    pub couchdb_url: Option<String>,
    /// Skip the baselines (bare handler, direct CouchDB).
    #[arg(long, global = true)]
    pub no_baseline: bool,
    /// Longest any one load loop may run, in seconds.
    #[arg(long, global = true, default_value_t = 60)]
    pub max_seconds: u64,
}

/// A store the bench can start the server with (`DB_BACKEND`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, durable.
    Embedded,
    /// In-process, nothing saved.
    Memory,
    /// Discards; publishes to subscribers.
    Dummy,
    /// CouchDB (pouchdb-server started by the bench, or `--couchdb-url`).
    Couchdb,
}

impl Backend {
    /// The `DB_BACKEND` value.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Memory => "memory",
            Backend::Dummy => "dummy",
            Backend::Couchdb => "couchdb",
        }
    }
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
    /// Every scenario at the sizes of docs/benchmarks.md, with baselines.
    All,
    /// Every scenario with tiny numbers in a few seconds (run by the test suite).
    Smoke,
    /// The bare baseline server (started by the bench itself).
    #[command(hide = true)]
    BaselineServer,
}

/// The server under test: started by the bench, or given by `--url`.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its PID, when known.
    pub pid: Option<u32>,
    /// The backend name shown in the table.
    pub backend: String,
    proc: Option<Proc>,
    _data: Option<TempDir>,
    _couch: Option<baseline::Couch>,
}

impl Server {
    /// Stops it if the bench started it.
    pub fn stop(mut self) {
        if let Some(p) = self.proc.take() {
            p.stop();
        }
    }
}

/// What a scenario needs: the options and the table being filled.
pub struct Ctx {
    /// The common options.
    pub common: Common,
    /// The summary table.
    pub rows: Vec<Row>,
    /// Problems that did not stop the run (a baseline that could not start).
    pub notes: Vec<String>,
}

impl Ctx {
    /// The longest a load loop may run.
    pub fn max_time(&self) -> Duration {
        Duration::from_secs(self.common.max_seconds)
    }

    /// The server to measure: `--url`, or a fresh process with `--backend`,
    /// a temporary `DATA_DIR` and `MODE=prod`; `env` adds variables.
    pub async fn server(&self, env: &[(&str, String)]) -> Result<Server, String> {
        if let Some(url) = &self.common.url {
            let addr = loopback_addr(url)?;
            let backend = remote_backend(addr)
                .await
                .unwrap_or_else(|| "unknown".into());
            return Ok(Server {
                addr,
                pid: self.common.server_pid,
                backend,
                proc: None,
                _data: None,
                _couch: None,
            });
        }
        let bin = match &self.common.server_bin {
            // Absolute, because the server runs in its own temporary directory.
            Some(bin) => bin
                .canonicalize()
                .map_err(|e| format!("--server-bin {}: {e}", bin.display()))?,
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("kpiggybank"),
        };
        let data = TempDir::new("kpiggybank-bench").map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("MODE", "prod")
            .env("DATA_DIR", data.path())
            .env("DB_BACKEND", self.common.backend.name())
            .env_remove("RUST_LOG")
            .env_remove("STORAGE_QUOTA_BYTES")
            .current_dir(data.path());
        let mut couch = None;
        if self.common.backend == Backend::Couchdb {
            let c = self.couch().await?;
            let name = format!("bench_{}", std::process::id());
            cmd.env("DB_HOST", c.addr.ip().to_string())
                .env("DB_PORT", c.addr.port().to_string())
                .env("DB_NAME", name);
            if let Some((user, pass)) = &c.credentials {
                cmd.env("DB_USER", user).env("DB_PASS", pass);
            }
            couch = Some(c);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn_listening("kpiggybank", cmd).map_err(|e| {
            format!(
                "{e}\n(server binary {}; build it with `cargo build --release --workspace --bins`)",
                bin.display()
            )
        })?;
        // Printed so that a profiler can be attached to the server by PID.
        eprintln!(
            "started kpiggybank (DB_BACKEND={}) pid {} on {}",
            self.common.backend.name(),
            proc.pid(),
            proc.addr
        );
        Ok(Server {
            addr: proc.addr,
            pid: Some(proc.pid()),
            backend: self.common.backend.name().into(),
            proc: Some(proc),
            _data: Some(data),
            _couch: couch,
        })
    }

    /// A CouchDB: `--couchdb-url`, or a pouchdb-server started now.
    pub async fn couch(&self) -> Result<baseline::Couch, String> {
        if let Some(url) = &self.common.couchdb_url {
            // `http://user:pass@127.0.0.1:5984`: credentials before the `@`.
            let rest = url.strip_prefix("http://").unwrap_or(url);
            let (credentials, host) = match rest.split_once('@') {
                Some((cred, host)) => {
                    let (u, p) = cred.split_once(':').unwrap_or((cred, ""));
                    (Some((u.to_string(), p.to_string())), host)
                }
                None => (None, rest),
            };
            return Ok(baseline::Couch::existing(loopback_addr(host)?, credentials));
        }
        let bin = baseline::find_pouchdb(self.common.pouchdb_bin.as_deref()).ok_or(
            "no pouchdb-server: run `npm install --ignore-scripts --prefix .tools/pouchdb \
             pouchdb-server@4.2.0`, or pass --pouchdb-bin or --couchdb-url",
        )?;
        baseline::Couch::start(&bin).await
    }
}

/// `http://127.0.0.1:PORT[/]` → the address; anything not on loopback is refused.
pub fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or("");
    let host_port = host_port.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = host_port
        .parse()
        .map_err(|_| format!("{url:?}: expected http://127.0.0.1:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{url:?} is not a loopback address: the bench only loads this machine"
        ));
    }
    Ok(addr)
}

async fn remote_backend(addr: SocketAddr) -> Option<String> {
    let mut conn = client::HttpConn::connect(addr).await.ok()?;
    let a = conn.send(&client::get(addr, "/wsapi/stats")).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    Some(v["backend"].as_str()?.to_string())
}

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

async fn run(ctx: &mut Ctx, scenario: &Scenario) -> Result<(), String> {
    match scenario {
        Scenario::Logins(a) => logins::run(ctx, a).await,
        Scenario::Ingest(a) => ingest::run(ctx, a).await,
        Scenario::Fanout(a) => fanout::run(ctx, a).await,
        Scenario::Idle(a) => idle::run(ctx, a).await,
        Scenario::All => suite(ctx, false).await,
        Scenario::Smoke => suite(ctx, true).await,
        Scenario::BaselineServer => unreachable!("handled before the runtime starts"),
    }
}

/// Every scenario, at full or smoke size. The backend of each is the one its
/// target names; `--backend couchdb` adds the CouchDB comparison.
async fn suite(ctx: &mut Ctx, smoke: bool) -> Result<(), String> {
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
