//! The Rust client against a real server, including a server restart in the
//! middle of a change stream.

mod support;

use std::time::Duration;

use futures::StreamExt;
use kpiggybank::client::{Client, ClientError, Follow, RangeOptions};
use serde_json::json;
use support::Server;

async fn next_change(changes: &mut kpiggybank::client::Changes) -> kpiggybank::client::Change {
    tokio::time::timeout(Duration::from_secs(20), changes.next())
        .await
        .expect("a change within 20 s")
        .expect("stream open")
        .expect("no feed error")
}

#[tokio::test]
async fn save_fetch_count_and_last() {
    let (server, _dir) = Server::start(&[]);
    let client = Client::from_url(&server.url(""));
    assert_eq!(client.last().await.unwrap(), None);
    for i in 0..20 {
        let ids = client
            .save_data(&json!({"timestamp": 100 + i, "i": i}))
            .await
            .unwrap();
        assert_eq!(ids.len(), 1);
    }
    let ids = client
        .save_data(&json!([{"timestamp": 200}, {"timestamp": 201}]))
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(client.count().await.unwrap(), 22);
    let range = client
        .fetch_range(&RangeOptions {
            start: Some(105),
            end: Some(109),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        range
            .iter()
            .map(|b| b["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
    let newest = client
        .fetch_range(&RangeOptions {
            limit: Some(2),
            descending: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest[0]["timestamp"], 201);
    assert_eq!(client.last().await.unwrap().unwrap()["timestamp"], 201);

    match client.save_data(&json!({"timestamp": "yesterday"})).await {
        Err(ClientError::Server {
            status: 400,
            message,
        }) => assert!(message.contains("timestamp"), "{message}"),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn follow_changes_survives_a_server_restart_without_gap_or_duplicate() {
    let (mut server, _dir) = Server::start(&[]);
    let client = Client::from_url(&server.url(""));
    client
        .save_data(&json!({"timestamp": 1, "n": 0}))
        .await
        .unwrap();

    let mut changes = client.follow_changes(Follow::Last(1));
    assert_eq!(next_change(&mut changes).await.doc["n"], 0);
    for n in 1..=5 {
        client
            .save_data(&json!({"timestamp": 1, "n": n}))
            .await
            .unwrap();
    }
    for n in 1..=5 {
        assert_eq!(next_change(&mut changes).await.doc["n"], n);
    }

    // Restart on the same port and data; blobs arrive before the client is
    // back. (A graceful stop closes the client's socket with 1001; a kill
    // would cut it: the client reconnects from the same place either way.)
    server.restart().await;
    // A fresh client for the posts: the old one's pooled connection died
    // with the server, and a POST is not retried blindly.
    let client = Client::from_url(&server.url(""));
    for n in 6..=10 {
        client
            .save_data(&json!({"timestamp": 1, "n": n}))
            .await
            .unwrap();
    }
    for n in 6..=10 {
        assert_eq!(next_change(&mut changes).await.doc["n"], n);
    }
    // Nothing repeated in between: in feed order, a replayed change would
    // come before the next new one.
    for n in 11..=12 {
        client
            .save_data(&json!({"timestamp": 1, "n": n}))
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut changes).await.doc["n"],
            n,
            "no duplicate after the restart"
        );
    }
}

#[tokio::test]
async fn follow_changes_reports_a_replaced_store() {
    let (server, _dir) = Server::start(&[]);
    let client = Client::from_url(&server.url(""));
    let mut changes = client.follow_changes(Follow::Since {
        seq: json!(0),
        epoch: "a-store-that-is-gone".into(),
    });
    let item = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap()
        .unwrap();
    match item {
        Err(ClientError::Feed { code, .. }) => assert_eq!(code, "epoch_mismatch"),
        other => panic!("expected an epoch error, got {other:?}"),
    }
    assert!(
        changes.next().await.is_none(),
        "the stream ends after a fatal feed error"
    );
}
