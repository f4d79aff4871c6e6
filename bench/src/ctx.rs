//! What a scenario runs in: the options, the table being filled, and the
//! servers it measures (the kpiggybank under test and a CouchDB), started
//! as processes or given by URL.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::baseline;
use crate::client;
use crate::options::{Backend, Common};
use crate::process::{Proc, TempDir};
use crate::report::Row;

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
