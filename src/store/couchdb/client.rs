//! The CouchDB HTTP client: one keep-alive connection pool for the nodes of
//! `DB_HOST` (requests go to one, and move to the next when it stops
//! answering), a `_session` cookie per node (basic auth where a node has no
//! sessions), `Content-Type: application/json` on every request, and errors
//! that never hold `DB_PASS` or the cookie (both travel in headers, never in
//! a URL, and no message prints a header).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::blob::{Blob, Doc};
use crate::config::{Config, Secret};

/// How long a connection attempt may take; an unreachable CouchDB fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an ordinary request may take before it counts as failed (a write
/// that times out is spooled and retried with the same ids, so no duplicate).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle keep-alive connections kept per host: the writer, the relay, readers.
const POOL_IDLE: usize = 32;

/// Name of the design document the original created and that we keep using.
pub const DESIGN_DOC: &str = "_design/data";

/// The design document installed when the database has none: the original's
/// views by name (`all` keyed by timestamp, `count` summing one per doc), but
/// `all` emits no value (rows are read with `include_docs`) and `count` uses
/// the built-in `_sum`, which needs no JavaScript reduce.
const DESIGN_BODY: &str = r#"{"_id":"_design/data","language":"javascript","views":{"all":{"map":"function (doc) { if (typeof doc.timestamp === 'number') emit(doc.timestamp, null); }"},"count":{"map":"function (doc) { emit(doc._id, 1); }","reduce":"_sum"}}}"#;

/// Local (never replicated) document holding the database's epoch.
const EPOCH_DOC: &str = "_local/kpiggybank";

/// Why a CouchDB request failed; the message never holds a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CouchError {
    /// No connection, a cut connection, or a timeout.
    #[error("cannot reach CouchDB at {url}: {reason}")]
    Unreachable {
        /// Server address (no credentials in it).
        url: String,
        /// What the network said.
        reason: String,
    },
    /// CouchDB refused the credentials.
    #[error(
        "CouchDB at {url} refused the credentials of DB_USER={user:?} ({status}): check DB_USER and DB_PASS"
    )]
    Unauthorized {
        /// Server address.
        url: String,
        /// `DB_USER`.
        user: String,
        /// 401 or 403.
        status: StatusCode,
    },
    /// CouchDB answered with an unexpected status.
    #[error("CouchDB answered {status} to {what}: {body}")]
    Status {
        /// The request, e.g. `PUT /bid_kpi`.
        what: String,
        /// The status.
        status: StatusCode,
        /// CouchDB's `error` and `reason`, shortened.
        body: String,
    },
    /// CouchDB answered something that is not what its API promises.
    #[error("CouchDB answered {what} with something unexpected: {reason}")]
    Protocol {
        /// The request.
        what: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl CouchError {
    /// True when trying again later may succeed (CouchDB away, overloaded,
    /// or the database briefly missing while it is re-created).
    pub fn is_transient(&self) -> bool {
        match self {
            CouchError::Unreachable { .. } => true,
            CouchError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 404 | 408 | 409 | 429)
            }
            CouchError::Unauthorized { .. } | CouchError::Protocol { .. } => false,
        }
    }
}

/// One result of `_bulk_docs`.
#[derive(Debug, Deserialize)]
pub struct BulkResult {
    /// The document id.
    #[serde(default)]
    pub id: String,
    /// Set when this document failed (`conflict`, `forbidden`, …).
    pub error: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// What `_bulk_docs` did with one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocOutcome {
    /// Stored now, or already stored by an earlier try (a conflict on our own id).
    Stored,
    /// Not stored, but a later try may succeed.
    Retry(String),
    /// Refused for good (validation, size).
    Refused(String),
}

impl BulkResult {
    /// Classifies a result of writing a new blob with a kpiggybank-chosen id.
    pub fn outcome(&self) -> DocOutcome {
        let reason = || {
            format!(
                "{}: {}",
                self.error.as_deref().unwrap_or(""),
                self.reason.as_deref().unwrap_or("")
            )
        };
        match self.error.as_deref() {
            // Ids are ours and unique: a conflict means an earlier try stored it.
            None | Some("conflict") => DocOutcome::Stored,
            Some("forbidden" | "unauthorized" | "too_large" | "bad_request") => {
                DocOutcome::Refused(reason())
            }
            Some(_) => DocOutcome::Retry(reason()),
        }
    }
}

