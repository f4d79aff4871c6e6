//! A 201 is a promise: acknowledged blobs survive `kill -9` and a graceful
//! stop, and a request is stored all or nothing.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::lines::{Lines, Next};
use support::{Endpoint, Process, Server, http};

/// Concurrent producers: more than the cores, so requests queue at the batcher.
const PRODUCERS: usize = 16;

/// One producer's acknowledged requests: request tag → ids answered.
type Acked = HashMap<String, Vec<String>>;

/// What a producer saw.
#[derive(Default)]
struct Report {
    acked: Acked,
    /// Requests sent before the stop began and answered 201 after it.
    answered_after_stop: usize,
    /// Requests without an answer (connection cut) or with an error status.
    failed: usize,
}

/// Posts blobs until `stop` is set or the server goes away. Each request is
/// one blob or a list of up to 5, every blob tagged with its request and its
/// place in it, so a half-stored request would show.
async fn produce(
    url: String,
    producer: usize,
    stop: Arc<AtomicBool>,
    stop_began: Arc<parking_lot::Mutex<Option<Instant>>>,
    acked_so_far: Arc<AtomicUsize>,
) -> Report {
    let client = http();
    let mut report = Report::default();
    let mut consecutive_failures = 0;
    for n in 0.. {
        if stop.load(Ordering::Relaxed) || consecutive_failures >= 3 {
            break;
        }
        let tag = format!("p{producer}-r{n}");
        let size = 1 + (n % 5);
        let blobs: Vec<Value> = (0..size)
            .map(|k| json!({"timestamp": 1_000_000 + n * 10 + k, "req": tag, "k": k, "of": size}))
            .collect();
        let body = if size == 1 {
            blobs[0].clone()
        } else {
            Value::Array(blobs)
        };
        let sent = Instant::now();
        // Alternate the original's form post and a JSON body.
        let req = if n % 2 == 0 {
            client
                .post(&url)
                .form(&[("data", serde_json::to_string(&body).unwrap())])
        } else {
            client.post(&url).json(&body)
        };
        match req.send().await {
            Ok(res) if res.status() == 201 => {
                let ack: Value = match res.json().await {
                    Ok(ack) => ack,
                    Err(_) => {
                        // The answer was cut: not an acknowledgement.
                        report.failed += 1;
                        consecutive_failures += 1;
                        continue;
                    }
                };
                let ids: Vec<String> = ack["ids"]
                    .as_array()
                    .expect("ids in the ack")
                    .iter()
                    .map(|id| id.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(ids.len(), size as usize, "one id per blob: {ack}");
                // In flight when the stop began: sent before, answered after.
                if stop_began.lock().is_some_and(|t| sent < t) {
                    report.answered_after_stop += 1;
                }
                report.acked.insert(tag, ids);
                acked_so_far.fetch_add(1, Ordering::Relaxed);
                consecutive_failures = 0;
            }
            Ok(res) => {
                // 503 while shutting down is allowed; it is not a promise.
                assert!(
                    res.status() == 503,
                    "unexpected answer {} for {tag}",
                    res.status()
                );
                report.failed += 1;
                consecutive_failures += 1;
            }
            Err(_) => {
                report.failed += 1;
                consecutive_failures += 1;
            }
        }
    }
    report
}

/// Runs the producers against `server` until they have `acked` requests
/// acknowledged, then calls `stop` while they are still posting; returns
/// what they saw.
async fn load_then(server: &mut Process, acked: usize, stop: impl FnOnce(&mut Process)) -> Report {
    let stop_flag = Arc::new(AtomicBool::new(false));
    let stop_began = Arc::new(parking_lot::Mutex::new(None));
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            tokio::spawn(produce(
                server.url("/wsapi/interaction_data"),
                p,
                stop_flag.clone(),
                stop_began.clone(),
                acked_so_far.clone(),
            ))
        })
        .collect();
    support::wait_until(
        &format!("the load to have {acked} requests acknowledged"),
        Duration::from_secs(60),
        || async { (acked_so_far.load(Ordering::Relaxed) >= acked).then_some(()) },
    )
    .await;
    *stop_began.lock() = Some(Instant::now());
    tokio::task::block_in_place(|| stop(server));
    stop_flag.store(true, Ordering::Relaxed);
    let mut total = Report::default();
    for task in tasks {
        let report = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("producers stop once the server is gone")
            .expect("producer does not panic");
        total.acked.extend(report.acked);
        total.answered_after_stop += report.answered_after_stop;
        total.failed += report.failed;
    }
    eprintln!(
        "{} requests acknowledged, {} answered 201 while the stop began, {} failed",
        total.acked.len(),
        total.answered_after_stop,
        total.failed
    );
    total
}

