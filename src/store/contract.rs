//! The contract every store keeps, written once and run against each backend.
//!
//! Each check is an async function over a [`Fixture`], which opens stores of
//! one backend through [`super::open`] exactly as the server does.
//! `contract!` turns every check into one test per backend, so a failure
//! names both the backend and the promise it broke.
//!
//! CouchDB runs against a real pouchdb-server that each test starts from
//! `KPIGGYBANK_POUCHDB_SERVER` (set by `./scripts/test`). Without it the
//! CouchDB tests fail: a contract that quietly skipped its one remote backend
//! would prove nothing about it.
//!
//! The dummy store discards what it is given, so the checks about reading
//! blobs back cannot hold for it. It runs the checks it does promise (writes
//! accepted and published, the feed's seqs, epochs) plus one of its own
//! (reads answer samples); the list under `contract!(dummy …)` says which.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;

use super::{Opened, RangeCursor, RangeQuery};
use crate::blob::{Blob, Doc};
use crate::config::Config;
use crate::feed::{Change, FeedError, FeedEvent, FeedEvents, Seq};

/// How long a live event may take to arrive: CouchDB's reach the feed
/// through the `_changes` relay, a round trip or two after the write.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// More than any read in these checks returns, so "everything" is one page.
const ALL: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Embedded,
    Memory,
    CouchDb,
    Dummy,
}

/// Opens stores of one backend: fresh ones, and the newest one again.
struct Fixture {
    kind: Kind,
    /// Every store's `DATA_DIR` lives here (SQLite files, CouchDB spools).
    dir: tempfile::TempDir,
    pouch: Option<Pouch>,
    /// Stores opened fresh so far; each gets its own file or database.
    fresh: usize,
}

impl Fixture {
    async fn new(kind: Kind) -> Fixture {
        let pouch = match kind {
            Kind::CouchDb => Some(Pouch::start().await),
            _ => None,
        };
        Fixture {
            kind,
            dir: tempfile::tempdir().expect("a temp dir"),
            pouch,
            fresh: 0,
        }
    }

