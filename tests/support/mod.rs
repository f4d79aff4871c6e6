//! Runs kpiggybank for the tests. [`Server`] serves it inside the test
//! process (`App::open` + `serve` on a loopback port); [`Process`] spawns the
//! built binary, for the tests where the process itself is under test
//! (signals, kill -9, start-up errors, its logs, its memory).
#![allow(dead_code)]

pub mod couch;
pub mod lines;
mod process;

// Not every test binary spawns the process.
#[allow(unused_imports)]
pub use process::Process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kpiggybank::{App, Config, StartError};

/// How long a server may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop may take: `serve` allows 5 s for HTTP responses, 5 s for
/// WebSockets and 30 s for the writer to drain; more means it is stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a server answers on, whichever way it runs: the HTTP helpers.
pub struct Endpoint {
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://addr` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
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
}

/// kpiggybank served in this process, on its own runtime in its own thread:
/// a test on a single-threaded runtime, or one that blocks, cannot starve
/// it, and dropping it can stop it without a runtime. Dropping it stops it
/// gracefully (as SIGTERM would) and waits for `serve` to return, blocking
/// the dropping thread: a WebSocket client driven by that same thread cannot
/// answer the server's close frame, which then waits out its 1 s close
/// timeout. `stop().await` first where that matters.
pub struct Server {
    endpoint: Endpoint,
    /// Its data directory (kept by the test, so a restart finds the same data).
    pub data_dir: PathBuf,
    /// The test's own variables, kept for [`Server::restart`].
    env: Vec<(String, String)>,
    /// `None` once stopped.
    running: Option<Running>,
}

impl Deref for Server {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Server {
    /// Starts a server with the embedded store in a fresh temporary directory.
    pub fn start(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start_in(dir.path(), env);
        (server, dir)
    }

    /// Starts a server whose `DATA_DIR` is `data_dir`; `env` overrides the
    /// defaults (`HOST=127.0.0.1`, `PORT=0`, `MODE=dev`), and nothing else
    /// is read: not the process environment.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        match Server::try_start_in(data_dir, env) {
            Ok(server) => server,
            Err(e) => panic!("kpiggybank did not start: {e}"),
        }
    }

    /// Like [`Server::start_in`], listening on `addr` (a restart on the same
    /// port, as a client would find it again).
    pub fn start_at(data_dir: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> Server {
        match Server::try_start(data_dir, env, Some(addr)) {
            Ok(server) => server,
            Err(e) => panic!("kpiggybank did not start on {addr}: {e}"),
        }
    }

    /// Like [`Server::start_in`], but returns why it did not start: the
    /// configuration error, or the `StartError`, as the binary would say it.
    pub fn try_start_in(data_dir: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
        Server::try_start(data_dir, env, None)
    }

    fn try_start(
        data_dir: &Path,
        env: &[(&str, &str)],
        addr: Option<SocketAddr>,
    ) -> Result<Server, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (running, addr) = launch(vars(data_dir, &env, addr))?;
        Ok(Server {
            endpoint: Endpoint { addr },
            data_dir: data_dir.to_path_buf(),
            env,
            running: Some(running),
        })
    }

    /// Stops it gracefully, as SIGTERM does: in-flight writes answered,
    /// WebSockets closed with 1001, streams ended. Returns once `serve`
    /// returned; panics if it failed or took longer than serve's own bounds.
    /// Async so that the test's clients keep being served while it stops.
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let stopped = tokio::task::spawn_blocking(move || running.stop_and_wait())
            .await
            .expect("the stop does not panic");
        if let Err(e) = stopped {
            panic!("kpiggybank on {} did not stop cleanly: {e}", self.addr);
        }
    }

    /// Stops it if it runs, then starts it again on the same address, with
    /// the same data and variables.
    pub async fn restart(&mut self) {
        self.stop().await;
        let vars = vars(&self.data_dir, &self.env, Some(self.addr));
        // Off the test's runtime: the start is a blocking wait.
        let (running, addr) = tokio::task::spawn_blocking(move || launch(vars))
            .await
            .expect("the start does not panic")
            .unwrap_or_else(|e| panic!("kpiggybank did not start again: {e}"));
        assert_eq!(addr, self.addr, "restarted on the same address");
        self.running = Some(running);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take()
            && let Err(e) = running.stop_and_wait()
            // A second panic while unwinding would abort the whole test binary.
            && !std::thread::panicking()
        {
            panic!("kpiggybank on {} did not stop cleanly: {e}", self.addr);
        }
    }
}

