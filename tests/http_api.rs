//! The HTTP API, compatible with the Node.js original, against a real server.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use support::{FIXTURE, Server, http};

async fn error_of(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status(), status);
    let body: Value = res.json().await.unwrap();
    body["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_original_form_post_stores_the_fixture_verbatim() {
    let (server, _dir) = Server::start(&[]);
    let res = server.post_form(FIXTURE).await;
    assert_eq!(res.status(), 201);
    let ack: Value = res.json().await.unwrap();
    let id = ack["ids"][0].as_str().unwrap().to_string();

    let text = server
        .get_text(&format!("/wsapi/interaction_data?id={id}"))
        .await;
    // `_id` first, then the same keys in the same order, values spelled as posted.
    assert!(
        text.starts_with(&format!(
            "{{\"results\":{{\"_id\":\"{id}\",\"timestamp\":1333046104322,"
        )),
        "{text}"
    );
    let keys = [
        "\"event_stream\":[\n    [\"picker\", 732]",
        "\"email_type\":\"secondary\"",
        "\"number_emails\":3",
        "\"new_account\":false",
        "\"language\":\"en_US\"",
        "\"number_sites_logged_in\":1",
        "\"screen_size\":{ \"width\": 640, \"height\": 480 }",
        "\"sample_rate\":1.0",
        "\"user_agent\":{ \"os\": \"TestOS\", \"browser\": \"Foo\", \"version\": \"42\" }}}",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} not in {text}")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[tokio::test]
async fn json_bodies_lists_and_number_fidelity() {
    let (server, _dir) = Server::start(&[]);
    let body = r#"[{"timestamp":10,"big":9007199254740993,"f":1.0,"u":"é💡"},{"timestamp":"11"}]"#;
    let res = http()
        .post(server.url("/wsapi/interaction_data"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let text = server
        .get_text("/wsapi/interaction_data?start=10&end=11")
        .await;
    assert!(
        text.contains(r#""timestamp":10,"big":9007199254740993,"f":1.0,"u":"é💡"}"#),
        "{text}"
    );
    // The string of digits was stored as a number, so the range found it.
    assert!(text.contains(r#""timestamp":11}"#), "{text}");

    let wrapped = json!({"data": {"timestamp": 12}});
    let res = server.post_json(&wrapped).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(3)
    );
}

#[tokio::test]
async fn ranges_limits_order_count_and_last() {
    let (server, _dir) = Server::start(&[]);
    let blobs: Vec<Value> = (0..101)
        .map(|i| json!({"timestamp": 1000 + i, "i": i}))
        .collect();
    let res = server
        .post_form(&serde_json::to_string(&blobs).unwrap())
        .await;
    assert_eq!(res.status(), 201);

    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(101)
    );
    let closed = server
        .get_json("/wsapi/interaction_data?start=1010&end=1019")
        .await;
    let is: Vec<i64> = closed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, (10..20).collect::<Vec<_>>());
    let open = server.get_json("/wsapi/interaction_data?start=1091").await;
    assert_eq!(open.as_array().unwrap().len(), 10);
    let open_end = server.get_json("/wsapi/interaction_data?end=1009").await;
    assert_eq!(open_end.as_array().unwrap().len(), 10);
    let all = server.get_json("/wsapi/interaction_data").await;
    assert_eq!(all.as_array().unwrap().len(), 101);

    let newest = server
        .get_json("/wsapi/interaction_data?descending=true&limit=3")
        .await;
    let is: Vec<i64> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, vec![100, 99, 98]);
    let last = server.get_json("/wsapi/interaction_data/last").await;
    assert_eq!(last["i"], 100);
    let none = server.get_json("/wsapi/interaction_data?start=5000").await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn a_large_range_streams_across_pages() {
    let (server, _dir) = Server::start(&[]);
    let blobs: Vec<Value> = (0..2500).map(|i| json!({"timestamp": i, "i": i})).collect();
    let res = server.post_json(&blobs).await;
    assert_eq!(res.status(), 201);
    let all = server.get_json("/wsapi/interaction_data").await;
    let is: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, (0..2500).collect::<Vec<_>>());
    let limited = server
        .get_json("/wsapi/interaction_data?limit=1500&descending=true")
        .await;
    let is: Vec<i64> = limited
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, (1000..2500).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_posts_get_a_400_that_names_the_problem_and_store_nothing() {
    let (server, _dir) = Server::start(&[]);
    let cases: Vec<(&str, &str)> = vec![
        (
            r#"{"timestamp":"2012-03-29T18:35:04Z"}"#,
            "got the string \"2012-03-29T18:35:04Z\"",
        ),
        (r#"{"no":"timestamp"}"#, "missing `timestamp`"),
        (r#"{"timestamp":-1}"#, "must not be negative"),
        (r#"{"timestamp":1.5}"#, "whole number"),
        (r#"{"timestamp":1,"#, "JSON syntax error"),
        (r#"[1,2]"#, "must be a JSON object, got a number"),
        (
            r#"[{"timestamp":1},{"timestamp":"x"}]"#,
            "blob 1 of the list",
        ),
    ];
    for (data, needle) in cases {
        let msg = error_of(server.post_form(data).await, 400).await;
        assert!(msg.contains(needle), "{data}: {msg}");
    }
    let res = http()
        .post(server.url("/wsapi/interaction_data"))
        .form(&[("nodata", "1")])
        .send()
        .await
        .unwrap();
    assert!(error_of(res, 400).await.contains("missing `data`"));
    // The all-or-nothing list left nothing behind, and the server is still up.
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(0)
    );
    let pong = server.get_text("/wsapi/ping").await;
    assert_eq!(pong, "pong");
}

#[tokio::test]
async fn bad_query_parameters_unknown_routes_and_missing_ids() {
    let (server, _dir) = Server::start(&[]);
    for (path, needle) in [
        ("/wsapi/interaction_data?start=yesterday", "`start`"),
        ("/wsapi/interaction_data?limit=-1", "`limit`"),
        ("/wsapi/interaction_data?descending=maybe", "`descending`"),
    ] {
        let res = http().get(server.url(path)).send().await.unwrap();
        assert!(error_of(res, 400).await.contains(needle), "{path}");
    }
    let res = http()
        .get(server.url("/wsapi/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http()
        .get(server.url("/wsapi/interaction_data?id=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http()
        .get(server.url("/wsapi/interaction_data/last"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn too_large_bodies_get_413() {
    let (server, _dir) = Server::start(&[("MAX_BODY_BYTES", "2048")]);
    let big = json!({"timestamp": 1, "pad": "x".repeat(4000)}).to_string();
    let msg = error_of(server.post_form(&big).await, 413).await;
    assert!(msg.contains("2048"), "{msg}");
    // Chunked, without a Content-Length: still refused.
    let chunks = futures::stream::iter(
        (0..2).map(move |_| Ok::<_, std::io::Error>(big.clone().into_bytes())),
    );
    let res = http()
        .post(server.url("/wsapi/interaction_data"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(0)
    );
}

#[tokio::test]
async fn a_full_quota_answers_507_and_reads_keep_working() {
    let (server, _dir) = Server::start(&[("STORAGE_QUOTA_BYTES", "300")]);
    let res = server
        .post_form(r#"{"timestamp":1,"pad":"0123456789012345678901234567890123456789"}"#)
        .await;
    assert_eq!(res.status(), 201);
    let big = json!({"timestamp": 2, "pad": "y".repeat(400)}).to_string();
    let msg = error_of(server.post_form(&big).await, 507).await;
    assert!(msg.contains("quota"), "{msg}");
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(1)
    );
    assert_eq!(
        server
            .get_json("/wsapi/interaction_data")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_index_page_is_served_from_the_binary() {
    let (server, _dir) = Server::start(&[]);
    let res = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(res.text().await.unwrap().contains("kpiggybank"));
}

/// Reads `\r\n`-terminated lines from a streaming response.
struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Lines {
    fn new(res: reqwest::Response) -> Lines {
        Lines {
            body: res.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    async fn next_line(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..pos].to_vec()).unwrap();
                self.buf.drain(..pos + 2);
                return line;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("a line within 10 s")
                .expect("stream still open")
                .unwrap();
            self.buf.extend_from_slice(&chunk);
        }
    }

    async fn next_change(&mut self) -> Value {
        loop {
            let line = self.next_line().await;
            if !line.is_empty() {
                return serde_json::from_str(&line).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn the_stream_relays_new_blobs_with_heartbeats_and_resumes_by_seq() {
    let (server, _dir) = Server::start(&[]);
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream?heartbeat=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let epoch = res.headers()["x-kpiggybank-epoch"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        res.headers()["x-kpiggybank-seq"],
        "null",
        "an empty store has no seq yet"
    );
    let mut lines = Lines::new(res);
    // Heartbeats are empty lines.
    assert_eq!(lines.next_line().await, "");

    assert_eq!(
        server
            .post_form(r#"{"timestamp":1,"n":"first"}"#)
            .await
            .status(),
        201
    );
    let change = lines.next_change().await;
    assert_eq!(change["doc"]["n"], "first");
    assert_eq!(change["id"], change["doc"]["_id"]);
    let seq = change["seq"].clone();

    for n in 0..5 {
        assert_eq!(
            server
                .post_form(&format!(r#"{{"timestamp":2,"n":{n}}}"#))
                .await
                .status(),
            201
        );
    }
    // A second reader resumes after the first change: it gets the five others, in order, once.
    let res = http()
        .get(server.url(&format!(
            "/wsapi/interaction_data/stream?since={seq}&epoch={epoch}"
        )))
        .send()
        .await
        .unwrap();
    let mut resumed = Lines::new(res);
    for n in 0..5 {
        assert_eq!(resumed.next_change().await["doc"]["n"], n);
    }
    assert_eq!(
        server
            .post_form(r#"{"timestamp":3,"n":"live"}"#)
            .await
            .status(),
        201
    );
    assert_eq!(resumed.next_change().await["doc"]["n"], "live");

    let res = http()
        .get(server.url("/wsapi/interaction_data/stream"))
        .send()
        .await
        .unwrap();
    let now = res.headers()["x-kpiggybank-seq"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        now,
        (seq.as_i64().unwrap() + 6).to_string(),
        "the stream names where it starts"
    );
    let res = http()
        .get(server.url(&format!(
            "/wsapi/interaction_data/stream?since={seq}&epoch=other"
        )))
        .send()
        .await
        .unwrap();
    assert!(error_of(res, 409).await.contains("epoch"));
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream?since=999999"))
        .send()
        .await
        .unwrap();
    assert!(error_of(res, 400).await.contains("ahead of the store"));
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream?since=abc"))
        .send()
        .await
        .unwrap();
    assert!(error_of(res, 400).await.contains("since"));
}
