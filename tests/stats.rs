//! KPIs computed by the server: `GET …/stats` over a window by bucket, the
//! same on every backend, right after writes and smashes; and the live
//! rollup's stream.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::{Value, json};
use support::{Server, http};

/// Midnight of a day in 2012, in ms.
const DAY: i64 = 1_333_065_600_000;

/// A sign-in at `ts` with the given duration and browser.
fn blob(ts: i64, duration: u64, browser: &str, new_account: bool) -> Value {
    json!({
        "timestamp": ts,
        "event_stream": [["picker", 700], ["complete", duration]],
        "email_type": if new_account { "primary" } else { "secondary" },
        "new_account": new_account,
        "language": "en_US",
        "user_agent": {"os": "Linux", "browser": browser, "version": "17"},
    })
}

async fn stats(server: &Server, query: &str) -> Value {
    let res = http()
        .get(server.url(&format!("/wsapi/interaction_data/stats{query}")))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "stats{query}: {body}");
    body
}

/// 600 sign-ins over ten minutes, a tenth of them with a timestamp in seconds.
async fn fill(server: &Server) -> Vec<u64> {
    let mut durations = Vec::new();
    let blobs: Vec<Value> = (0..600)
        .map(|i: i64| {
            let duration = 3000 + (i as u64 * 37) % 2000;
            durations.push(duration);
            let ts = DAY + i * 1000;
            let ts = if i % 10 == 0 { ts / 1000 } else { ts };
            blob(
                ts,
                duration,
                if i % 3 == 0 { "Firefox" } else { "Chrome" },
                i % 4 == 0,
            )
        })
        .collect();
    server.store(&blobs).await;
    durations.sort();
    durations
}

fn nearest_rank(sorted: &[u64], q: f64) -> f64 {
    sorted[(q * sorted.len() as f64).ceil() as usize - 1] as f64
}

async fn check_window(server: &Server) {
    let durations = fill(server).await;
    let day = stats(
        server,
        &format!("?start={DAY}&end={}&bucket=1m", DAY + 86_400_000 - 1),
    )
    .await;
    assert_eq!(day["bucket_ms"], 60_000);
    assert_eq!(day["total"]["count"], 600, "{}", day["total"]);
    assert_eq!(day["total"]["browser"]["Firefox"], 200);
    assert_eq!(day["total"]["browser"]["Chrome"], 400);
    assert_eq!(day["total"]["account"]["new"], 150);
    assert_eq!(day["total"]["account"]["returning"], 450);
    assert_eq!(day["total"]["language"]["en_US"], 600);
    let buckets = day["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 10, "ten minutes hold sign-ins");
    assert!(buckets.iter().all(|b| b["count"] == 60), "{buckets:?}");
    assert_eq!(buckets[0]["start"], DAY);
    let error = day["percentiles"]["relative_error"].as_f64().unwrap();
    for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
        let got = day["total"]["duration"][name].as_f64().unwrap();
        let want = nearest_rank(&durations, q);
        assert!(
            (got - want).abs() <= want * error + 1.0,
            "{name}: {got} vs {want}"
        );
    }
    assert_eq!(day["total"]["duration"]["max"], *durations.last().unwrap());

    // Narrow buckets and ragged edges: 90 seconds from 30 s into the window.
    let part = stats(
        server,
        &format!("?start={}&end={}&bucket=10s", DAY + 30_000, DAY + 119_999),
    )
    .await;
    assert_eq!(part["total"]["count"], 90);
    assert_eq!(part["buckets"].as_array().unwrap().len(), 9);
    let edges = stats(
        server,
        &format!("?start={}&end={}&bucket=1m", DAY + 30_000, DAY + 149_999),
    )
    .await;
    assert_eq!(
        edges["total"]["count"], 120,
        "half minutes at both ends count"
    );
}

#[tokio::test]
async fn a_window_by_bucket_on_the_embedded_store() {
    let (server, _dir) = Server::start(&[]);
    check_window(&server).await;
}

