//! Baselines measured in the same run as the server: a bare axum handler
//! (HTTP POST → 201, WebSocket push → ack, a plain broadcast fan-out), run as
//! a separate process like the server, and CouchDB written to directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use futures::SinkExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::client::{self, HttpConn};
use crate::load::BuildRequest;
use crate::payload::Payload;
use crate::process::{Proc, TempDir, free_port};

/// Changes the bare fan-out keeps for subscribers that are behind (the
/// server's ring holds as many).
const BARE_RING: usize = 16_384;

/// Most changes a bare subscriber sends under one flush (the server's hub
/// hands out up to 1024 at once).
const BARE_BATCH: usize = 1024;

/// Same per-connection buffers as the server's WebSocket, so the idle-memory
/// baseline is the floor for the same settings.
const BARE_WS_READ_BUFFER: usize = 4 * 1024;
const BARE_WS_WRITE_BUFFER: usize = 16 * 1024;

/// How long pouchdb-server may take to answer after it starts.
const COUCH_START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Bare {
    changes: broadcast::Sender<Utf8Bytes>,
    seq: Arc<AtomicU64>,
}

/// Runs the bare baseline server until SIGTERM: the hidden `baseline-server`
/// subcommand, a multi-threaded tokio runtime like the server's.
pub fn serve() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    runtime.block_on(async {
        let state = Bare {
            changes: broadcast::channel(BARE_RING).0,
            seq: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/wsapi/interaction_data", post(bare_post))
            .route("/wsapi/ws", get(bare_ws))
            .with_state(state);
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("baseline-server: cannot listen: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().expect("bound address");
        eprintln!("baseline-server listening on http://{addr}");
        let stop = async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
        };
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
        std::process::ExitCode::SUCCESS
    })
}

/// Reads the whole body, answers 201: the ceiling for HTTP ingest.
async fn bare_post(body: Bytes) -> impl IntoResponse {
    std::hint::black_box(&body);
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"ok":true,"ids":[]}"#,
    )
}

