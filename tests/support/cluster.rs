//! A fake CouchDB cluster for the tests: pouchdb-server cannot form one, so
//! each "node" is a [`NodeProxy`] in front of ONE pouchdb-server (so all
//! nodes hold the same database, as a cluster's do), reached through a
//! [`Gate`] that can be closed to make the node stop answering.
//!
//! Each node renames seqs as CouchDB 3 gives each node its own
//! (`"7-g1node_a"`), accepts another node's seq as `since` (rewound by
//! [`NodeProxy::rewind`] changes, as a real node may repeat some), counts
//! what the tests look at (basic auth vs cookies, logins, view refreshes)
//! and checks `_session` cookies itself: pouchdb-server lets any cookie
//! through, CouchDB does not.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LinesCodec};

/// A TCP port that forwards to another one until it is closed: closing it
/// refuses new connections and cuts the open ones, as a node that died.
pub struct Gate {
    /// Its port on 127.0.0.1.
    pub port: u16,
    target: u16,
    accept: Option<tokio::task::JoinHandle<()>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl Gate {
    /// Opens a gate to `target` on a free port.
    pub async fn open(target: u16) -> Gate {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut gate = Gate {
            port: listener.local_addr().unwrap().port(),
            target,
            accept: None,
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        gate.serve(listener);
        gate
    }

    fn serve(&mut self, listener: TcpListener) {
        let (target, connections) = (self.target, self.connections.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Refuses new connections and cuts the open ones.
    pub fn close(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }

    /// Opens again on the same port.
    pub async fn reopen(&mut self) {
        self.close();
        // The aborted accept task drops its listener soon, not at once.
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("port {} did not come free again", self.port);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a node proxy saw; the tests read and set these.
#[derive(Default)]
pub struct Seen {
    /// Requests carrying `Authorization: Basic`.
    pub basic: AtomicUsize,
    /// Requests carrying a session cookie this node issued.
    pub cookie: AtomicUsize,
    /// Requests refused for a cookie it never issued (or [`Seen::refuse_cookie`]).
    pub bad_cookie: AtomicUsize,
    /// `POST /_session` logins that got a cookie.
    pub logins: AtomicUsize,
    /// `_bulk_docs` requests.
    pub bulk_docs: AtomicUsize,
    /// View queries with `limit=0` (a refresh).
    pub refreshes: AtomicUsize,
    /// Refreshes in flight now.
    refreshing: AtomicUsize,
    /// The most view refreshes ever in flight at once.
    pub refreshes_at_once: AtomicUsize,
    /// View queries that read rows.
    pub view_reads: AtomicUsize,
    /// Set: the next request with a valid cookie is answered 401 (as after expiry).
    pub refuse_cookie: AtomicBool,
    /// `since` of each continuous feed opened here, as received.
    pub feed_sinces: Mutex<Vec<String>>,
    /// Set: every view refresh takes this long (ms), to make overlaps visible.
    pub refresh_delay_ms: AtomicUsize,
    cookies: Mutex<HashSet<String>>,
}

/// One fake cluster node: a proxy to the shared pouchdb-server.
pub struct NodeProxy {
    /// The proxy's own port (the [`Gate`] in front forwards here).
    pub port: u16,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This node's name for pouchdb-server's integer seq `n`.
fn node_seq(tag: &str, n: u64) -> serde_json::Value {
    serde_json::Value::String(format!("{n}-g1node_{tag}"))
}

fn rename_seqs(tag: &str, v: &mut serde_json::Value) {
    for key in ["seq", "last_seq", "update_seq"] {
        if let Some(seq) = v.get_mut(key)
            && let Some(n) = seq.as_u64()
        {
            *seq = node_seq(tag, n);
        }
    }
    if let Some(results) = v.get_mut("results").and_then(|r| r.as_array_mut()) {
        results.iter_mut().for_each(|r| rename_seqs(tag, r));
    }
}

/// The session cookie (`AuthSession=…`) of a `Cookie` header.
fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .find(|c| c.starts_with("AuthSession="))
        .map(str::to_string)
}

fn status(code: u16) -> axum::http::Response<Body> {
    axum::http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"error":"unauthorized","reason":"fake node"}"#,
        ))
        .unwrap()
}

impl NodeProxy {
    /// Starts node `tag` in front of `upstream` (`http://127.0.0.1:port`);
    /// a `since` from another node is taken back `rewind` changes.
    pub async fn start(tag: &'static str, upstream: String, rewind: u64) -> NodeProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        crate::support::install_crypto();
        let client = crate::support::http();
        let state = seen.clone();
        let handler = move |req: Request| {
            let (client, upstream, seen) = (client.clone(), upstream.clone(), state.clone());
            async move { handle(tag, rewind, &client, &upstream, &seen, req).await }
        };
        let app = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        NodeProxy { port, seen, task }
    }
}

async fn handle(
    tag: &'static str,
    rewind: u64,
    client: &reqwest::Client,
    upstream: &str,
    seen: &Seen,
    req: Request,
) -> axum::http::Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let is_login = path == "/_session" && parts.method == axum::http::Method::POST;
    if parts.headers.contains_key("authorization") {
        seen.basic.fetch_add(1, Ordering::SeqCst);
    } else if let Some(cookie) = cookie_of(&parts.headers) {
        if !seen.cookies.lock().unwrap().contains(&cookie)
            || seen.refuse_cookie.swap(false, Ordering::SeqCst)
        {
            seen.bad_cookie.fetch_add(1, Ordering::SeqCst);
            return status(401);
        }
        seen.cookie.fetch_add(1, Ordering::SeqCst);
    } else if !is_login {
        // CouchDB 3 has no anonymous access.
        return status(401);
    }
    let mut query: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        let mut v = v.into_owned();
        if k == "since" {
            let n: u64 = v.split('-').next().unwrap_or("0").parse().unwrap_or(0);
            // Another node's seq is accepted, but may bring a few changes again.
            let foreign = v.contains("-g1node_") && !v.ends_with(&format!("_{tag}"));
            v = if foreign { n.saturating_sub(rewind) } else { n }.to_string();
        }
        query.push((k.into_owned(), v));
    }
    let continuous = query.iter().any(|(k, v)| k == "feed" && v == "continuous");
    if continuous {
        let since = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "since")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        seen.feed_sinces.lock().unwrap().push(since);
    }
    if path.ends_with("/_bulk_docs") {
        seen.bulk_docs.fetch_add(1, Ordering::SeqCst);
    }
    let refresh = path.contains("/_view/") && query.iter().any(|(k, v)| k == "limit" && v == "0");
    if refresh {
        seen.refreshes.fetch_add(1, Ordering::SeqCst);
        let now = seen.refreshing.fetch_add(1, Ordering::SeqCst) + 1;
        seen.refreshes_at_once.fetch_max(now, Ordering::SeqCst);
        let delay = seen.refresh_delay_ms.load(Ordering::SeqCst) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
    } else if path.contains("/_view/") {
        seen.view_reads.fetch_add(1, Ordering::SeqCst);
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut up = client
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .query(&query)
        .body(body);
    for name in ["authorization", "content-type", "cookie"] {
        if let Some(v) = parts.headers.get(name) {
            up = up.header(name, v.as_bytes());
        }
    }
    let res = up.send().await;
    if refresh {
        seen.refreshing.fetch_sub(1, Ordering::SeqCst);
    }
    let Ok(res) = res else {
        return status(502);
    };
    let code = res.status().as_u16();
    let mut out = axum::http::Response::builder()
        .status(code)
        .header("content-type", "application/json");
    if is_login {
        for v in res.headers().get_all("set-cookie") {
            if let Some(pair) = v.to_str().ok().and_then(|v| v.split(';').next()) {
                seen.cookies.lock().unwrap().insert(pair.trim().to_string());
                seen.logins.fetch_add(1, Ordering::SeqCst);
            }
            out = out.header("set-cookie", v.as_bytes());
        }
    }
    if continuous && code == 200 {
        let lines = FramedRead::new(
            tokio_util::io::StreamReader::new(
                res.bytes_stream().map(|r| r.map_err(std::io::Error::other)),
            ),
            LinesCodec::new(),
        );
        let renamed = lines.map(move |line| {
            let line = line.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(mut v) => {
                    rename_seqs(tag, &mut v);
                    format!("{v}\n")
                }
                Err(_) => format!("{line}\n"),
            })
        });
        return out.body(Body::from_stream(renamed)).unwrap();
    }
    let bytes = res.bytes().await.unwrap_or_default();
    let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) if path.ends_with("/_changes") || path.matches('/').count() == 1 => {
            rename_seqs(tag, &mut v);
            v.to_string().into_bytes().into()
        }
        _ => bytes,
    };
    out.body(Body::from(bytes)).unwrap()
}

/// A fake node reachable through its own gate.
pub struct Node {
    /// The proxy.
    pub proxy: NodeProxy,
    /// The gate kpiggybank talks to.
    pub gate: Gate,
}

impl Node {
    /// Starts node `tag` in front of `upstream`, behind a gate.
    pub async fn start(tag: &'static str, upstream: String, rewind: u64) -> Node {
        let proxy = NodeProxy::start(tag, upstream, rewind).await;
        let gate = Gate::open(proxy.port).await;
        Node { proxy, gate }
    }

    /// What its proxy saw.
    pub fn seen(&self) -> &Seen {
        &self.proxy.seen
    }

    /// `127.0.0.1:port` of its gate, for `DB_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.gate.port)
    }
}