/// Every blob in the store, grouped by the request that posted it.
async fn stored_by_request(server: &Endpoint) -> HashMap<String, Vec<Value>> {
    let res = http()
        .get(server.url("/wsapi/interaction_data"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let all: Vec<Value> = res.json().await.unwrap();
    let count: u64 = server.count().await;
    assert_eq!(count, all.len() as u64, "count agrees with a full range");
    let mut by_req: HashMap<String, Vec<Value>> = HashMap::new();
    for blob in all {
        let tag = blob["req"].as_str().expect("tagged blob").to_string();
        by_req.entry(tag).or_default().push(blob);
    }
    by_req
}

/// Every acknowledged request is stored with exactly its ids, and every
/// stored request is complete (all or nothing) and stored once.
async fn check_after_restart(server: &Endpoint, acked: &Acked) {
    let stored = stored_by_request(server).await;
    for (tag, ids) in acked {
        let blobs = stored
            .get(tag)
            .unwrap_or_else(|| panic!("acknowledged request {tag} was lost"));
        let mut got: Vec<&str> = blobs.iter().map(|b| b["_id"].as_str().unwrap()).collect();
        got.sort();
        let mut want: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        want.sort();
        assert_eq!(got, want, "request {tag} stored with its acknowledged ids");
    }
    for (tag, blobs) in &stored {
        let of = blobs[0]["of"].as_u64().unwrap() as usize;
        let ks: HashSet<u64> = blobs.iter().map(|b| b["k"].as_u64().unwrap()).collect();
        assert_eq!(
            (blobs.len(), ks.len()),
            (of, of),
            "request {tag} is stored whole and once: {blobs:?}"
        );
    }
    // Spot-check `?id=` too: the acknowledged ids answer one by one.
    for ids in acked.values().take(20) {
        for id in ids {
            let res = http()
                .get(server.url(&format!("/wsapi/interaction_data?id={id}")))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "?id={id}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["results"]["_id"], json!(id));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_concurrent_load_loses_no_acknowledged_blob() {
    // The process: kill -9 is what is under test.
    let (mut server, dir) = Process::start(&[("MODE", "prod")]);
    // Enough that the batcher groups writes when the kill comes.
    let report = load_then(&mut server, 200, Process::kill9).await;
    assert!(
        report.failed >= 1,
        "no request was in flight when the server was killed"
    );
    let server = Server::start_in(dir.path(), &[("MODE", "prod")]);
    check_after_restart(&server, &report.acked).await;
}

/// SIGTERM or SIGINT with writes in flight and a stream open: exit 0 soon,
/// every 201 stored, the stream ended, no new connections.
async fn graceful_stop(signal: &'static str) {
    // The process: the signal handlers and the exit status are under test.
    let (mut server, dir) = Process::start(&[("MODE", "prod")]);
    let addr = server.addr;
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream?since=0&heartbeat=200"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut lines = Lines::new(res);
    let reader = tokio::spawn(async move {
        let mut changes = 0u64;
        loop {
            match lines.next(Duration::from_secs(60)).await {
                Next::Line(line) if line.is_empty() => {}
                Next::Line(_) => changes += 1,
                Next::End => return changes,
            }
        }
    });

    let mut exit = None;
    let mut took = Duration::ZERO;
    let report = load_then(&mut server, 100, |server| {
        let t = Instant::now();
        exit = Some(server.signal_and_wait(signal));
        took = t.elapsed();
    })
    .await;
    let exit = exit.unwrap();
    assert_eq!(exit.code(), Some(0), "SIG{signal} exits 0: {exit}");
    assert!(
        took < Duration::from_secs(15),
        "SIG{signal} took {took:?} to stop the server"
    );
    assert!(
        report.answered_after_stop >= 1,
        "no write in flight at SIG{signal} was answered (failed: {}); logs:\n{}",
        report.failed,
        server.logs()
    );
    let changes = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the open stream ended with the server")
        .unwrap();
    assert!(
        changes >= 1,
        "the stream relayed the writes before it ended"
    );
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "a new connection after exit was accepted");

    let server = Server::start_in(dir.path(), &[("MODE", "prod")]);
    check_after_restart(&server, &report.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_in_flight_writes_ends_streams_and_exits_0() {
    graceful_stop("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_answers_in_flight_writes_ends_streams_and_exits_0() {
    graceful_stop("INT").await;
}

/// A subscriber that stopped reading (its socket buffers full) must not hold
/// the shutdown hostage: the server still exits 0, soon, and the writes it
/// acknowledged are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_up_by_a_stalled_stream_reader() {
    // The process: SIGTERM and the exit status are under test.
    let (mut server, dir) = Process::start(&[("MODE", "prod"), ("MAX_BODY_BYTES", "8388608")]);
    // Opened and never read again.
    let stalled = http()
        .get(server.url("/wsapi/interaction_data/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    // ~24 MiB of changes: far more than the socket buffers between us.
    let pad = "x".repeat(2000);
    let mut acked = Acked::new();
    for r in 0..12 {
        let blobs: Vec<Value> = (0..1000)
            .map(|k| json!({"timestamp": r * 1000 + k, "req": format!("r{r}"), "k": k, "of": 1000, "pad": pad}))
            .collect();
        let res = server.post_json(&blobs).await;
        assert_eq!(res.status(), 201);
        let ack: Value = res.json().await.unwrap();
        let ids = ack["ids"].as_array().unwrap();
        acked.insert(
            format!("r{r}"),
            ids.iter()
                .map(|i| i.as_str().unwrap().to_string())
                .collect(),
        );
    }
    let began = Instant::now();
    let exit = tokio::task::block_in_place(|| server.signal_and_wait("TERM"));
    let took = began.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?}");
    drop(stalled);
    let server = Server::start_in(dir.path(), &[("MODE", "prod")]);
    check_after_restart(&server, &acked).await;
}
