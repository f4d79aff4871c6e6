//! The CouchDB HTTP client: one keep-alive connection pool, basic auth on every
//! request, `Content-Type: application/json` on every request, and errors that
//! never hold `DB_PASS` (credentials travel in a header, never in a URL).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

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

/// The CouchDB server and database that `DB_*` name.
pub struct Couch {
    http: reqwest::Client,
    feed: reqwest::Client,
    /// `http://host:port`, without credentials.
    server: String,
    db: String,
    /// The database path segment, percent-encoded.
    db_path: String,
    user: String,
    pass: Secret,
}

impl fmt::Debug for Couch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Couch({}/{})", self.server, self.db)
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
    /// A client for the server and database of `config`.
    pub fn new(config: &Config) -> Result<Couch, CouchError> {
        let host = config.db_host.trim_end_matches('/');
        let server = if host.starts_with("http://") || host.starts_with("https://") {
            format!("{host}:{}", config.db_port)
        } else {
            format!("http://{host}:{}", config.db_port)
        };
        let build = |timeout: Option<Duration>| {
            let mut b = crate::net::http_client_builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_max_idle_per_host(POOL_IDLE)
                .tcp_nodelay(true);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            b.build().map_err(|e| CouchError::Unreachable {
                url: server.clone(),
                reason: format!("cannot build an HTTP client: {e}"),
            })
        };
        Ok(Couch {
            http: build(Some(REQUEST_TIMEOUT))?,
            // The continuous feed never ends; the relay watches heartbeats instead.
            feed: build(None)?,
            db_path: encode_segment(&config.db_name),
            db: config.db_name.clone(),
            server,
            user: config.db_user.clone(),
            pass: config.db_pass.clone(),
        })
    }

    /// `http://host:port/db`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.server, self.db)
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        query: &[(&str, Cow<'_, str>)],
    ) -> reqwest::RequestBuilder {
        let url = if path.is_empty() {
            format!("{}/{}", self.server, self.db_path)
        } else {
            format!("{}/{}/{path}", self.server, self.db_path)
        };
        client
            .request(method, url)
            .basic_auth(&self.user, Some(self.pass.expose()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .query(query)
    }

    fn unreachable(&self, e: &reqwest::Error) -> CouchError {
        CouchError::Unreachable {
            url: self.server.clone(),
            reason: network_reason(e),
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
        let mut req = self.request(&self.http, method, path, query);
        if let Some(body) = body {
            req = req.body(body);
        }
        let res = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = res.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(CouchError::Unauthorized {
                url: self.server.clone(),
                user: self.user.clone(),
                status,
            });
        }
        let bytes = res.bytes().await.map_err(|e| self.unreachable(&e))?;
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
        let bytes = self
            .call_ok(Method::POST, "_bulk_docs", &[], Some(body), &[201, 202])
            .await?;
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

    /// The number of documents, through view `count`.
    pub async fn count(&self) -> Result<u64, CouchError> {
        #[derive(Deserialize)]
        struct Row {
            value: serde_json::Value,
        }
        #[derive(Deserialize)]
        struct Rows {
            rows: Vec<Row>,
        }
        let bytes = self
            .call_ok(Method::GET, "_design/data/_view/count", &[], None, &[200])
            .await?;
        let rows: Rows = Couch::parse("GET _view/count", &bytes)?;
        Ok(rows
            .rows
            .first()
            .and_then(|r| r.value.as_f64())
            .map(|v| v as u64)
            .unwrap_or(0))
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
            .request(&self.feed, Method::GET, "_changes", &query)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        if matches!(status.as_u16(), 401 | 403) {
            return Err(CouchError::Unauthorized {
                url: self.server.clone(),
                user: self.user.clone(),
                status,
            });
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
        self.unreachable(e)
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
