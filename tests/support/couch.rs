//! A real CouchDB for the tests: pouchdb-server from `KPIGGYBANK_POUCHDB_SERVER`
//! (installed by `scripts/test`), on a free loopback port, killed when dropped.
//! Plus a small rewriting proxy for what pouchdb-server cannot produce: opaque
//! string seqs (CouchDB 3), a feed that ends with `last_seq`, a line cut short,
//! a `_bulk_docs` refused whole, writes that fail, a feed line over any limit.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The admin kpiggybank logs in as (CouchDB 3 has no "admin party").
pub const USER: &str = "kpiggybank";
/// Its password.
pub const PASS: &str = "couch-secret-5b1d";

/// How long pouchdb-server may take to answer after its start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A pouchdb-server process this test started.
pub struct Pouch {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    in_memory: bool,
}

fn binary() -> PathBuf {
    let path = std::env::var_os("KPIGGYBANK_POUCHDB_SERVER").unwrap_or_else(|| {
        panic!(
            "KPIGGYBANK_POUCHDB_SERVER is not set: run the CouchDB tests through ./scripts/test, \
             which installs pouchdb-server 4.2.0 into .tools/pouchdb and sets it"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "KPIGGYBANK_POUCHDB_SERVER={} does not exist: run ./scripts/test to install pouchdb-server",
        path.display()
    );
    path
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One blocking HTTP/1.0 request to 127.0.0.1:`port`; (status, body).
pub fn raw_http(
    port: u16,
    method: &str,
    path: &str,
    auth: bool,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let auth = if auth {
        format!(
            "Authorization: Basic {}\r\n",
            base64(format!("{USER}:{PASS}").as_bytes())
        )
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Pouch {
    /// Starts pouchdb-server; `in_memory` keeps nothing across a restart.
    pub fn start(in_memory: bool) -> Pouch {
        let mut pouch = Pouch {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            in_memory,
        };
        pouch.launch();
        pouch
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            // It writes config.json and log.txt into the current directory.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.in_memory {
            cmd.arg("--in-memory");
        }
        self.child = Some(cmd.spawn().expect("spawn pouchdb-server"));
        let deadline = Instant::now() + START_TIMEOUT;
        while raw_http(self.port, "GET", "/", false, "").is_err() {
            assert!(
                Instant::now() < deadline,
                "pouchdb-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // CouchDB 3 has no admin party: log in as an admin, as production does.
        // (Never an anonymous PUT /db once an admin exists: that crashes pouchdb-server.)
        let (status, body) = raw_http(self.port, "GET", "/_session", true, "").unwrap();
        if !(status == 200 && body.contains(&format!("\"name\":\"{USER}\""))) {
            let (status, body) = raw_http(
                self.port,
                "PUT",
                &format!("/_config/admins/{USER}"),
                false,
                &format!("\"{PASS}\""),
            )
            .unwrap();
            assert_eq!(status, 200, "creating the admin: {body}");
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// kpiggybank's environment for this server and database `db`.
    pub fn env(&self, db: &str) -> Vec<(String, String)> {
        vec![
            ("DB_BACKEND".into(), "couchdb".into()),
            ("DB_HOST".into(), "127.0.0.1".into()),
            ("DB_PORT".into(), self.port.to_string()),
            ("DB_NAME".into(), db.into()),
            ("DB_USER".into(), USER.into()),
            ("DB_PASS".into(), PASS.into()),
        ]
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// An authenticated request as the admin.
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        raw_http(self.port, method, path, true, body).expect("pouchdb-server answers")
    }
}

impl Drop for Pouch {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Env pairs as `Server::start_in` takes them.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// What a [`CouchDb3Proxy`] adds to pouchdb-server's answers.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// CouchDB 3's dialect: seqs become opaque strings (`"7-g1AAfake"`, and
    /// back in `since`); every continuous feed ends after a few changes,
    /// alternately with a `last_seq` line (as CouchDB's timeout does) and
    /// with a line cut in the middle (as a dropped connection does).
    pub couchdb3: bool,
    /// Refuse whole, while [`CouchDb3Proxy::refusing`] is set, any
    /// `_bulk_docs` whose body holds this string, as CouchDB 3 refuses a
    /// batch with one document its JSON parser rejects: 400
    /// `{"error":"bad_request","reason":"invalid UTF-8 JSON"}`.
    pub refuse_marker: Option<String>,
    /// Send, in each continuous `_changes` feed, one line of this many
    /// bytes before the first change.
    pub long_line: Option<usize>,
}

/// A proxy in front of pouchdb-server for what it cannot produce (see
/// [`Faults`]); everything else is pouchdb-server's own answer.
pub struct CouchDb3Proxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Feeds ended with a `last_seq` line.
    pub last_seq_ends: Arc<AtomicUsize>,
    /// Feeds cut mid-line.
    pub cuts: Arc<AtomicUsize>,
    /// `_bulk_docs` refused for holding the marker.
    pub refused: Arc<AtomicUsize>,
    /// Over-long feed lines sent.
    pub long_lines: Arc<AtomicUsize>,
    /// While true (from the start), bodies holding the marker are refused.
    pub refusing: Arc<AtomicBool>,
    /// While true, every `_bulk_docs` is answered 503, as by a CouchDB that
    /// cannot take writes now.
    pub writes_down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CouchDb3Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Changes passed per feed connection before the proxy ends it.
const CHANGES_PER_FEED: usize = 3;

fn opaque(seq: &serde_json::Value) -> serde_json::Value {
    match seq.as_u64() {
        Some(n) => serde_json::Value::String(format!("{n}-g1AAAAfakeOpaque")),
        None => seq.clone(),
    }
}

fn rewrite_seqs(v: &mut serde_json::Value) {
    for key in ["seq", "last_seq", "update_seq"] {
        if let Some(seq) = v.get_mut(key) {
            *seq = opaque(seq);
        }
    }
    if let Some(results) = v.get_mut("results").and_then(|r| r.as_array_mut()) {
        results.iter_mut().for_each(rewrite_seqs);
    }
}

/// A JSON-looking feed line of `len` bytes, newline included.
fn long_line(len: usize) -> String {
    let head = r#"{"seq":0,"id":"far-too-long","pad":""#;
    let tail = "\"}\n";
    let pad = len.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

fn json_answer(
    status: u16,
    body: impl Into<axum::body::Body>,
) -> axum::http::Response<axum::body::Body> {
    axum::http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

impl CouchDb3Proxy {
    /// Starts the proxy in front of `upstream` (`http://127.0.0.1:port`),
    /// speaking CouchDB 3's dialect.
    pub async fn start(upstream: String) -> CouchDb3Proxy {
        let faults = Faults {
            couchdb3: true,
            ..Faults::default()
        };
        CouchDb3Proxy::with_faults(upstream, faults).await
    }

    /// Starts the proxy in front of `upstream` with `faults`.
    pub async fn with_faults(upstream: String, faults: Faults) -> CouchDb3Proxy {
        use axum::body::Body;
        use axum::extract::Request;
        use futures::StreamExt;
        use tokio_util::codec::{FramedRead, LinesCodec};

        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let last_seq_ends = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let long_lines = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicBool::new(true));
        let writes_down = Arc::new(AtomicBool::new(false));
        let feeds = Arc::new(AtomicUsize::new(0));
        super::install_crypto();
        let client = super::http();
        let counters = (
            last_seq_ends.clone(),
            cuts.clone(),
            refused.clone(),
            long_lines.clone(),
        );
        let switches = (refusing.clone(), writes_down.clone());
        let handler = move |req: Request| {
            let (client, upstream, faults) = (client.clone(), upstream.clone(), faults.clone());
            let (ends, cut_count, refused, long_lines) = counters.clone();
            let (refusing, writes_down) = switches.clone();
            let feeds = feeds.clone();
            async move {
                let (parts, body) = req.into_parts();
                let path = parts.uri.path().to_string();
                let query: Vec<(String, String)> =
                    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                        .map(|(k, v)| {
                            // Opaque seqs back to pouchdb-server's integers.
                            let v = if k == "since" && faults.couchdb3 {
                                v.split('-').next().unwrap_or("0").to_string()
                            } else {
                                v.into_owned()
                            };
                            (k.into_owned(), v)
                        })
                        .collect();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                if parts.method == "POST" && path.ends_with("/_bulk_docs") {
                    if writes_down.load(Ordering::SeqCst) {
                        let answer =
                            r#"{"error":"unavailable","reason":"writes are down (test proxy)"}"#;
                        return json_answer(503, answer);
                    }
                    let marked = faults
                        .refuse_marker
                        .as_ref()
                        .is_some_and(|m| body.windows(m.len()).any(|w| w == m.as_bytes()));
                    if marked && refusing.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        let answer = r#"{"error":"bad_request","reason":"invalid UTF-8 JSON"}"#;
                        return json_answer(400, answer);
                    }
                }
                let mut up = client
                    .request(parts.method.clone(), format!("{upstream}{path}"))
                    .query(&query)
                    .body(body);
                for name in ["authorization", "content-type"] {
                    if let Some(v) = parts.headers.get(name) {
                        up = up.header(name, v.as_bytes());
                    }
                }
                let res = match up.send().await {
                    Ok(res) => res,
                    Err(_) => return json_answer(502, Body::empty()),
                };
                let status = res.status().as_u16();
                let continuous = query.iter().any(|(k, v)| k == "feed" && v == "continuous");
                if continuous && status == 200 {
                    let cut = feeds.fetch_add(1, Ordering::SeqCst) % 2 == 1;
                    let lines = FramedRead::new(
                        tokio_util::io::StreamReader::new(
                            res.bytes_stream().map(|r| r.map_err(std::io::Error::other)),
                        ),
                        LinesCodec::new(),
                    );
                    let couchdb3 = faults.couchdb3;
                    let out = futures::stream::unfold(
                        (lines, 0usize, false, faults.long_line),
                        move |(mut lines, mut n, done, mut long)| {
                            let (ends, cut_count) = (ends.clone(), cut_count.clone());
                            let long_lines = long_lines.clone();
                            async move {
                                if done {
                                    return None;
                                }
                                let line = lines.next().await?.ok()?;
                                if line.trim().is_empty() {
                                    return Some((
                                        Ok::<_, std::io::Error>(format!("{line}\n")),
                                        (lines, n, false, long),
                                    ));
                                }
                                // The long line goes just before the first change.
                                let mut out = String::new();
                                if let Some(len) = long.take() {
                                    long_lines.fetch_add(1, Ordering::SeqCst);
                                    out = long_line(len);
                                }
                                if !couchdb3 {
                                    out.push_str(&line);
                                    out.push('\n');
                                    return Some((Ok(out), (lines, n, false, long)));
                                }
                                let mut v: serde_json::Value = serde_json::from_str(&line).ok()?;
                                rewrite_seqs(&mut v);
                                let text = v.to_string();
                                n += 1;
                                if n <= CHANGES_PER_FEED {
                                    out.push_str(&text);
                                    out.push('\n');
                                    return Some((Ok(out), (lines, n, false, long)));
                                }
                                if cut {
                                    cut_count.fetch_add(1, Ordering::SeqCst);
                                    out.push_str(&text[..text.len() / 2]);
                                    Some((Ok(out), (lines, n, true, long)))
                                } else {
                                    ends.fetch_add(1, Ordering::SeqCst);
                                    // The feed ends as CouchDB's does, `last_seq` = the last change sent.
                                    let prev = v["seq"]
                                        .as_str()
                                        .unwrap_or("0-x")
                                        .split('-')
                                        .next()
                                        .unwrap()
                                        .parse::<u64>()
                                        .unwrap()
                                        - 1;
                                    let last = serde_json::json!({"last_seq": opaque(&prev.into()), "pending": 1});
                                    out.push_str(&format!("{last}\n"));
                                    Some((Ok(out), (lines, n, true, long)))
                                }
                            }
                        },
                    );
                    return json_answer(200, Body::from_stream(out));
                }
                let bytes = res.bytes().await.unwrap_or_default();
                let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(mut v)
                        if faults.couchdb3
                            && (path.ends_with("/_changes") || path.matches('/').count() == 1) =>
                    {
                        rewrite_seqs(&mut v);
                        v.to_string().into_bytes().into()
                    }
                    _ => bytes,
                };
                json_answer(status, bytes)
            }
        };
        let app = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        CouchDb3Proxy {
            port,
            last_seq_ends,
            cuts,
            refused,
            long_lines,
            refusing,
            writes_down,
            task,
        }
    }
}
