//! Edges of the protocols against a real server: answers that must not be
//! lost when a client closes or over-sends, protocol errors that must say
//! which, and query parameters that must not be ignored (issue 11).

mod support;

use serde_json::{Value, json};
use support::{Server, http};
use tokio_tungstenite::connect_async;

/// The status, then the `code` and `error` of a JSON error answer.
async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("a JSON error body");
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

// ---------------------------------------------------------------------------
// Query parameters (item 9)

#[tokio::test]
async fn unknown_query_parameters_are_refused_naming_them_and_the_accepted_ones() {
    let (server, _dir) = Server::start(&[]);
    server.store(&json!({"timestamp": 5})).await;
    for (path, unknown, accepted) in [
        ("/wsapi/interaction_data?strat=1", "`strat`", "`start`"),
        ("/wsapi/interaction_data?start=1&ned=9", "`ned`", "`end`"),
        ("/wsapi/interaction_data?id=abc&lmit=1", "`lmit`", "`id`"),
        (
            "/wsapi/interaction_data/stream?sinse=1",
            "`sinse`",
            "`heartbeat`",
        ),
    ] {
        let res = http().get(server.url(path)).send().await.unwrap();
        let (status, code, error) = error_of(res).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "bad_param"),
            "{path}: {error}"
        );
        assert!(error.contains(unknown), "{path}: {error}");
        assert!(error.contains(accepted), "{path}: {error}");
    }
    // The WebSocket refuses before upgrading, with the same answer.
    match connect_async(server.ws_url("/wsapi/ws?subscrbe"))
        .await
        .unwrap_err()
    {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            assert_eq!(res.status(), 400);
            let body = String::from_utf8(res.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("`subscrbe`"), "{body}");
            assert!(body.contains("bad_param"), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    // Every documented name still works.
    let all = server
        .get_json("/wsapi/interaction_data?start=1&end=9&limit=5&descending=true")
        .await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let res = http()
        .get(server.url(
            "/wsapi/interaction_data/stream?heartbeat=100&last=1&epoch=whatever-is-checked-later",
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), 400, "stream with known names");
    let ws = connect_async(server.ws_url("/wsapi/ws?subscribe&last=1")).await;
    assert!(ws.is_ok(), "{:?}", ws.err());
}

#[tokio::test]
async fn smash_refuses_unknown_parameters_and_backward_ranges_and_removes_nothing() {
    let (server, _dir) = Server::start(&[("ADMIN_TOKEN", "edge-token")]);
    server.store(&json!({"timestamp": 5})).await;
    for (path, needle) in [
        ("/wsapi/interaction_data/smash?ned=9", "`ned`"),
        ("/wsapi/interaction_data/smash?start=9&end=1", "`start` (9)"),
    ] {
        let res = http()
            .post(server.url(path))
            .bearer_auth("edge-token")
            .send()
            .await
            .unwrap();
        let (status, code, error) = error_of(res).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "bad_param"),
            "{path}: {error}"
        );
        assert!(error.contains(needle), "{path}: {error}");
    }
    assert_eq!(server.count().await, 1);
}

#[tokio::test]
async fn a_range_whose_start_is_after_its_end_is_refused() {
    let (server, _dir) = Server::start(&[]);
    server.store(&json!({"timestamp": 5})).await;
    let res = http()
        .get(server.url("/wsapi/interaction_data?start=10&end=5"))
        .send()
        .await
        .unwrap();
    let (status, code, error) = error_of(res).await;
    assert_eq!((status, code.as_str()), (400, "bad_param"), "{error}");
    assert!(
        error.contains("`start` (10)") && error.contains("`end` (5)"),
        "{error}"
    );
    // Equal bounds are a range of one timestamp, not a mistake.
    let one = server
        .get_json("/wsapi/interaction_data?start=5&end=5")
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
}