    fn vars(&self, n: usize) -> HashMap<String, String> {
        let backend = match self.kind {
            Kind::Embedded => "embedded",
            Kind::Memory => "memory",
            Kind::CouchDb => "couchdb",
            Kind::Dummy => "dummy",
        };
        let data_dir: PathBuf = self.dir.path().join(n.to_string());
        let mut vars: HashMap<String, String> = [
            ("DB_BACKEND", backend.to_string()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("DB_NAME", format!("contract_{n}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(pouch) = &self.pouch {
            vars.extend(pouch.vars());
        }
        vars
    }

    async fn open(&self, n: usize) -> Opened {
        let config = Config::from_vars(&self.vars(n)).expect("a valid test config");
        match super::open(&config).await {
            Ok(opened) => opened,
            Err(e) => panic!("[{:?}] open failed: {e}", self.kind),
        }
    }

    /// A new, empty store.
    async fn fresh(&mut self) -> Opened {
        self.fresh += 1;
        self.open(self.fresh).await
    }

    /// The newest fresh store again, as a restart (or a second node) opens it.
    async fn reopen(&self) -> Opened {
        self.open(self.fresh).await
    }

    /// Whether what was stored is there after a reopen.
    fn durable(&self) -> bool {
        matches!(self.kind, Kind::Embedded | Kind::CouchDb)
    }

    /// Whether seqs are integers this process hands out: then they can be
    /// ordered, and one beyond the newest was never made.
    fn local_seqs(&self) -> bool {
        self.kind != Kind::CouchDb
    }

    /// Whether `used_bytes` is recounted exactly from the stored blobs at
    /// open. CouchDB's comes from the database's own size figures, which
    /// pouchdb-server does not report at all.
    fn usage_survives_reopen(&self) -> bool {
        self.kind == Kind::Embedded
    }

    /// How long to watch for a live event that must not come: the local
    /// stores send during `write`, so nothing can be late; CouchDB's relay
    /// could still bring one a moment later.
    fn settle(&self) -> Duration {
        match self.kind {
            Kind::CouchDb => Duration::from_millis(700),
            _ => Duration::ZERO,
        }
    }
}

/// A pouchdb-server this test started, with an admin, killed when dropped.
struct Pouch {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

const POUCH_USER: &str = "kpiggybank";
const POUCH_PASS: &str = "contract-secret";

impl Pouch {
    async fn start() -> Pouch {
        let binary = std::env::var_os("KPIGGYBANK_POUCHDB_SERVER").unwrap_or_else(|| {
            panic!(
                "KPIGGYBANK_POUCHDB_SERVER is not set: the CouchDB store contract runs against \
                 a real pouchdb-server; run ./scripts/test, which installs it and sets the variable"
            )
        });
        assert!(
            PathBuf::from(&binary).exists(),
            "KPIGGYBANK_POUCHDB_SERVER={binary:?} does not exist: run ./scripts/test to install pouchdb-server"
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .args(["--in-memory", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            // It writes config.json and log.txt into the current directory.
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pouchdb-server starts");
        let pouch = Pouch {
            child,
            port,
            _dir: dir,
        };
        let http = crate::net::http_client_builder().build().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(&url).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "pouchdb-server did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // CouchDB 3 has no admin party: the store logs in, as in production.
        let res = http
            .put(format!("{url}/_config/admins/{POUCH_USER}"))
            .body(format!("\"{POUCH_PASS}\""))
            .send()
            .await
            .expect("pouchdb-server answers");
        assert!(res.status().is_success(), "creating the admin: {res:?}");
        pouch
    }

    fn vars(&self) -> Vec<(String, String)> {
        [
            ("DB_HOST", "127.0.0.1".to_string()),
            ("DB_PORT", self.port.to_string()),
            ("DB_USER", POUCH_USER.to_string()),
            ("DB_PASS", POUCH_PASS.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Pouch {
    fn drop(&mut self) {
        // Our own child, by its handle: never anyone else's pouchdb-server.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blob(id: &str, timestamp: i64, note: &str) -> Blob {
    Blob {
        id: id.into(),
        timestamp,
        doc: Doc::from_stored(format!(
            r#"{{"_id":"{id}","timestamp":{timestamp},"note":"{note}"}}"#
        )),
    }
}

/// Twelve blobs with ties on timestamp, written in neither timestamp nor id
/// order (so a store that answers in write order fails), some with text
/// whose UTF-8 bytes outnumber its characters.
fn sample_set(prefix: &str) -> Vec<Blob> {
    const TS: [i64; 12] = [50, 10, 30, 10, 20, 30, 30, 40, 10, 50, 60, 20];
    (0..12)
        .map(|i| {
            // 5 is prime to 12: every id once, in an order unlike the writes'.
            let id = format!("{prefix}{:02}", (i * 5) % 12);
            let note = if i % 3 == 0 {
                "ünïcødé ✓"
            } else {
                "plain"
            };
            blob(&id, TS[i], note)
        })
        .collect()
}

/// 45 blobs, 40 of them on one timestamp: more ties than any page, and more
/// than CouchDB's `PAGE_SLACK`, so paging must step over ties by id.
fn tie_set() -> Vec<Blob> {
    (0..45)
        .map(|i| {
            let ts = match i % 15 {
                0 => 99,
                7 => 101,
                _ => 100,
            };
            blob(&format!("t{:02}", (i * 7) % 45), ts, "tie")
        })
        .collect()
}

/// What a range read must return: in range, by (timestamp, id), limited.
fn expected(all: &[Blob], q: &RangeQuery) -> Vec<String> {
    let mut picked: Vec<&Blob> = all
        .iter()
        .filter(|b| q.start.is_none_or(|s| b.timestamp >= s))
        .filter(|b| q.end.is_none_or(|e| b.timestamp <= e))
        .collect();
    picked.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
    if q.descending {
        picked.reverse();
    }
    if let Some(limit) = q.limit {
        picked.truncate(limit as usize);
    }
    picked.iter().map(|b| b.doc.as_str().to_string()).collect()
}

fn texts(docs: &[Doc]) -> Vec<String> {
    docs.iter().map(|d| d.as_str().to_string()).collect()
}

fn bytes(docs: impl IntoIterator<Item = impl AsRef<str>>) -> u64 {
    docs.into_iter().map(|d| d.as_ref().len() as u64).sum()
}

fn doc_json(doc: &Doc) -> serde_json::Value {
    serde_json::from_str(doc.as_str()).expect("a stored doc is JSON")
}

fn query(start: Option<i64>, end: Option<i64>, descending: bool) -> RangeQuery {
    RangeQuery {
        start,
        end,
        limit: None,
        descending,
    }
}

async fn write_ok(o: &Opened, blobs: &[Blob]) {
    let results = o.store.write(blobs.to_vec()).await;
    assert_eq!(results.len(), blobs.len(), "one answer per blob");
    for (b, r) in blobs.iter().zip(results) {
        if let Err(e) = r {
            panic!("writing {}: {e}", b.id);
        }
    }
}

/// Reads a whole range page by page, following each page's cursor.
async fn read_paged(o: &Opened, q: &RangeQuery, page: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<RangeCursor> = None;
    for _ in 0..ALL {
        let p = o
            .store
            .range_page(q, cursor.as_ref(), page)
            .await
            .unwrap_or_else(|e| panic!("range {q:?} after {cursor:?}: {e}"));
        assert!(
            p.docs.len() <= page,
            "a page of {page} held {}",
            p.docs.len()
        );
        out.extend(texts(&p.docs));
        match p.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("range {q:?} in pages of {page} never ended");
}

/// The next `n` live changes; fails on a reset, a closed feed, or a timeout.
async fn changes(events: &mut FeedEvents, n: usize) -> Vec<Change> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(FeedEvent::Changes(c))) => got.extend(c),
            Ok(Some(FeedEvent::Reset { epoch, .. })) => {
                panic!("the feed reset (epoch {epoch}) though the store was not replaced")
            }
            Ok(None) => panic!("the live feed closed"),
            Err(_) => panic!(
                "{} of {n} live changes arrived within {EVENT_TIMEOUT:?}: {:?}",
                got.len(),
                got.iter().map(|c| &c.id).collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// Fails when the live feed brings anything more within the fixture's settle time.
async fn quiet(fx: &Fixture, events: &mut FeedEvents) {
    let extra = if fx.settle().is_zero() {
        match events.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => panic!("the live feed closed"),
        }
    } else {
        tokio::time::timeout(fx.settle(), events.recv())
            .await
            .ok()
            .flatten()
    };
    if let Some(e) = extra {
        panic!("the live feed brought more than was written: {e:?}");
    }
}

/// (seq, id, doc) of changes, to compare feeds whole.
fn entries(changes: &[Change]) -> Vec<(Seq, String, String)> {
    changes
        .iter()
        .map(|c| (c.seq.clone(), c.id.to_string(), c.doc.as_str().to_string()))
        .collect()
}

async fn since(o: &Opened, seq: Option<&Seq>, max: usize) -> Vec<Change> {
    o.feed
        .changes_since(seq, max)
        .await
        .unwrap_or_else(|e| panic!("changes since {seq:?}: {e}"))
}

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// get, count, last and range reads answer what was written, in range order.
async fn reads_answer_what_was_written(fx: &mut Fixture) {
    let o = fx.fresh().await;
    let all = sample_set("r");
    for chunk in all.chunks(5) {
        write_ok(&o, chunk).await;
    }
    assert_eq!(o.store.count().await.unwrap(), all.len() as u64);
    for b in &all {
        let got = o.store.get(&b.id).await.unwrap();
        assert_eq!(got.as_ref().map(Doc::as_str), Some(b.doc.as_str()));
    }
    assert_eq!(o.store.get("r99").await.unwrap(), None);
    // The greatest (timestamp, id): ties on the newest timestamp go by id.
    let newest = expected(&all, &query(None, None, true));
    let last = o.store.last().await.unwrap().expect("a last blob");
    assert_eq!(last.as_str(), newest[0]);

    let bounds = [
        (None, None),
        (Some(10), Some(30)), // bounds on stored timestamps: both inclusive
        (Some(11), Some(29)), // bounds between them
        (Some(30), None),
        (None, Some(10)),
        (Some(20), Some(20)),
        (Some(61), None),     // beyond every blob
        (Some(40), Some(20)), // reversed: nothing is in it
    ];
    for (start, end) in bounds {
        for descending in [false, true] {
            let q = query(start, end, descending);
            let want = expected(&all, &q);
            let page = o
                .store
                .range_page(&q, None, ALL)
                .await
                .unwrap_or_else(|e| panic!("range {q:?}: {e}"));
            assert_eq!(texts(&page.docs), want, "range {q:?}");
            assert_eq!(
                page.next, None,
                "range {q:?}: a page that is not full ends the read"
            );
            // `max` is the limit: the first `max` in range, and a cursor
            // at the last of them when the page is full.
            for max in [1, 2, 5] {
                let page = o.store.range_page(&q, None, max).await.unwrap();
                let n = want.len().min(max);
                assert_eq!(texts(&page.docs), want[..n], "range {q:?}, max {max}");
                if n == max {
                    let next = page.next.expect("a full page has a cursor");
                    let at = doc_json(page.docs.last().unwrap());
                    assert_eq!(next.timestamp, at["timestamp"].as_i64().unwrap());
                    assert_eq!(&*next.id, at["_id"].as_str().unwrap());
                }
            }
        }
    }
}

/// Paging with `range_page(after = cursor)` yields every blob once, across ties.
async fn pages_resume_after_the_cursor_across_ties(fx: &mut Fixture) {
    let o = fx.fresh().await;
    let all = tie_set();
    write_ok(&o, &all).await;
    for (start, end) in [(None, None), (Some(100), Some(100)), (Some(99), Some(100))] {
        for descending in [false, true] {
            let q = query(start, end, descending);
            let want = expected(&all, &q);
            for page in [1, 7, 17, 50] {
                assert_eq!(
                    read_paged(&o, &q, page).await,
                    want,
                    "range {q:?} in pages of {page}"
                );
            }
        }
    }
    // A cursor of the caller's own (as a client resumes): strictly after it.
    let after = RangeCursor {
        timestamp: 100,
        id: "t20".into(),
    };
    for descending in [false, true] {
        let q = query(None, None, descending);
        let mut want = expected(&all, &q);
        let at = want
            .iter()
            .position(|d| d.contains(r#""_id":"t20""#))
            .unwrap();
        want.drain(..=at);
        want.truncate(5);
        let page = o.store.range_page(&q, Some(&after), 5).await.unwrap();
        assert_eq!(
            texts(&page.docs),
            want,
            "5 after t20, descending {descending}"
        );
    }
}

/// Every written blob is on the live feed once, in seq order, as stored,
/// even when writes run concurrently.
async fn live_events_carry_every_write_once_in_seq_order(fx: &mut Fixture) {
    let mut o = fx.fresh().await;
    let writes: Vec<Vec<Blob>> = (0..8)
        .map(|w| {
            (0..5)
                .map(|i| blob(&format!("w{w}i{i}"), 1000 + i, "live"))
                .collect()
        })
        .collect();
    futures::future::join_all(writes.iter().map(|w| write_ok(&o, w))).await;
    let n = writes.iter().map(Vec::len).sum();
    let got = changes(&mut o.events, n).await;
    quiet(fx, &mut o.events).await;
    assert_eq!(got.len(), n, "each blob once");
    let written: HashMap<&str, &Blob> = writes.iter().flatten().map(|b| (&*b.id, b)).collect();
    let mut seen = HashSet::new();
    for c in &got {
        let b = written
            .get(&*c.id)
            .unwrap_or_else(|| panic!("{} was never written", c.id));
        assert_eq!(c.doc.as_str(), b.doc.as_str(), "{} as stored", c.id);
        assert!(seen.insert(c.id.clone()), "{} twice", c.id);
    }
    // CouchDB's seqs cannot be compared here: its feed order is checked
    // against `_changes` in `catch_up_agrees_with_the_live_feed`.
    if fx.local_seqs() {
        for pair in got.windows(2) {
            assert_eq!(
                o.feed.order(Some(&pair[0].seq), &pair[1].seq),
                Some(std::cmp::Ordering::Less),
                "seq {} then {}",
                pair[0].seq,
                pair[1].seq
            );
        }
    }
    // A write's blobs keep their order in the feed.
    let place: HashMap<&str, usize> = got.iter().enumerate().map(|(i, c)| (&*c.id, i)).collect();
    for w in &writes {
        let at: Vec<usize> = w.iter().map(|b| place[&*b.id]).collect();
        assert!(at.is_sorted(), "a write's blobs out of order: {at:?}");
    }
}

/// Catch-up reads (`changes_since`, `replay_start`) agree with the live feed.
async fn catch_up_agrees_with_the_live_feed(fx: &mut Fixture) {
    let mut o = fx.fresh().await;
    let all = sample_set("c");
    for chunk in all.chunks(4) {
        write_ok(&o, chunk).await;
    }
    let live = changes(&mut o.events, all.len()).await;
    quiet(fx, &mut o.events).await;
    let live = entries(&live);
    assert_eq!(
        entries(&since(&o, None, ALL).await),
        live,
        "since the start"
    );
    // Where the feed stood at open: everything written since.
    assert_eq!(
        entries(&since(&o, o.start_seq.as_ref(), ALL).await),
        live,
        "since start_seq {:?}",
        o.start_seq
    );
    for (k, (seq, _, _)) in live.iter().enumerate() {
        assert_eq!(
            entries(&since(&o, Some(seq), ALL).await),
            live[k + 1..],
            "since {seq}"
        );
    }
    // Small pages, each resumed from the last seq read, give it all once.
    for max in [1, 5] {
        let mut read = Vec::new();
        let mut from: Option<Seq> = None;
        loop {
            let page = since(&o, from.as_ref(), max).await;
            assert!(page.len() <= max, "{} changes for max {max}", page.len());
            let Some(last) = page.last() else { break };
            from = Some(last.seq.clone());
            read.extend(entries(&page));
            assert!(read.len() <= live.len(), "paging with max {max} repeats");
        }
        assert_eq!(read, live, "paged with max {max}");
    }
    for n in [0, 1, 5, all.len() - 1, all.len(), all.len() + 1, 100] {
        let start = o.feed.replay_start(n).await.unwrap();
        let want = &live[live.len() - n.min(live.len())..];
        assert_eq!(
            entries(&since(&o, start.as_ref(), ALL).await),
            want,
            "replay of the last {n} from {start:?}"
        );
        // A local feed holds blobs only; CouchDB's also counts its two
        // design documents (`_design/data` and `_design/kpiggybank`).
        let held = live.len() + if fx.local_seqs() { 0 } else { 2 };
        assert_eq!(start.is_none(), n >= held, "replay_start({n}) = {start:?}");
    }
}

/// `check_since` takes every seq the feed made and refuses what it cannot have.
async fn check_since_refuses_seqs_the_feed_cannot_have_made(fx: &mut Fixture) {
    let mut o = fx.fresh().await;
    if fx.local_seqs() {
        // Nothing handed out yet: 1 is ahead of the store.
        assert!(matches!(
            o.feed.check_since(&Seq::int(1)).await,
            Err(FeedError::BadSeq(_))
        ));
    }
    let all = sample_set("s");
    write_ok(&o, &all[..3]).await;
    let got = changes(&mut o.events, 3).await;
    for c in &got {
        o.feed
            .check_since(&c.seq)
            .await
            .unwrap_or_else(|e| panic!("seq {} it made: {e}", c.seq));
    }
    o.feed.check_since(&Seq::int(0)).await.expect("the start");
    for bad in [
        json!("garbage"),
        json!(-1),
        json!(1.5),
        json!(null),
        json!([1]),
        json!({"seq": 1}),
    ] {
        let r = o.feed.check_since(&Seq(bad.clone())).await;
        assert!(matches!(r, Err(FeedError::BadSeq(_))), "{bad}: {r:?}");
    }
    if fx.local_seqs() {
        let newest = got.last().unwrap().seq.as_int().expect("an integer seq");
        let r = o.feed.check_since(&Seq::int(newest + 1)).await;
        assert!(
            matches!(r, Err(FeedError::BadSeq(_))),
            "one beyond the newest: {r:?}"
        );
    }
}

/// `order` agrees with the feed's order for integer feeds, and is `None`
/// for CouchDB, whose seqs are opaque.
async fn order_is_the_feeds_or_none(fx: &mut Fixture) {
    let mut o = fx.fresh().await;
    let all = sample_set("o");
    for b in &all[..5] {
        write_ok(&o, std::slice::from_ref(b)).await;
    }
    let seqs: Vec<Seq> = changes(&mut o.events, 5)
        .await
        .into_iter()
        .map(|c| c.seq)
        .collect();
    for (i, a) in seqs.iter().enumerate() {
        let first = o.feed.order(None, a);
        if fx.local_seqs() {
            assert_eq!(first, Some(std::cmp::Ordering::Less), "start vs {a}");
        } else {
            assert_eq!(first, None, "start vs {a}");
        }
        for (j, b) in seqs.iter().enumerate() {
            let got = o.feed.order(Some(a), b);
            let want = fx.local_seqs().then(|| i.cmp(&j));
            assert_eq!(got, want, "{a} vs {b}");
        }
    }
}

/// The epoch stays while the store does, across a reopen for durable
/// stores, and a fresh store has another.
async fn epoch_is_stable_across_reopen_and_new_for_a_fresh_store(fx: &mut Fixture) {
    let mut a = fx.fresh().await;
    let epoch = a.feed.epoch();
    let all = sample_set("e");
    write_ok(&a, &all).await;
    let live = changes(&mut a.events, all.len()).await;
    assert_eq!(a.feed.epoch(), epoch, "writes leave the epoch alone");
    if fx.durable() {
        let used = a.store.used_bytes();
        // A restart: the first is gone before the second opens.
        drop(a);
        let b = fx.reopen().await;
        assert_eq!(b.feed.epoch(), epoch, "epoch after a reopen");
        assert_eq!(b.store.count().await.unwrap(), all.len() as u64);
        for x in &all {
            let got = b.store.get(&x.id).await.unwrap();
            assert_eq!(got.as_ref().map(Doc::as_str), Some(x.doc.as_str()));
        }
        // Where the reopened feed stands: nothing is after it, and the seqs
        // the first open handed out still pass.
        assert!(
            since(&b, b.start_seq.as_ref(), ALL).await.is_empty(),
            "changes after start_seq {:?}",
            b.start_seq
        );
        let newest = &live.last().unwrap().seq;
        b.feed.check_since(newest).await.unwrap();
        if fx.local_seqs() {
            assert_eq!(
                b.start_seq.as_ref(),
                Some(newest),
                "start_seq after a reopen"
            );
        }
        // The quota counts the same bytes after a restart as before it.
        if fx.usage_survives_reopen() {
            assert_eq!(b.store.used_bytes(), used, "used_bytes after a reopen");
        }
    }
    let c = fx.fresh().await;
    assert_ne!(c.feed.epoch(), epoch, "a fresh store's epoch");
}

/// `used_bytes` grows by the bytes written and shrinks by the bytes smashed.
async fn used_bytes_grow_with_writes_and_shrink_with_smash(fx: &mut Fixture) {
    let o = fx.fresh().await;
    let before = o.store.used_bytes();
    let all = sample_set("u");
    write_ok(&o, &all).await;
    let written = bytes(all.iter().map(|b| b.doc.as_str()));
    assert_eq!(o.store.used_bytes(), before + written, "after writing");
    let taken = o
        .store
        .smash(&query(Some(20), Some(30), false))
        .await
        .unwrap();
    assert!(!taken.is_empty());
    assert_eq!(
        o.store.used_bytes(),
        before + written - bytes(texts(&taken)),
        "after smashing"
    );
    let rest = o.store.smash(&query(None, None, false)).await.unwrap();
    assert_eq!(taken.len() + rest.len(), all.len());
    assert_eq!(o.store.used_bytes(), before, "after smashing everything");
}

/// The KPIs a store computes are those of the blobs it holds: after
/// writes (timestamps in ms and in seconds) and after a smash.
async fn rollups_count_what_is_stored(fx: &mut Fixture) {
    use crate::rollup::{Facts, Summary};
    use crate::store::RollupQuery;
    // 100 minutes of sign-ins from a day in 2012, one every 30 s; every
    // fifth with its timestamp in seconds.
    const DAY: i64 = 1_333_065_600_000;
    let o = fx.fresh().await;
    let blobs: Vec<Blob> = (0..200u64)
        .map(|i| {
            let ms = DAY + i as i64 * 30_000;
            let ts = if i % 5 == 0 { ms / 1000 } else { ms };
            let text = crate::sample::login_sequence(ts, i);
            let id = format!("k{i:04}");
            Blob {
                doc: Doc::from_stored(format!(r#"{{"_id":"{id}",{}"#, &text[1..])),
                id: id.into(),
                timestamp: ts,
            }
        })
        .collect();
    write_ok(&o, &blobs).await;
    let window = RollupQuery {
        start_ms: Some(DAY),
        end_ms: Some(DAY + 2 * 3_600_000 - 1),
        bucket: Some(std::time::Duration::from_secs(600)),
    };
    let expect = |docs: &[&Blob]| {
        let mut s = Summary::default();
        for b in docs {
            s.add(&Facts::of(b.doc.as_str()).unwrap());
        }
        s.to_json()
    };
    let got = o.store.rollup(&window).await.unwrap();
    assert_eq!(got.bucket_ms, 600_000);
    assert_eq!(
        got.total().to_json(),
        expect(&blobs.iter().collect::<Vec<_>>())
    );
    assert_eq!(got.buckets.len(), 10, "100 minutes by ten minutes");
    // Smash the first hour, in both spellings of its timestamps.
    for (start, end) in [
        (DAY, DAY + 3_599_999),
        (DAY / 1000, (DAY + 3_599_999) / 1000),
    ] {
        o.store
            .smash(&query(Some(start), Some(end), false))
            .await
            .unwrap();
    }
    let left: Vec<&Blob> = blobs
        .iter()
        .filter(|b| Facts::of(b.doc.as_str()).unwrap().ts_ms >= DAY + 3_600_000)
        .collect();
    let after = o.store.rollup(&window).await.unwrap().total().to_json();
    let mut want = expect(&left);
    // A smash may leave a slot's longest duration behind (README: `max`).
    after["duration"]["max"].clone_into(&mut want["duration"]["max"]);
    assert_eq!(after, want, "after smashing the first hour");
}

/// A smash removes and returns exactly the blobs in range, in the query's
/// order, limited; it publishes nothing and catch-up never brings them back.
async fn smash_removes_and_returns_exactly_the_range(fx: &mut Fixture) {
    let mut o = fx.fresh().await;
    let all = sample_set("x");
    write_ok(&o, &all).await;
    let live = changes(&mut o.events, all.len()).await;
    let mut kept = all.clone();
    let smashes = [
        query(Some(20), Some(30), false),
        RangeQuery {
            end: Some(50),
            limit: Some(2),
            descending: true,
            ..RangeQuery::default()
        },
        RangeQuery {
            start: Some(10),
            limit: Some(3),
            ..RangeQuery::default()
        },
        query(Some(1000), None, false),
    ];
    for q in smashes {
        let want = expected(&kept, &q);
        let taken = o
            .store
            .smash(&q)
            .await
            .unwrap_or_else(|e| panic!("smash {q:?}: {e}"));
        assert_eq!(texts(&taken), want, "smash {q:?}");
        kept.retain(|b| !want.iter().any(|d| d == b.doc.as_str()));
        assert_eq!(o.store.count().await.unwrap(), kept.len() as u64);
        for b in &all {
            let got = o.store.get(&b.id).await.unwrap();
            let is_kept = kept.iter().any(|k| k.id == b.id);
            assert_eq!(got.is_some(), is_kept, "get {} after smash {q:?}", b.id);
        }
        let everything = query(None, None, false);
        let left = o.store.range_page(&everything, None, ALL).await.unwrap();
        assert_eq!(texts(&left.docs), expected(&kept, &everything));
    }
    quiet(fx, &mut o.events).await;
    let caught_up: HashSet<String> = since(&o, None, ALL)
        .await
        .into_iter()
        .map(|c| c.id.to_string())
        .collect();
    let kept_ids: HashSet<String> = kept.iter().map(|b| b.id.to_string()).collect();
    assert_eq!(caught_up, kept_ids, "catch-up after smashes");
    if fx.local_seqs() {
        // Seqs are never handed out twice: the newest stays the newest.
        let newest = live.last().unwrap().seq.as_int().unwrap();
        o.feed.check_since(&Seq::int(newest)).await.unwrap();
        assert!(o.feed.check_since(&Seq::int(newest + 1)).await.is_err());
    }
}

/// Two smashes at once never return the same blob, and none is both
/// returned and kept.
async fn concurrent_smashes_never_return_the_same_blob(fx: &mut Fixture) {
    let o = fx.fresh().await;
    let round = |r: usize| -> Vec<Blob> {
        (0..60)
            .map(|i| blob(&format!("k{r}{i:02}"), (i / 3) as i64, "smash"))
            .collect()
    };
    let check = |a: &[Doc], b: &[Doc], all: &[Blob]| {
        let a: HashSet<String> = texts(a).into_iter().collect();
        let b: HashSet<String> = texts(b).into_iter().collect();
        let both: Vec<&String> = a.intersection(&b).collect();
        assert!(both.is_empty(), "both smashes returned {both:?}");
        let written: HashSet<String> = all.iter().map(|b| b.doc.as_str().to_string()).collect();
        assert!(a.is_subset(&written) && b.is_subset(&written));
        (a.len() + b.len()) as u64
    };
    // Whole range twice: between them, they take everything.
    let first = round(1);
    write_ok(&o, &first).await;
    let everything = query(None, None, false);
    let (a, b) = tokio::join!(o.store.smash(&everything), o.store.smash(&everything));
    let taken = check(&a.unwrap(), &b.unwrap(), &first);
    assert_eq!(taken, first.len() as u64, "two whole-range smashes");
    assert_eq!(o.store.count().await.unwrap(), 0);
    // Limited: each takes its own `limit`, and what is left is what neither took.
    let second = round(2);
    write_ok(&o, &second).await;
    let limited = RangeQuery {
        limit: Some(10),
        ..RangeQuery::default()
    };
    let (a, b) = tokio::join!(o.store.smash(&limited), o.store.smash(&limited));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.len() <= 10 && b.len() <= 10);
    let taken = check(&a, &b, &second);
    assert_eq!(
        o.store.count().await.unwrap(),
        second.len() as u64 - taken,
        "kept = written - taken"
    );
    // Between them they take at least one `limit`. Not yet "each takes its
    // own 10": CouchDB's smash that loses every row of a round to the other
    // ends with nothing although 50 blobs are left in range.
    assert!(
        taken >= 10,
        "two smashes of 10 with 60 in range took {taken}"
    );
}

/// The dummy store keeps nothing: reads answer generated samples, within
/// the range asked for and in its order, and there is nothing to catch up.
async fn dummy_reads_answer_samples(fx: &mut Fixture) {
    let mut o = fx.fresh().await;
    let all = sample_set("d");
    write_ok(&o, &all).await;
    changes(&mut o.events, all.len()).await;
    // It counts what it accepted, but stores no bytes.
    assert_eq!(o.store.count().await.unwrap(), all.len() as u64);
    assert_eq!(o.store.used_bytes(), 0);
    let got = o.store.get(&all[0].id).await.unwrap().expect("a sample");
    assert_ne!(got.as_str(), all[0].doc.as_str(), "it kept nothing");
    for descending in [false, true] {
        let q = RangeQuery {
            start: Some(1000),
            end: Some(2000),
            limit: Some(5),
            descending,
        };
        let page = o.store.range_page(&q, None, ALL).await.unwrap();
        assert_eq!(page.docs.len(), 5, "{q:?}");
        let ts: Vec<i64> = page
            .docs
            .iter()
            .map(|d| doc_json(d)["timestamp"].as_i64().unwrap())
            .collect();
        assert!(ts.iter().all(|t| (1000..=2000).contains(t)), "{ts:?}");
        let mut sorted = ts.clone();
        sorted.sort();
        if descending {
            sorted.reverse();
        }
        assert_eq!(ts, sorted, "in the query's order");
        assert!(page.next.is_none());
        let after = RangeCursor {
            timestamp: 1000,
            id: "sample-0".into(),
        };
        let rest = o.store.range_page(&q, Some(&after), ALL).await.unwrap();
        assert!(rest.docs.is_empty(), "samples fit one page");
    }
    // No limit: a handful of samples, not an endless stream.
    let page = o
        .store
        .range_page(&query(None, None, false), None, ALL)
        .await
        .unwrap();
    assert!(!page.docs.is_empty() && page.docs.len() <= 100);
    assert!(o.store.last().await.unwrap().is_some());
    // A smash "returns" samples and changes nothing.
    assert!(
        !o.store
            .smash(&query(None, None, false))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(o.store.count().await.unwrap(), all.len() as u64);
    // Nothing kept, nothing to catch up from: a lagging subscriber gets no replay.
    assert!(since(&o, None, ALL).await.is_empty());
    assert_eq!(o.feed.replay_start(1).await.unwrap(), None);
}

/// One test per check for a backend, each with a fixture of its own.
macro_rules! contract {
    ($backend:ident, $kind:expr, [$($check:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $check() {
                    let mut fx = super::Fixture::new($kind).await;
                    super::$check(&mut fx).await;
                }
            )*
        }
    };
}

/// Every check a store that keeps blobs must pass.
macro_rules! full_contract {
    ($backend:ident, $kind:expr) => {
        contract!(
            $backend,
            $kind,
            [
                reads_answer_what_was_written,
                pages_resume_after_the_cursor_across_ties,
                live_events_carry_every_write_once_in_seq_order,
                catch_up_agrees_with_the_live_feed,
                check_since_refuses_seqs_the_feed_cannot_have_made,
                order_is_the_feeds_or_none,
                epoch_is_stable_across_reopen_and_new_for_a_fresh_store,
                used_bytes_grow_with_writes_and_shrink_with_smash,
                smash_removes_and_returns_exactly_the_range,
                concurrent_smashes_never_return_the_same_blob,
                rollups_count_what_is_stored,
            ]
        );
    };
}

full_contract!(embedded, super::Kind::Embedded);
full_contract!(memory, super::Kind::Memory);
full_contract!(couchdb, super::Kind::CouchDb);

// The dummy store promises writes accepted and published, a feed whose seqs
// check and order like any local feed's, and samples for reads; not that
// anything written can be read back, caught up on, or smashed.
contract!(
    dummy,
    super::Kind::Dummy,
    [
        live_events_carry_every_write_once_in_seq_order,
        check_since_refuses_seqs_the_feed_cannot_have_made,
        order_is_the_feeds_or_none,
        epoch_is_stable_across_reopen_and_new_for_a_fresh_store,
        dummy_reads_answer_samples,
    ]
);