#[tokio::test]
async fn a_window_by_bucket_on_the_memory_store() {
    let (server, _dir) = Server::start(&[("DB_BACKEND", "memory")]);
    check_window(&server).await;
}

#[tokio::test]
async fn a_window_by_bucket_on_couchdb_from_its_own_view() {
    let pouch = support::couch::Pouch::start(true);
    let env = pouch.env("kpis");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &support::couch::env_refs(&env));
    check_window(&server).await;
    // The original's design document is left as it was.
    let (status, design) = pouch.call("GET", "/kpis/_design/data", "");
    assert_eq!(status, 200);
    assert!(!design.contains("rollup"), "{design}");
    let (status, own) = pouch.call("GET", "/kpis/_design/kpiggybank", "");
    assert_eq!(status, 200, "{own}");
}

#[tokio::test]
async fn rollups_survive_a_restart_and_follow_a_smash() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ADMIN_TOKEN", "t0k")];
    {
        let server = Server::start_in(dir.path(), &env);
        fill(&server).await;
    }
    // A store made before the rollups existed: they are counted at start.
    let file = dir.path().join("bid_kpi.sqlite3");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch(
            "DELETE FROM rollup_second; DELETE FROM rollup_minute; \
             DELETE FROM meta WHERE key = 'rollup_filled';",
        )
        .unwrap();
    let server = Server::start_in(dir.path(), &env);
    let whole = format!("?start={DAY}&end={}&bucket=1h", DAY + 3_599_999);
    assert_eq!(stats(&server, &whole).await["total"]["count"], 600);
    // Smash the first five minutes: 300 sign-ins leave the counts.
    let res = http()
        .post(server.url(&format!(
            "/wsapi/interaction_data/smash?start={DAY}&end={}",
            DAY + 299_999
        )))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The seconds-spelled ones are in that range only as seconds.
    let res = http()
        .post(server.url(&format!(
            "/wsapi/interaction_data/smash?start={}&end={}",
            DAY / 1000,
            (DAY + 299_999) / 1000
        )))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let after = stats(&server, &whole).await;
    assert_eq!(after["total"]["count"], 300, "{}", after["total"]);
    assert_eq!(after["total"]["browser"]["Firefox"], 100);
}

