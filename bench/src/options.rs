//! Options every scenario takes, and the stores the bench can start the
//! server with.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

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