async fn bare_ws(
    State(state): State<Bare>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    let subscribe = params.contains_key("subscribe");
    ws.read_buffer_size(BARE_WS_READ_BUFFER)
        .write_buffer_size(BARE_WS_WRITE_BUFFER)
        .on_upgrade(move |socket| bare_socket(socket, state, subscribe))
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Answers each push with an ack and broadcasts its blobs; a subscriber
/// forwards the broadcast. No parsing of blobs, no store: the floor.
async fn bare_socket(mut socket: WebSocket, state: Bare, subscribe: bool) {
    let mut changes = subscribe.then(|| state.changes.subscribe());
    if subscribe
        && socket
            .send(Message::Text(r#"{"type":"subscribed"}"#.into()))
            .await
            .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            change = async { changes.as_mut().expect("subscribed").recv().await }, if changes.is_some() => {
                // A lagging bare subscriber is cut off: the bench counts it as lost.
                let Ok(frame) = change else { return };
                // Whatever else is waiting goes out with it under one flush,
                // as the server batches, so the floor is not a naive one.
                let rx = changes.as_mut().expect("subscribed");
                let mut batch = vec![frame];
                while batch.len() < BARE_BATCH {
                    match rx.try_recv() {
                        Ok(frame) => batch.push(frame),
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                for frame in batch {
                    if socket.feed(Message::Text(frame)).await.is_err() { return }
                }
                if socket.flush().await.is_err() { return }
            }
            msg = socket.recv() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    if matches!(msg, Some(Ok(_))) { continue }
                    return;
                };
                let Ok(push) = serde_json::from_str::<Push>(text.as_str()) else { continue };
                if let Some(data) = push.data
                    && state.changes.receiver_count() > 0
                {
                    let blobs: Vec<&RawValue> = match data.get().starts_with('[') {
                        true => serde_json::from_str(data.get()).unwrap_or_default(),
                        false => vec![data],
                    };
                    for blob in blobs {
                        let seq = state.seq.fetch_add(1, Ordering::Relaxed) + 1;
                        let frame = format!(
                            r#"{{"type":"change","seq":{seq},"id":"b{seq}","doc":{}}}"#,
                            blob.get()
                        );
                        let _ = state.changes.send(frame.into());
                    }
                }
                let reference = push.reference.map_or("null", |r| r.get());
                let ack = format!(r#"{{"type":"ack","ref":{reference},"ids":[]}}"#);
                if socket.send(Message::Text(ack.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Starts the bare baseline server: this binary, re-executed.
pub fn start_bare() -> Result<Proc, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let mut cmd = Command::new(me);
    cmd.arg("baseline-server");
    Proc::spawn_listening("baseline-server", cmd)
}

/// The admin the bench creates on the pouchdb-server it starts, as the
/// CouchDB tests do: a real deployment authenticates every request, and
/// the baselines should pay that too.
pub const COUCH_USER: &str = "kpiggybank";
/// Its password (a throwaway server on loopback).
pub const COUCH_PASS: &str = "bench-secret";

/// A CouchDB to measure against: started pouchdb-server or one given by URL.
pub struct Couch {
    /// Its address.
    pub addr: SocketAddr,
    /// User and password, when it needs them.
    pub credentials: Option<(String, String)>,
    _proc: Option<Proc>,
    _dir: Option<TempDir>,
}

/// Where pouchdb-server is: `--pouchdb-bin`, `$KPIGGYBANK_POUCHDB_SERVER`,
/// or the test script's `.tools/pouchdb`.
pub fn find_pouchdb(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KPIGGYBANK_POUCHDB_SERVER").map(PathBuf::from))
        .or_else(|| {
            Some(PathBuf::from(
                ".tools/pouchdb/node_modules/.bin/pouchdb-server",
            ))
        })
        .filter(|p| p.exists())
        // Absolute, because the child runs in its own temporary directory.
        .and_then(|p| p.canonicalize().ok())
}

impl Couch {
    /// Starts pouchdb-server in memory on a free loopback port.
    pub async fn start(bin: &Path) -> Result<Couch, String> {
        let dir = TempDir::new("kpiggybank-bench-couch").map_err(|e| e.to_string())?;
        let port = free_port().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["--in-memory", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let proc = Proc::from_child("pouchdb-server", child, addr);
        let deadline = Instant::now() + COUCH_START_TIMEOUT;
        loop {
            if let Ok(mut conn) = HttpConn::connect(addr).await
                && let Ok(a) = conn.send(&client::get(addr, "/")).await
                && a.status == 200
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("pouchdb-server did not answer on {addr}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Ends "admin party": from here on every request authenticates.
        let mut conn = HttpConn::connect(addr).await.map_err(|e| e.to_string())?;
        let body = format!("\"{COUCH_PASS}\"");
        let req = client::request(
            addr,
            "PUT",
            &format!("/_config/admins/{COUCH_USER}"),
            "application/json",
            "",
            body.as_bytes(),
        );
        let a = conn.send(&req).await.map_err(|e| e.to_string())?;
        if a.status != 200 {
            return Err(format!("creating the CouchDB admin answered {}", a.status));
        }
        Ok(Couch {
            addr,
            credentials: Some((COUCH_USER.into(), COUCH_PASS.into())),
            _proc: Some(proc),
            _dir: Some(dir),
        })
    }

    /// A CouchDB already running, with `user:pass` if it needs them.
    pub fn existing(addr: SocketAddr, credentials: Option<(String, String)>) -> Couch {
        Couch {
            addr,
            credentials,
            _proc: None,
            _dir: None,
        }
    }

    /// The `Authorization` header line, or nothing.
    pub fn auth(&self) -> String {
        self.credentials
            .as_ref()
            .map_or(String::new(), |(u, p)| client::basic_auth(u, p))
    }

    /// Creates database `name` (fine if it exists).
    pub async fn create_db(&self, name: &str) -> Result<(), String> {
        let mut conn = HttpConn::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = client::request(
            self.addr,
            "PUT",
            &format!("/{name}"),
            "application/json",
            &self.auth(),
            b"",
        );
        let a = conn.send(&req).await.map_err(|e| e.to_string())?;
        match a.status {
            201 | 202 | 412 => Ok(()),
            s => Err(format!(
                "PUT /{name} answered {s}: {}",
                String::from_utf8_lossy(&a.body)
            )),
        }
    }
}

/// One POST per blob to `/db`, CouchDB choosing the id: the original's way.
pub fn couch_one_per_post(couch: &Couch, db: &str, payload: Arc<Payload>) -> BuildRequest {
    let (addr, auth, path) = (couch.addr, couch.auth(), format!("/{db}"));
    Arc::new(move |i| {
        Bytes::from(client::request(
            addr,
            "POST",
            &path,
            "application/json",
            &auth,
            payload.blob(i).as_bytes(),
        ))
    })
}

/// `_bulk_docs` of `per_request` blobs with client-chosen ids, as the
/// kpiggybank CouchDB backend must write them (a retry cannot duplicate).
pub fn couch_bulk(
    couch: &Couch,
    db: &str,
    payload: Arc<Payload>,
    per_request: u64,
) -> BuildRequest {
    let path = format!("/{db}/_bulk_docs");
    let run = std::process::id();
    let (addr, auth) = (couch.addr, couch.auth());
    Arc::new(move |i| {
        let mut body = String::with_capacity(per_request as usize * 760 + 16);
        body.push_str("{\"docs\":[");
        for j in 0..per_request {
            if j > 0 {
                body.push(',');
            }
            let blob = payload.blob(i * per_request + j);
            body.push_str(&format!("{{\"_id\":\"bench-{run}-{i}-{j}\","));
            body.push_str(&blob[1..]);
        }
        body.push_str("]}");
        Bytes::from(client::request(
            addr,
            "POST",
            &path,
            "application/json",
            &auth,
            body.as_bytes(),
        ))
    })
}