#[tokio::test]
async fn a_window_left_open_spans_the_stored_blobs_and_bad_windows_are_refused() {
    let (server, _dir) = Server::start(&[]);
    fill(&server).await;
    let all = stats(&server, "").await;
    assert_eq!(all["total"]["count"], 600);
    assert!(
        all["bucket_ms"].as_u64().unwrap() <= 10_000,
        "{}",
        all["bucket_ms"]
    );
    for (query, needle) in [
        ("?bucket=1w", "bucket"),
        ("?strat=1", "strat"),
        ("?start=10&end=5", "start"),
        (
            &format!("?start=0&end={}&bucket=1s", DAY) as &str,
            "buckets",
        ),
    ] {
        let res = http()
            .get(server.url(&format!("/wsapi/interaction_data/stats{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "bad_param", "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn the_live_rollup_streams_a_frame_per_second_with_what_just_arrived() {
    let (server, _dir) = Server::start(&[]);
    let res = http()
        .get(server.url("/wsapi/interaction_data/stats/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    server
        .store(
            &(0..5)
                .map(|i| blob(now - i * 1000, 4000, "Safari", false))
                .collect::<Vec<_>>(),
        )
        .await;
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("a frame with the new sign-ins")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        let frames: Vec<Value> = text
            .split("\r\n")
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Some(frame) = frames
            .iter()
            .rev()
            .find(|f| f["windows"]["1h"]["count"] == 5)
        {
            assert_eq!(frame["type"], "stats");
            assert_eq!(frame["windows"]["5m"]["browser"]["Safari"], 5);
            assert_eq!(frame["per_second"]["counts"].as_array().unwrap().len(), 300);
            break;
        }
    }
}

#[tokio::test]
async fn the_rust_client_reads_a_window_and_follows_the_live_rollup() {
    use kpiggybank::client::{Client, StatsOptions};
    let (server, _dir) = Server::start(&[]);
    fill(&server).await;
    let client = Client::from_url(&server.url(""));
    let day = client
        .stats(&StatsOptions {
            start: Some(DAY),
            end: Some(DAY + 3_599_999),
            bucket: Some("10m".into()),
        })
        .await
        .unwrap();
    assert_eq!(day["total"]["count"], 600);
    assert_eq!(day["bucket_ms"], 600_000);
    let refused = client
        .stats(&StatsOptions {
            bucket: Some("fortnight".into()),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let mut frames = client.follow_stats();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    server.store(&blob(now, 4000, "Opera", true)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let frame = tokio::time::timeout_at(deadline, frames.next())
            .await
            .expect("a frame with the new sign-in")
            .unwrap()
            .unwrap();
        if frame["windows"]["10s"]["browser"]["Opera"] == 1 {
            break;
        }
    }
}

#[tokio::test]
async fn the_live_kpis_and_a_sampled_feed_over_one_websocket() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (server, _dir) = Server::start(&[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/wsapi/ws?stats"))
        .await
        .unwrap();
    let first = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            break serde_json::from_str::<Value>(&t).unwrap();
        }
    };
    assert_eq!(first["type"], "subscribed");
    assert_eq!(first["stats"], true);
    ws.send(Message::text(r#"{"type":"subscribe","ref":2,"sample":5}"#))
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut changes = 0;
    let mut kpis = None;
    let mut posted = false;
    let started = tokio::time::Instant::now();
    while kpis.is_none() || started.elapsed() < Duration::from_millis(2500) {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frames keep coming")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let frame: Value = serde_json::from_str(&t).unwrap();
        match frame["type"].as_str().unwrap() {
            "subscribed" if !posted => {
                posted = true;
                let blobs: Vec<Value> = (0..50).map(|_| blob(now, 4100, "Edge", true)).collect();
                server.store(&blobs).await;
            }
            "change" => changes += 1,
            "stats" if frame["windows"]["1h"]["count"] == 50 => kpis = Some(frame),
            _ => {}
        }
    }
    let kpis = kpis.unwrap();
    assert_eq!(
        kpis["windows"]["5m"]["browser"]["Edge"], 50,
        "the true count beside the sample"
    );
    assert!(changes >= 1, "a sample of the feed arrives");
    assert!(
        changes <= 15,
        "at most 5 a second: {changes} in about 2.5 s"
    );
    // A bad sample is named.
    ws.send(Message::text(r#"{"type":"subscribe","ref":3,"sample":0}"#))
        .await
        .unwrap();
    loop {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        let frame: Value = serde_json::from_str(&t).unwrap();
        if frame["type"] == "error" {
            assert_eq!(frame["ref"], 3);
            assert!(
                frame["error"].as_str().unwrap().contains("sample"),
                "{frame}"
            );
            break;
        }
    }
}

#[tokio::test]
async fn a_restarted_node_starts_its_live_hour_from_the_store() {
    let (mut server, _dir) = Server::start(&[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let blobs: Vec<Value> = (0..30)
        .map(|i| blob(now - i * 60_000, 4000, "Vivaldi", false))
        .collect();
    server.store(&blobs).await;
    server.restart().await;
    let res = http()
        .get(server.url("/wsapi/interaction_data/stats/stream"))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
        .await
        .expect("a first frame")
        .unwrap()
        .unwrap();
    let frame: Value = serde_json::from_str(std::str::from_utf8(&chunk).unwrap().trim()).unwrap();
    assert_eq!(
        frame["windows"]["1h"]["count"], 30,
        "{}",
        frame["windows"]["1h"]
    );
    assert_eq!(frame["windows"]["1h"]["browser"]["Vivaldi"], 30);
    assert_eq!(frame["windows"]["5m"]["count"], 5);
}