/// A row of a view read with `include_docs=true`.
#[derive(Debug, Deserialize)]
pub struct ViewRow<'a> {
    /// The emitted key (the timestamp for view `all`).
    pub key: serde_json::Value,
    /// The document id.
    pub id: String,
    /// The document, `_rev` included.
    #[serde(borrow)]
    pub doc: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ViewRows<'a> {
    #[serde(borrow)]
    rows: Vec<ViewRow<'a>>,
}

/// One change of a `_changes` answer (a continuous feed line, or an element of `results`).
#[derive(Debug, Deserialize)]
pub struct ChangeLine<'a> {
    /// Its seq, opaque.
    pub seq: Option<serde_json::Value>,
    /// The document id.
    pub id: Option<String>,
    /// True for a deletion (a smash).
    #[serde(default)]
    pub deleted: bool,
    /// The document, with `include_docs=true`.
    #[serde(borrow)]
    pub doc: Option<&'a RawValue>,
    /// Present on the line that ends a continuous feed.
    pub last_seq: Option<serde_json::Value>,
    /// Present when CouchDB reports a feed error.
    pub error: Option<serde_json::Value>,
}

/// A non-continuous `_changes` answer.
#[derive(Debug, Deserialize)]
pub struct ChangesPage<'a> {
    /// The changes.
    #[serde(borrow)]
    pub results: Vec<ChangeLine<'a>>,
    /// Where the answer ends.
    pub last_seq: Option<serde_json::Value>,
}

/// CouchDB's default session lifetime is 600 s (`[chttpd_auth] timeout`):
/// a cookie is renewed after half of it, so it never expires in use even
/// when a request waits long in a queue.
const SESSION_REFRESH: Duration = Duration::from_secs(300);

/// The name of CouchDB's session cookie.
const SESSION_COOKIE: &str = "AuthSession";

/// A session cookie's `name=value`, never printed.
#[derive(Clone, PartialEq, Eq)]
struct Cookie(String);

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(***)")
    }
}

/// How requests to one node prove who we are.
#[derive(Debug, Clone)]
enum Session {
    /// Not logged in yet (or the cookie was refused): log in first.
    None,
    /// A `_session` cookie and when it was issued.
    Cookie(Cookie, Instant),
    /// The node has no `_session`: basic auth on every request.
    Basic,
}

/// The credentials one request carries.
#[derive(Debug, Clone)]
enum Auth {
    Cookie(Cookie),
    Basic,
}

/// One CouchDB node of `DB_HOST`.
struct Node {
    /// `http://host:port`, without credentials.
    url: String,
    session: tokio::sync::Mutex<Session>,
}

/// Which failures a request may be sent again to another node after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Any failure (connection, timeout, 5xx): repeating it changes nothing,
    /// as for reads and for writes of documents with our own ids.
    Idempotent,
    /// Only a connection that never opened: the request was not sent, so
    /// its outcome is known (deletions by revision, whose repeat would
    /// read as "someone else deleted it").
    Unsent,
}

/// The CouchDB nodes and database that `DB_*` name; requests go to the
/// current node and move on to the next one when it stops answering.
pub struct Couch {
    http: reqwest::Client,
    feed: reqwest::Client,
    nodes: Vec<Node>,
    /// Index of the node requests go to.
    current: AtomicUsize,
    db: String,
    /// The database path segment, percent-encoded.
    db_path: String,
    user: String,
    pass: Secret,
}

impl fmt::Debug for Couch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Couch({})", self.describe())
    }
}

/// Percent-encodes one URL path segment (database names hold `$()+`, ids anything).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reason chain of a network error, without the URL's query.
fn network_reason(e: &reqwest::Error) -> String {
    let mut reason = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "connection broken".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// The `AuthSession` cookie an answer sets, as `name=value`.
fn session_cookie(res: &reqwest::Response) -> Option<Cookie> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| {
            pair.split_once('=')
                .is_some_and(|(name, value)| name.trim() == SESSION_COOKIE && !value.is_empty())
        })
        .map(|pair| Cookie(pair.trim().to_string()))
}

/// `error: reason` of a CouchDB error body, shortened.
fn error_body(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: Option<String>,
        reason: Option<String>,
    }
    match serde_json::from_slice::<Body>(bytes) {
        Ok(Body {
            error: Some(e),
            reason,
        }) => format!("{e}: {}", reason.unwrap_or_default()),
        _ => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    }
}

