//! Starts a real kpiggybank process on a free loopback port and stops it.
#![allow(dead_code)]

pub mod couch;
pub mod lines;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running kpiggybank process; killed when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory (kept by the test, so a restart finds the same data).
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with the embedded store in a fresh temporary directory.
    pub fn start(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start_in(dir.path(), env);
        (server, dir)
    }

    /// Starts a server whose `DATA_DIR` is `data_dir`; `env` overrides the defaults.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        match Server::try_start_in(data_dir, env) {
            Ok(server) => server,
            Err(logs) => panic!("kpiggybank did not start:\n{logs}"),
        }
    }

    /// Like [`Server::start_in`], but returns the logs when it does not come up.
    pub fn try_start_in(data_dir: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpiggybank"));
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("MODE", "dev")
            .env("DATA_DIR", data_dir)
            .env_remove("RUST_LOG")
            .env_remove("DB_BACKEND")
            .env_remove("ADMIN_TOKEN")
            .env_remove("STORAGE_QUOTA_BYTES")
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kpiggybank");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let addr = line
                        .split("listening on http://")
                        .nth(1)
                        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
                    // Logged before the start is reported, so `logs()` holds the start-up line.
                    logs.lock().unwrap().push(line);
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    return Ok(Server {
                        child,
                        addr: addr.parse().expect("listening address"),
                        data_dir: data_dir.to_path_buf(),
                        logs,
                    });
                }
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    return Err(logs.lock().unwrap().join("\n"));
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(format!(
                            "exited with {status}\n{}",
                            logs.lock().unwrap().join("\n")
                        ));
                    }
                }
            }
        }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs `data=<JSON text>`, the original client's form.
    pub async fn post_form(&self, data: &str) -> reqwest::Response {
        http()
            .post(self.url("/wsapi/interaction_data"))
            .form(&[("data", data)])
            .send()
            .await
            .unwrap()
    }

    /// POSTs a JSON body to the store route.
    pub async fn post_json(&self, body: &impl serde::Serialize) -> reqwest::Response {
        http()
            .post(self.url("/wsapi/interaction_data"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Stores a blob or a list (JSON body), expects 201, returns the ids.
    pub async fn store(&self, body: &impl serde::Serialize) -> Vec<String> {
        let res = self.post_json(body).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 201, "{text}");
        let ack: serde_json::Value = serde_json::from_str(&text).unwrap();
        ack["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_string())
            .collect()
    }

    /// GETs `path`, expects 200, returns the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let res = http().get(self.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.unwrap()
    }

    /// GETs `path`, expects 200, returns the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let res = http().get(self.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res.text().await.unwrap()
    }

    /// How many blobs the server says it stores.
    pub async fn count(&self) -> u64 {
        self.get_json("/wsapi/interaction_data/count")
            .await
            .as_u64()
            .expect("count is a number")
    }

    /// `ws://addr` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Kills it with SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`"TERM"`, `"INT"`) and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit (after a signal sent elsewhere).
    pub fn signal_and_wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the process in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .expect("VmRSS line");
        kb * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sign-in blob shaped like the shared fixture, at `timestamp`.
pub fn login_blob(timestamp: i64, n: u64) -> serde_json::Value {
    serde_json::from_str(&kpiggybank::sample::login_sequence(timestamp, n)).unwrap()
}

/// The fixture from `shared/fixtures/login-sequence.json`, verbatim.
pub const FIXTURE: &str = include_str!("../fixtures/login-sequence.json");

/// A reqwest client for tests.
pub fn http() -> reqwest::Client {
    install_crypto();
    // Plain http only: without this, every client parses the system's root
    // certificates for https, which costs seconds in a debug build.
    reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// reqwest is built with rustls but no default crypto provider (see
/// Cargo.toml): install ring before building any client in a test.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
