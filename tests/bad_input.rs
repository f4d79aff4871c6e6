//! Input a store cannot keep, against a real server: refused with a 400
//! `bad_blob` that names the problem, on every path, with nothing stored;
//! and the edge cases that are fine still stored with their text kept.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use support::{Server, http};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// POSTs `body` as is, with `content_type`.
async fn post_raw(server: &Server, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    http()
        .post(server.url("/wsapi/interaction_data"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Expects a 400 `{"error", "code":"bad_blob"}` whose message holds every
/// one of `needles`; `what` says which request it was.
async fn assert_refused(res: reqwest::Response, what: &str, needles: &[&str]) {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, 400, "{what}: {text:.300}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(body["code"], "bad_blob", "{what}: {text:.300}");
    let message = body["error"].as_str().expect("an error message");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{what}: {needle:?} not in {message:.300}"
        );
    }
}

/// Levels of nesting, the blob being level 1: field `x` holds `levels - 1`
/// lists and objects inside each other.
fn nested(levels: usize) -> String {
    let inner = levels - 1;
    let open: String = (0..inner)
        .map(|i| if i % 2 == 0 { "[" } else { r#"{"k":"# })
        .collect();
    let close: String = (0..inner)
        .rev()
        .map(|i| if i % 2 == 0 { "]" } else { "}" })
        .collect();
    format!(r#"{{"timestamp":1,"x":{open}1{close}}}"#)
}

/// Blobs that issue 11 saw acknowledged, with what the 400 must say.
fn bad_blobs() -> Vec<(String, Vec<&'static str>)> {
    vec![
        (
            r#"{"timestamp":1,"x":1e999999}"#.into(),
            vec!["field `x`", "1e999999", "out of range", "64-bit float"],
        ),
        (
            r#"{"timestamp":1,"neg":-1e400}"#.into(),
            vec!["field `neg`", "-1e400", "out of range"],
        ),
        (
            format!(r#"{{"timestamp":1,"big":{}}}"#, "7".repeat(5000)),
            vec!["field `big`", "5000 characters", "too long", "at most 64"],
        ),
        (
            r#"{"timestamp":1,"s":"\ud800"}"#.into(),
            vec!["field `s`", r"\ud800", "surrogate pair"],
        ),
        (
            r#"{"timestamp":1,"s":"\udc00"}"#.into(),
            vec!["field `s`", r"\udc00", "surrogate pair"],
        ),
        (
            r#"{"timestamp":1,"o":{"\ud83dx":1}}"#.into(),
            vec!["field `o`", r"\ud83d", "surrogate pair"],
        ),
        (
            r#"{"timestamp":1,"\ud800":1}"#.into(),
            vec![r"the field name `\ud800`", "surrogate pair"],
        ),
        (
            nested(65),
            vec!["field `x`", "nested deeper than 64 levels"],
        ),
        (
            format!(
                r#"{{"timestamp":1,"x":{}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            vec!["field `x`", "nested deeper than 64 levels"],
        ),
    ]
}

#[tokio::test]
async fn what_a_store_cannot_keep_is_refused_on_every_http_path() {
    let (server, _dir) = Server::start(&[]);
    for (blob, needles) in bad_blobs() {
        let short = &blob[..blob.len().min(60)];
        let list = format!(r#"[{{"timestamp":1}},{blob}]"#);
        let in_list: Vec<&str> = std::iter::once("blob 1 of the list")
            .chain(needles.iter().copied())
            .collect();
        assert_refused(
            server.post_form(&blob).await,
            &format!("form {short}"),
            &needles,
        )
        .await;
        assert_refused(
            server.post_form(&list).await,
            &format!("form list {short}"),
            &in_list,
        )
        .await;
        assert_refused(
            post_raw(&server, JSON, blob.clone().into_bytes()).await,
            &format!("json {short}"),
            &needles,
        )
        .await;
        assert_refused(
            post_raw(&server, JSON, list.clone().into_bytes()).await,
            &format!("json list {short}"),
            &in_list,
        )
        .await;
        assert_refused(
            post_raw(&server, JSON, format!(r#"{{"data":{blob}}}"#).into_bytes()).await,
            &format!("data {short}"),
            &needles,
        )
        .await;
        let as_string = serde_json::to_string(&blob).unwrap();
        assert_refused(
            post_raw(
                &server,
                JSON,
                format!(r#"{{"data":{as_string}}}"#).into_bytes(),
            )
            .await,
            &format!("data string {short}"),
            &needles,
        )
        .await;
    }
    // A list is all or nothing: its good first blob was not stored either.
    assert_eq!(server.count().await, 0);
}

#[tokio::test]
async fn what_a_store_cannot_keep_is_refused_over_websocket() {
    let (server, _dir) = Server::start(&[]);
    let (mut ws, _) = connect_async(server.ws_url("/wsapi/ws")).await.unwrap();
    for (i, (blob, needles)) in bad_blobs().into_iter().enumerate() {
        for frame in [
            format!(r#"{{"type":"push","ref":{i},"data":{blob}}}"#),
            blob.clone(),
        ] {
            ws.send(Message::text(frame.clone())).await.unwrap();
            let answer = loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .expect("an answer within 10 s")
                    .expect("socket open")
                    .expect("no socket error");
                if let Message::Text(text) = msg {
                    break serde_json::from_str::<Value>(&text).unwrap();
                }
            };
            assert_eq!(answer["type"], "error", "{frame:.60}: {answer}");
            assert_eq!(answer["code"], "bad_blob", "{frame:.60}: {answer}");
            let message = answer["error"].as_str().unwrap();
            for needle in &needles {
                assert!(
                    message.contains(needle),
                    "{frame:.60}: {needle:?} not in {message}"
                );
            }
        }
    }
    assert_eq!(server.count().await, 0);
}

#[tokio::test]
async fn a_form_that_is_not_utf8_or_is_json_is_refused_and_says_why() {
    let (server, _dir) = Server::start(&[]);
    // Was stored with U+FFFD in place of 0xF8, and answered 201.
    let encoded = b"data=%7B%22timestamp%22%3A1%2C%22x%22%3A%22%F8%22%7D".to_vec();
    assert_refused(
        post_raw(&server, FORM, encoded).await,
        "percent-encoded 0xF8",
        &["form field `data` is not UTF-8", "0xF8"],
    )
    .await;
    let raw = b"data={\"timestamp\":1,\"x\":\"\xF8\"}".to_vec();
    assert_refused(
        post_raw(&server, FORM, raw).await,
        "raw 0xF8",
        &["not UTF-8", "0xF8"],
    )
    .await;
    // The JSON path refuses the same bytes, as before.
    assert_refused(
        post_raw(&server, JSON, b"{\"timestamp\":1,\"x\":\"\xF8\"}".to_vec()).await,
        "json 0xF8",
        &["not UTF-8"],
    )
    .await;
    // curl -d '{…}' sends a form content type.
    for body in [r#"{"timestamp":1}"#, r#"[{"timestamp":1}]"#] {
        assert_refused(
            post_raw(&server, FORM, body.as_bytes().to_vec()).await,
            body,
            &[
                "looks like JSON",
                "application/x-www-form-urlencoded",
                "`Content-Type: application/json`",
            ],
        )
        .await;
    }
    assert_eq!(server.count().await, 0);
}

#[tokio::test]
async fn edge_cases_a_store_can_keep_are_stored_as_posted() {
    let (server, _dir) = Server::start(&[]);
    let at_limit = nested(64);
    let long = format!("-0.{}", "3".repeat(61));
    assert_eq!(long.len(), 64);
    let blob = format!(
        r#"{{"timestamp":1,"big":9007199254740993,"one":1.0,"tiny":-0.5e-7,"max":1e308,"low":-1.7976931348623157E308,"long":{long},"pair":"\ud83d\ude00","text":"\\ud800","deep":{}}}"#,
        &at_limit[r#"{"timestamp":1,"x":"#.len()..at_limit.len() - 1]
    );
    let kept = [
        r#""big":9007199254740993"#.to_string(),
        r#""one":1.0"#.into(),
        r#""tiny":-0.5e-7"#.into(),
        r#""max":1e308"#.into(),
        r#""low":-1.7976931348623157E308"#.into(),
        format!(r#""long":{long}"#),
        r#""pair":"\ud83d\ude00""#.into(),
        r#""text":"\\ud800""#.into(),
    ];
    let form = server.post_form(&blob).await;
    let json = post_raw(&server, JSON, blob.clone().into_bytes()).await;
    for (what, res) in [("form", form), ("json", json)] {
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 201, "{what}: {text:.300}");
        let ack: Value = serde_json::from_str(&text).unwrap();
        let id = ack["ids"][0].as_str().unwrap();
        let stored = server
            .get_text(&format!("/wsapi/interaction_data?id={id}"))
            .await;
        assert_eq!(
            stored,
            format!(r#"{{"results":{{"_id":"{id}",{}}}"#, &blob[1..]),
            "{what}"
        );
        for piece in &kept {
            assert!(stored.contains(piece.as_str()), "{what}: {piece}");
        }
    }
    // Exactly 64 levels, whichever way it comes.
    for res in [
        server.post_form(&at_limit).await,
        post_raw(
            &server,
            JSON,
            format!(r#"{{"data":[{at_limit}]}}"#).into_bytes(),
        )
        .await,
    ] {
        assert_eq!(res.status(), 201);
    }
    assert_eq!(server.count().await, 4);
}