impl Couch {
    /// A client for the nodes and database of `config`.
    pub fn new(config: &Config) -> Result<Couch, CouchError> {
        let first = config.db_nodes.first().cloned().unwrap_or_default();
        let build = |timeout: Option<Duration>| {
            let mut b = crate::net::http_client_builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_max_idle_per_host(POOL_IDLE)
                .tcp_nodelay(true);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            b.build().map_err(|e| CouchError::Unreachable {
                url: first.clone(),
                reason: format!("cannot build an HTTP client: {e}"),
            })
        };
        Ok(Couch {
            http: build(Some(REQUEST_TIMEOUT))?,
            // The continuous feed never ends; the relay watches heartbeats instead.
            feed: build(None)?,
            nodes: config
                .db_nodes
                .iter()
                .map(|url| Node {
                    url: url.clone(),
                    session: tokio::sync::Mutex::new(Session::None),
                })
                .collect(),
            current: AtomicUsize::new(0),
            db_path: encode_segment(&config.db_name),
            db: config.db_name.clone(),
            user: config.db_user.clone(),
            pass: config.db_pass.clone(),
        })
    }

    /// `http://host:port/db` of the current node, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.nodes[self.current_node()].url, self.db)
    }

    /// The index of the node requests go to now.
    pub fn current_node(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Moves requests from node `from` to the next one, unless another
    /// request already moved them; a no-op with a single node.
    pub fn fail_over(&self, from: usize) {
        let n = self.nodes.len();
        if n < 2 {
            return;
        }
        let to = (from + 1) % n;
        if self
            .current
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                "CouchDB node {} does not answer; going on with {}",
                self.nodes[from].url,
                self.nodes[to].url
            );
        }
    }

    fn unreachable(&self, node: usize, e: &reqwest::Error) -> CouchError {
        CouchError::Unreachable {
            url: self.nodes[node].url.clone(),
            reason: network_reason(e),
        }
    }

    fn unauthorized(&self, node: usize, status: StatusCode) -> CouchError {
        CouchError::Unauthorized {
            url: self.nodes[node].url.clone(),
            user: self.user.clone(),
            status,
        }
    }

    /// The credentials for the next request to `node`, logging in first
    /// when it has no fresh session: one login at a time per node, and the
    /// requests waiting meanwhile use its cookie.
    async fn auth(&self, node: usize) -> Result<Auth, CouchError> {
        let mut session = self.nodes[node].session.lock().await;
        match &*session {
            Session::Basic => return Ok(Auth::Basic),
            Session::Cookie(cookie, since) if since.elapsed() < SESSION_REFRESH => {
                return Ok(Auth::Cookie(cookie.clone()));
            }
            _ => {}
        }
        *session = self.log_in(node).await?;
        Ok(match &*session {
            Session::Cookie(cookie, _) => Auth::Cookie(cookie.clone()),
            _ => Auth::Basic,
        })
    }

    /// `POST /_session`: CouchDB checks the password (a slow PBKDF2) once
    /// and hands out a cookie that later requests carry instead.
    async fn log_in(&self, node: usize) -> Result<Session, CouchError> {
        let body = serde_json::json!({ "name": &self.user, "password": self.pass.expose() });
        let res = self
            .http
            .post(format!("{}/_session", self.nodes[node].url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(node, &e))?;
        let status = res.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(self.unauthorized(node, status));
        }
        if status.is_server_error() {
            let bytes = res.bytes().await.unwrap_or_default();
            return Err(CouchError::Status {
                what: "POST /_session".into(),
                status,
                body: error_body(&bytes),
            });
        }
        match session_cookie(&res) {
            Some(cookie) if status.is_success() => Ok(Session::Cookie(cookie, Instant::now())),
            _ => {
                tracing::info!(
                    "CouchDB node {} has no cookie sessions ({status}); using basic auth",
                    self.nodes[node].url
                );
                Ok(Session::Basic)
            }
        }
    }

    /// Forgets `node`'s cookie after CouchDB refused it (expired, or the
    /// node restarted with another secret), unless a newer one replaced it.
    async fn drop_cookie(&self, node: usize, refused: &Cookie) {
        let mut session = self.nodes[node].session.lock().await;
        if matches!(&*session, Session::Cookie(c, _) if c == refused) {
            *session = Session::None;
        }
    }

    /// Keeps the renewed cookie CouchDB sends once a session is past half its life.
    async fn renew_cookie(&self, node: usize, res: &reqwest::Response) {
        if let Some(cookie) = session_cookie(res) {
            *self.nodes[node].session.lock().await = Session::Cookie(cookie, Instant::now());
        }
    }

    /// Sends one request to the current node, failing over to the next
    /// ones as `retry` allows, and logging in again once on a 401.
    async fn send(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
        body: Option<bytes::Bytes>,
        retry: Retry,
    ) -> Result<reqwest::Response, CouchError> {
        let mut last_error = None;
        for _ in 0..self.nodes.len() {
            let node = self.current_node();
            match self
                .send_to(client, node, &method, path, query, body.clone())
                .await
            {
                Ok(res) if res.status().is_server_error() && retry == Retry::Idempotent => {
                    if self.nodes.len() < 2 {
                        return Ok(res);
                    }
                    tracing::debug!(
                        "CouchDB node {} answered {}",
                        self.nodes[node].url,
                        res.status()
                    );
                    self.fail_over(node);
                    last_error = Some(Ok(res));
                }
                Ok(res) => return Ok(res),
                Err((e, sent)) => {
                    let may_retry = match retry {
                        Retry::Idempotent => matches!(e, CouchError::Unreachable { .. }),
                        Retry::Unsent => !sent,
                    };
                    if !may_retry {
                        return Err(e);
                    }
                    self.fail_over(node);
                    last_error = Some(Err(e));
                }
            }
        }
        last_error.expect("DB_HOST names at least one node")
    }

    /// One request to `node`; an error says whether the request may have been sent.
    async fn send_to(
        &self,
        client: &reqwest::Client,
        node: usize,
        method: &Method,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, (CouchError, bool)> {
        let url = if path.is_empty() {
            format!("{}/{}", self.nodes[node].url, self.db_path)
        } else {
            format!("{}/{}/{path}", self.nodes[node].url, self.db_path)
        };
        let mut refreshed = false;
        loop {
            let auth = self.auth(node).await.map_err(|e| (e, false))?;
            let mut req = client
                .request(method.clone(), &url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "application/json")
                .query(query);
            req = match &auth {
                Auth::Cookie(cookie) => req.header(reqwest::header::COOKIE, &cookie.0),
                Auth::Basic => req.basic_auth(&self.user, Some(self.pass.expose())),
            };
            if let Some(body) = &body {
                req = req.body(body.clone());
            }
            let res = req
                .send()
                .await
                .map_err(|e| (self.unreachable(node, &e), !e.is_connect()))?;
            let status = res.status();
            match (&auth, status.as_u16()) {
                // A refused cookie is renewed once; a refused renewal is the answer.
                (Auth::Cookie(cookie), 401) if !refreshed => {
                    self.drop_cookie(node, cookie).await;
                    refreshed = true;
                }
                (_, 401 | 403) => return Err((self.unauthorized(node, status), true)),
                _ => {
                    if matches!(auth, Auth::Cookie(_)) {
                        self.renew_cookie(node, &res).await;
                    }
                    return Ok(res);
                }
            }
        }
    }

    /// Sends a request and reads the whole answer; 401/403 become [`CouchError::Unauthorized`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
        body: Option<String>,
    ) -> Result<(StatusCode, bytes::Bytes), CouchError> {
        self.call_as(method, path, query, body, Retry::Idempotent)
            .await
    }

    async fn call_as(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
        body: Option<String>,
        retry: Retry,
    ) -> Result<(StatusCode, bytes::Bytes), CouchError> {
        let node = self.current_node();
        let res = self
            .send(&self.http, method, path, query, body.map(Into::into), retry)
            .await?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| self.unreachable(node, &e))?;
        Ok((status, bytes))
    }

    /// Like [`Couch::call`], but any status other than `ok` is an error.
    pub async fn call_ok(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
        body: Option<String>,
        ok: &[u16],
    ) -> Result<bytes::Bytes, CouchError> {
        let what = format!("{method} /{}/{path}", self.db);
        let (status, bytes) = self.call(method, path, query, body).await?;
        if ok.contains(&status.as_u16()) {
            Ok(bytes)
        } else {
            Err(CouchError::Status {
                what,
                status,
                body: error_body(&bytes),
            })
        }
    }

    /// Parses an answer as `T`, naming the request when it does not fit.
    pub fn parse<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, CouchError> {
        serde_json::from_slice(bytes).map_err(|e| CouchError::Protocol {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// Makes sure the database, the design document and the epoch document
    /// exist; returns the epoch. Safe to run from several nodes at once.
    pub async fn ensure_database(&self) -> Result<String, CouchError> {
        // GET first: it also checks the credentials before any PUT.
        let (status, bytes) = self.call(Method::GET, "", &[], None).await?;
        match status.as_u16() {
            200 => {}
            404 => {
                let what = format!("PUT /{}", self.db);
                let (status, bytes) = self.call(Method::PUT, "", &[], None).await?;
                // 412: another node created it first.
                if !matches!(status.as_u16(), 201 | 202 | 412) {
                    return Err(CouchError::Status {
                        what,
                        status,
                        body: error_body(&bytes),
                    });
                }
                tracing::info!("created CouchDB database {}", self.describe());
            }
            _ => {
                return Err(CouchError::Status {
                    what: format!("GET /{}", self.db),
                    status,
                    body: error_body(&bytes),
                });
            }
        }
        self.ensure_design().await?;
        self.ensure_epoch().await
    }

    async fn ensure_design(&self) -> Result<(), CouchError> {
        let (status, bytes) = self.call(Method::GET, DESIGN_DOC, &[], None).await?;
        if status.as_u16() == 200 {
            let what = format!("GET /{}/{DESIGN_DOC}", self.db);
            let design: serde_json::Value = Couch::parse(&what, &bytes)?;
            for view in ["all", "count"] {
                if design["views"][view]["map"].as_str().is_none() {
                    return Err(CouchError::Protocol {
                        what,
                        reason: format!(
                            "the design document exists but has no view `{view}`; kpiggybank reads ranges through `all` (emit(doc.timestamp, …)) and counts through `count`"
                        ),
                    });
                }
            }
            return Ok(());
        }
        // 409: another node installed it first.
        self.call_ok(
            Method::PUT,
            DESIGN_DOC,
            &[],
            Some(DESIGN_BODY.to_string()),
            &[201, 202, 409],
        )
        .await?;
        Ok(())
    }

    /// Installs the document `id` unless it holds `"kpiggybank_version":
    /// version` already; `body` writes it, given the revision it replaces.
    pub async fn ensure_versioned(
        &self,
        id: &str,
        version: u64,
        body: impl Fn(Option<&str>) -> String,
    ) -> Result<(), CouchError> {
        let (status, bytes) = self.call(Method::GET, id, &[], None).await?;
        let rev = if status.as_u16() == 200 {
            let what = format!("GET /{}/{id}", self.db);
            let doc: serde_json::Value = Couch::parse(&what, &bytes)?;
            if doc["kpiggybank_version"].as_u64() == Some(version) {
                return Ok(());
            }
            doc["_rev"].as_str().map(str::to_string)
        } else {
            None
        };
        // 409: another node wrote it first; theirs is as good.
        self.call_ok(
            Method::PUT,
            id,
            &[],
            Some(body(rev.as_deref())),
            &[201, 202, 409],
        )
        .await?;
        Ok(())
    }

    async fn ensure_epoch(&self) -> Result<String, CouchError> {
        #[derive(Deserialize)]
        struct Epoch {
            epoch: String,
        }
        let what = format!("GET /{}/{EPOCH_DOC}", self.db);
        for _ in 0..3 {
            let (status, bytes) = self.call(Method::GET, EPOCH_DOC, &[], None).await?;
            if status.as_u16() == 200 {
                return Ok(Couch::parse::<Epoch>(&what, &bytes)?.epoch);
            }
            let body = serde_json::json!({ "epoch": &*crate::feed::new_epoch() }).to_string();
            // 409: another node wrote it first; read theirs.
            self.call_ok(Method::PUT, EPOCH_DOC, &[], Some(body), &[201, 202, 409])
                .await?;
        }
        Err(CouchError::Protocol {
            what,
            reason: "the epoch document cannot be read back after writing it".into(),
        })
    }

    /// `GET /db`: the database's info (`update_seq`, sizes).
    pub async fn info(&self) -> Result<serde_json::Value, CouchError> {
        let bytes = self.call_ok(Method::GET, "", &[], None, &[200]).await?;
        Couch::parse(&format!("GET /{}", self.db), &bytes)
    }

    /// Writes new blobs with their own ids; one result per blob, in order.
    pub async fn bulk_docs(
        &self,
        blobs: &[(String, String)],
    ) -> Result<Vec<BulkResult>, CouchError> {
        let size = blobs.iter().map(|(_, d)| d.len() + 1).sum::<usize>() + 16;
        let mut body = String::with_capacity(size);
        body.push_str("{\"docs\":[");
        for (i, (_, doc)) in blobs.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(doc);
        }
        body.push_str("]}");
        let what = format!("POST /{}/_bulk_docs", self.db);
        let bytes = self
            .call_ok(Method::POST, "_bulk_docs", &[], Some(body), &[201, 202])
            .await?;
        let results: Vec<BulkResult> = Couch::parse(&what, &bytes)?;
        if results.len() != blobs.len() {
            return Err(CouchError::Protocol {
                what,
                reason: format!("{} results for {} documents", results.len(), blobs.len()),
            });
        }
        Ok(results)
    }

    /// `_bulk_docs` body text of blobs, as (id, doc) pairs.
    pub fn bulk_pairs(blobs: &[Blob]) -> Vec<(String, String)> {
        blobs
            .iter()
            .map(|b| (b.id.to_string(), b.doc.as_str().to_string()))
            .collect()
    }

    /// Deletes documents by id and revision; one result per document.
    pub async fn bulk_delete(
        &self,
        docs: &[(String, String)],
    ) -> Result<Vec<BulkResult>, CouchError> {
        let docs: Vec<serde_json::Value> = docs
            .iter()
            .map(|(id, rev)| serde_json::json!({"_id": id, "_rev": rev, "_deleted": true}))
            .collect();
        let body = serde_json::json!({ "docs": docs }).to_string();
        let what = format!("POST /{}/_bulk_docs", self.db);
        // Not repeated once sent: a repeat would meet our own deletions as
        // conflicts, and the smash would not return blobs it took.
        let (status, bytes) = self
            .call_as(Method::POST, "_bulk_docs", &[], Some(body), Retry::Unsent)
            .await?;
        if !matches!(status.as_u16(), 201 | 202) {
            return Err(CouchError::Status {
                what,
                status,
                body: error_body(&bytes),
            });
        }
        Couch::parse(&what, &bytes)
    }

    /// Reads view `all` with `include_docs`; the raw answer, parsed by [`Couch::rows`].
    pub async fn view_all(
        &self,
        query: &[(&str, Cow<'_, str>)],
    ) -> Result<bytes::Bytes, CouchError> {
        self.call_ok(Method::GET, "_design/data/_view/all", query, None, &[200])
            .await
    }

    /// Reads any view of the database; the raw answer.
    pub async fn view(
        &self,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
    ) -> Result<bytes::Bytes, CouchError> {
        self.call_ok(Method::GET, path, query, None, &[200]).await
    }

    /// The rows of a view answer.
    pub fn rows(bytes: &[u8]) -> Result<Vec<ViewRow<'_>>, CouchError> {
        Ok(Couch::parse::<ViewRows>("GET _view/all", bytes)?.rows)
    }

    /// The number of blobs: every document but the design documents.
    pub async fn count(&self) -> Result<u64, CouchError> {
        // From the database's own `doc_count` (its primary index: nothing to
        // build, unlike a view after a burst of writes), less the design
        // documents, which views never counted.
        #[derive(Deserialize)]
        struct Rows {
            rows: Vec<serde_json::Value>,
        }
        let info = self.info().await?;
        let docs = info["doc_count"]
            .as_u64()
            .ok_or_else(|| CouchError::Protocol {
                what: format!("GET /{}", self.db),
                reason: "no doc_count in the database's info".into(),
            })?;
        let query: [(&str, Cow<'_, str>); 2] = [
            ("startkey", "\"_design/\"".into()),
            ("endkey", "\"_design0\"".into()),
        ];
        let bytes = self
            .call_ok(Method::GET, "_all_docs", &query, None, &[200])
            .await?;
        let design: Rows = Couch::parse("GET _all_docs (design documents)", &bytes)?;
        Ok(docs.saturating_sub(design.rows.len() as u64))
    }

    /// One document's text, `None` when missing or deleted.
    pub async fn get(&self, id: &str) -> Result<Option<bytes::Bytes>, CouchError> {
        let path = encode_segment(id);
        let what = format!("GET /{}/{path}", self.db);
        let (status, bytes) = self.call(Method::GET, &path, &[], None).await?;
        match status.as_u16() {
            200 => Ok(Some(bytes)),
            404 => Ok(None),
            _ => Err(CouchError::Status {
                what,
                status,
                body: error_body(&bytes),
            }),
        }
    }

    /// A non-continuous `_changes` read.
    pub async fn changes(
        &self,
        query: &[(&str, Cow<'_, str>)],
    ) -> Result<bytes::Bytes, CouchError> {
        self.call_ok(Method::GET, "_changes", query, None, &[200])
            .await
    }

    /// Opens the continuous `_changes` feed after `since`; the caller reads the body.
    pub async fn changes_feed(
        &self,
        since: &str,
        heartbeat: Duration,
    ) -> Result<reqwest::Response, CouchError> {
        let query = [
            ("feed", Cow::Borrowed("continuous")),
            ("include_docs", Cow::Borrowed("true")),
            ("heartbeat", Cow::Owned(heartbeat.as_millis().to_string())),
            ("since", Cow::Borrowed(since)),
        ];
        let res = self
            .send(
                &self.feed,
                Method::GET,
                "_changes",
                &query,
                None,
                Retry::Idempotent,
            )
            .await?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let bytes = res.bytes().await.unwrap_or_default();
        Err(CouchError::Status {
            what: format!("GET /{}/_changes", self.db),
            status,
            body: error_body(&bytes),
        })
    }

    /// Maps a transport error of a streamed body, for the relay.
    pub fn stream_error(&self, e: &reqwest::Error) -> CouchError {
        self.unreachable(self.current_node(), e)
    }
}

/// A document's fields in CouchDB's order, values as raw JSON.
struct OrderedFields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for OrderedFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = OrderedFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some((key, value)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push((key, value));
                }
                Ok(OrderedFields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// A stored document as kpiggybank hands it out: `_id` first, then the
/// blob's fields in stored order; `_rev` and CouchDB's other `_` fields
/// dropped (blobs cannot have top-level `_` fields of their own).
pub fn blob_doc(raw: &str) -> Result<(Doc, Option<String>), CouchError> {
    let fields: OrderedFields = serde_json::from_str(raw).map_err(|e| CouchError::Protocol {
        what: "a document".into(),
        reason: e.to_string(),
    })?;
    let mut id = None;
    let mut rev = None;
    let mut rest = String::with_capacity(raw.len());
    for (key, value) in &fields.0 {
        match key.as_ref() {
            "_id" => id = Some(value.get()),
            "_rev" => rev = serde_json::from_str::<String>(value.get()).ok(),
            k if k.starts_with('_') => {}
            k => {
                rest.push(',');
                rest.push_str(&serde_json::to_string(k).expect("a string serializes"));
                rest.push(':');
                rest.push_str(value.get());
            }
        }
    }
    let id = id.ok_or_else(|| CouchError::Protocol {
        what: "a document".into(),
        reason: "it has no `_id`".into(),
    })?;
    Ok((Doc::from_stored(format!("{{\"_id\":{id}{rest}}}")), rev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_come_back_as_posted_with_id_first_and_no_rev() {
        let (doc, rev) =
            blob_doc(r#"{"timestamp":1.0,"b":[1, 2],"a":9007199254740993,"_id":"x","_rev":"1-a"}"#)
                .unwrap();
        assert_eq!(
            doc.as_str(),
            r#"{"_id":"x","timestamp":1.0,"b":[1, 2],"a":9007199254740993}"#
        );
        assert_eq!(rev.as_deref(), Some("1-a"));
    }

    #[test]
    fn bulk_outcomes() {
        let r = |e: Option<&str>| BulkResult {
            id: "x".into(),
            error: e.map(String::from),
            reason: None,
        };
        assert_eq!(r(None).outcome(), DocOutcome::Stored);
        assert_eq!(r(Some("conflict")).outcome(), DocOutcome::Stored);
        assert!(matches!(
            r(Some("forbidden")).outcome(),
            DocOutcome::Refused(_)
        ));
        assert!(matches!(
            r(Some("unknown_error")).outcome(),
            DocOutcome::Retry(_)
        ));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("a+b$(c)"), "a%2Bb%24%28c%29");
        assert_eq!(encode_segment("_design/data"), "_design%2Fdata");
    }
}