/// The variables a test server reads: the defaults the tests assume, then
/// the test's own, then the address of a restart.
fn vars(
    data_dir: &Path,
    env: &[(String, String)],
    addr: Option<SocketAddr>,
) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
        ("MODE", "dev".to_string()),
        (
            "DATA_DIR",
            data_dir.to_str().expect("UTF-8 path").to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    vars.extend(env.iter().cloned());
    if let Some(addr) = addr {
        vars.insert("HOST".into(), addr.ip().to_string());
        vars.insert("PORT".into(), addr.port().to_string());
    }
    vars
}

/// A serving thread. `Sync`, like the rest of [`Server`]: tests share one
/// between tasks in an `Arc`.
struct Running {
    /// Resolves `serve`'s stop future; dropping it stops the server too.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Returns what `serve` returned.
    thread: JoinHandle<Result<(), String>>,
}

impl Running {
    /// Tells `serve` to stop and waits for it, at most [`STOP_TIMEOUT`].
    fn stop_and_wait(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.thread.is_finished() {
            if Instant::now() > deadline {
                // Left running, detached: the test fails, the binary goes on.
                return Err(format!(
                    "serve did not return within {STOP_TIMEOUT:?} of the stop"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.thread.join().map_err(panic_message)?
    }
}

/// Opens the store and serves on the configured address in a new thread;
/// returns once it listens (or why it does not).
fn launch(vars: HashMap<String, String>) -> Result<(Running, SocketAddr), String> {
    let config = Config::from_vars(&vars).map_err(|e| e.to_string())?;
    let addr = SocketAddr::new(config.host, config.port);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = mpsc::channel::<Result<SocketAddr, String>>();
    let thread = std::thread::Builder::new()
        .name(format!("kpiggybank {addr}"))
        .spawn(move || {
            // Multi-threaded as in production, whatever the test's runtime;
            // two workers, as on the 2-core machines the suite runs on.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("kpiggybank-server")
                .enable_all()
                .build()
                .expect("the server's runtime starts");
            let served = runtime.block_on(async move {
                // In the order of `kpiggybank::run`: the store, then the port.
                let app = match App::open(config).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => listener,
                    Err(source) => {
                        let _ = started_tx.send(Err(StartError::Bind { addr, source }.to_string()));
                        return Ok(());
                    }
                };
                let _ = started_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                kpiggybank::serve(listener, app, async move {
                    let _ = stopped.await;
                })
                .await
                .map_err(|e| e.to_string())
            });
            // Tasks `serve` does not wait for (a CouchDB relay, say) end here.
            runtime.shutdown_timeout(Duration::from_secs(10));
            served
        })
        .expect("spawn the server thread");
    let running = Running {
        stop: Some(stop),
        thread,
    };
    match started.recv_timeout(START_TIMEOUT) {
        Ok(Ok(addr)) => Ok((running, addr)),
        Ok(Err(e)) => {
            let _ = running.stop_and_wait();
            Err(e)
        }
        Err(RecvTimeoutError::Timeout) => {
            let _ = running.stop_and_wait();
            Err(format!("not listening within {START_TIMEOUT:?}"))
        }
        Err(RecvTimeoutError::Disconnected) => Err(running
            .stop_and_wait()
            .err()
            .unwrap_or_else(|| "the server thread ended before it listened".into())),
    }
}

/// What a thread that panicked said.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let said = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    format!("the server thread panicked: {said}")
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

/// Polls `check` until it returns `Some`, every few milliseconds; panics
/// with `what` after `timeout`. For conditions a test can only observe from
/// outside (a count, a log line), instead of sleeping and hoping.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
