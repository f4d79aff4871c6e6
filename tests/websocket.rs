//! The WebSocket protocol against a real server: push, subscribe, resume,
//! limits, bad input, slow subscribers, shutdown.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Endpoint, Process, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(server: &Endpoint, path: &str) -> Ws {
    connect_async(server.ws_url(path)).await.expect("connect").0
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next text frame as JSON (pings are answered by tungstenite itself).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// The next frame of a type, skipping others.
async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = recv(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn stats(server: &Endpoint) -> Value {
    server.get_json("/wsapi/stats").await
}

/// Waits until the server counts `n` open WebSockets (a closed one is
/// released by its task, a moment after the client sees the close).
async fn wait_for_connections(server: &Endpoint, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(server).await["connections"] != n {
        assert!(
            Instant::now() < deadline,
            "still {} connections",
            stats(server).await["connections"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn push_is_acked_with_ids_once_stored() {
    let (server, _dir) = Server::start(&[]);
    let mut ws = connect(&server, "/wsapi/ws").await;
    send(
        &mut ws,
        json!({"type": "push", "ref": 1, "data": {"timestamp": 5, "a": 1}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], 1);
    let id = ack["ids"][0].as_str().unwrap();
    let got: Value = server
        .get_json(&format!("/wsapi/interaction_data?id={id}"))
        .await;
    assert_eq!(got["results"]["a"], 1);

    // A list, with a ref of any JSON shape echoed verbatim.
    send(
        &mut ws,
        json!({"type": "push", "ref": {"k": [1]}, "data": [{"timestamp": 6}, {"timestamp": 7}]}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["ref"], json!({"k": [1]}));
    assert_eq!(ack["ids"].as_array().unwrap().len(), 2);

    // A bare blob, as typed into websocat, is a push too.
    ws.send(Message::text(r#"{"timestamp":8,"typed":"by hand"}"#))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["type"], "ack");
    assert_eq!(stats(&server).await["count"], 4);
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_usable() {
    let (server, _dir) = Server::start(&[]);
    let mut ws = connect(&server, "/wsapi/ws").await;
    let cases: Vec<(Message, &str, &str)> = vec![
        (Message::binary(vec![1, 2, 3]), "bad_frame", "binary frames"),
        (Message::text("{not json"), "bad_blob", "JSON syntax error"),
        (
            Message::text(r#"{"type":"dance","ref":"r"}"#),
            "bad_frame",
            "unknown frame type",
        ),
        (
            Message::text(r#"{"type":"push","ref":3,"data":{"timestamp":"2012-01-01"}}"#),
            "bad_blob",
            "got the string",
        ),
        (
            Message::text(r#"{"type":"push","ref":4}"#),
            "bad_blob",
            "missing `data`",
        ),
        (Message::text("17"), "bad_frame", "JSON object"),
        (
            Message::text(r#"{"type":"subscribe","since":"x"}"#),
            "bad_seq",
            "since",
        ),
    ];
    for (msg, code, needle) in cases {
        let shown = format!("{msg:?}");
        ws.send(msg).await.unwrap();
        let frame = recv(&mut ws).await;
        assert_eq!(frame["type"], "error", "{shown}");
        assert_eq!(frame["code"], code, "{shown}: {frame}");
        assert!(
            frame["error"].as_str().unwrap().contains(needle),
            "{shown}: {frame}"
        );
    }
    send(
        &mut ws,
        json!({"type": "push", "ref": "after", "data": {"timestamp": 1}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_str()),
        (Some("ack"), Some("after"))
    );
    assert_eq!(stats(&server).await["count"], 1);
}

#[tokio::test]
async fn subscribe_live_replay_and_resume_without_loss() {
    let (server, _dir) = Server::start(&[]);
    let blobs: Vec<Value> = (0..10).map(|i| json!({"timestamp": i, "i": i})).collect();
    server.store(&json!(blobs)).await;

    // A fresh dashboard: the last 7, oldest first, then live.
    let mut dash = connect(&server, "/wsapi/ws").await;
    send(
        &mut dash,
        json!({"type": "subscribe", "ref": "d", "last": 7}),
    )
    .await;
    let subscribed = recv(&mut dash).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["ref"], "d");
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    let mut seqs = Vec::new();
    for i in 3..10 {
        let change = recv(&mut dash).await;
        assert_eq!(change["doc"]["i"], i);
        seqs.push(change["seq"].clone());
    }
    server.store(&json!({"timestamp": 10, "i": 10})).await;
    assert_eq!(recv(&mut dash).await["doc"]["i"], 10);

    // Resume after the 5th blob on a new socket: 6..=10 exactly once, then live.
    let mut again = connect(
        &server,
        &format!("/wsapi/ws?since={}&epoch={epoch}", seqs[2]),
    )
    .await;
    assert_eq!(recv(&mut again).await["type"], "subscribed");
    for i in 6..=10 {
        assert_eq!(recv(&mut again).await["doc"]["i"], i);
    }
    server.store(&json!({"timestamp": 11, "i": 11})).await;
    assert_eq!(recv(&mut again).await["doc"]["i"], 11);
    assert_eq!(recv(&mut dash).await["doc"]["i"], 11);

    // A seq from another epoch is refused, not silently skipped.
    let mut wrong = connect(&server, "/wsapi/ws").await;
    send(
        &mut wrong,
        json!({"type": "subscribe", "since": 3, "epoch": "another"}),
    )
    .await;
    let err = recv(&mut wrong).await;
    assert_eq!(err["code"], "epoch_mismatch");

    // Unsubscribe stops the feed.
    send(&mut again, json!({"type": "unsubscribe", "ref": 9})).await;
    assert_eq!(recv_type(&mut again, "unsubscribed").await["ref"], 9);
    server.store(&json!({"timestamp": 12, "i": 12})).await;
    send(
        &mut again,
        json!({"type": "push", "ref": "probe", "data": {"timestamp": 13}}),
    )
    .await;
    let next = recv(&mut again).await;
    assert_eq!(next["type"], "ack", "no change after unsubscribe: {next}");
}

#[tokio::test]
async fn push_and_subscribe_on_one_socket_with_many_pushes_in_flight() {
    let (server, _dir) = Server::start(&[]);
    let mut ws = connect(&server, "/wsapi/ws?subscribe").await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let n = 2000;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..n {
            let frame = json!({"type": "push", "ref": i, "data": {"timestamp": i, "i": i}});
            sink.send(Message::text(frame.to_string())).await.unwrap();
        }
        sink
    });
    let mut acked = vec![false; n as usize];
    let mut changes = Vec::new();
    while acked.iter().any(|a| !a) || changes.len() < n as usize {
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("frames keep coming")
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str().unwrap() {
            "ack" => acked[frame["ref"].as_u64().unwrap() as usize] = true,
            "change" => changes.push(frame["doc"]["i"].as_i64().unwrap()),
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    drop(writer.await.unwrap());
    changes.sort();
    assert_eq!(
        changes,
        (0..n).collect::<Vec<_>>(),
        "each change exactly once"
    );
}

#[tokio::test]
async fn websocat_style_one_command_watch_and_line_push() {
    // README: `websocat 'ws://127.0.0.1:3000/wsapi/ws?subscribe'` to watch,
    // `websocat ws://127.0.0.1:3000/wsapi/ws` and type one JSON blob per line to push.
    let (server, _dir) = Server::start(&[]);
    let mut watch = connect(&server, "/wsapi/ws?subscribe").await;
    assert_eq!(recv(&mut watch).await["type"], "subscribed");
    let mut typer = connect(&server, "/wsapi/ws").await;
    typer
        .send(Message::text(
            "{\"timestamp\": 1333046104322, \"language\": \"en_US\"}\n",
        ))
        .await
        .unwrap();
    assert_eq!(recv(&mut typer).await["type"], "ack");
    let change = recv(&mut watch).await;
    assert_eq!(change["doc"]["language"], "en_US");
}

#[tokio::test]
async fn limits_frame_size_connections_and_origin() {
    let (server, _dir) = Server::start(&[
        ("MAX_BODY_BYTES", "4096"),
        ("MAX_CONNECTIONS", "2"),
        ("ALLOWED_ORIGINS", "https://dash.example.com"),
    ]);
    // Too large a frame: closed with 1009, naming the limit.
    let mut ws = connect(&server, "/wsapi/ws").await;
    let big = json!({"timestamp": 1, "pad": "x".repeat(8000)}).to_string();
    ws.send(Message::text(big)).await.unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(closed.code), 1009);
    assert!(closed.reason.contains("4096"), "{}", closed.reason);
    drop(ws);
    wait_for_connections(&server, 0).await;

    // Connection limit: the third is refused with a clear 503.
    let mut a = connect(&server, "/wsapi/ws").await;
    let _b = connect(&server, "/wsapi/ws").await;
    send(&mut a, json!({"type":"push","data":{"timestamp":1}})).await;
    assert_eq!(recv(&mut a).await["type"], "ack");
    let refused = connect_async(server.ws_url("/wsapi/ws")).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            assert_eq!(res.status(), 503);
            let body = String::from_utf8(res.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("MAX_CONNECTIONS"), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    drop(a);
    drop(_b);
    wait_for_connections(&server, 0).await;

    // Origins: a foreign page is refused; the allowed one and same-origin pass.
    let with_origin = |origin: &str| {
        let mut req = server.ws_url("/wsapi/ws").into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match connect_async(with_origin("https://evil.example"))
        .await
        .unwrap_err()
    {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let ok = connect_async(with_origin("https://dash.example.com")).await;
    assert!(ok.is_ok(), "allowed origin: {:?}", ok.err());
    drop(ok);
    let same = connect_async(with_origin(&format!("http://{}", server.addr))).await;
    assert!(same.is_ok(), "same origin: {:?}", same.err());
}

#[tokio::test]
async fn the_server_pings_and_drops_peers_that_stop_answering() {
    let (server, _dir) = Server::start(&[("WS_PING_INTERVAL_MS", "200")]);
    let mut live = connect(&server, "/wsapi/ws").await;
    // A peer that finishes the handshake and then never reads nor answers.
    let (mut mute, _) = connect_async(server.ws_url("/wsapi/ws")).await.unwrap();
    let ping = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = live.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "the server sends pings");
    assert_eq!(stats(&server).await["connections"], 2);
    // `live` keeps being read (tungstenite answers its pings); `mute` is not.
    let reader = tokio::spawn(async move { while live.next().await.is_some() {} });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if stats(&server).await["connections"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the silent peer was not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.abort();
    let _ = mute.close(None).await;
}

#[tokio::test]
async fn a_stuck_subscriber_is_closed_with_where_to_resume() {
    let (catch_ups, closed) = stuck_subscriber("3000").await;
    assert!(
        closed,
        "closed after the send timeout (catch-ups: {catch_ups})"
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_caught_up_from_the_store() {
    let (catch_ups, closed) = stuck_subscriber("120000").await;
    assert!(!closed, "not closed within the send timeout");
    assert!(
        catch_ups > 0,
        "fell out of the hub's ring and was caught up"
    );
}

/// A subscriber stops reading while 100,000 sign-in blobs go by; another
/// measures latency meanwhile. Returns (catch-ups, whether it was closed).
async fn stuck_subscriber(send_timeout_ms: &str) -> (u64, bool) {
    // The process: its memory is measured while the subscriber is stuck.
    // Pings far apart: the stuck one answers none, and on a busy machine
    // this takes longer than the two default intervals (40 s) after which
    // a silent peer is dropped (1011), which is not what is tested here.
    let (server, _dir) = Process::start(&[
        ("WS_SEND_TIMEOUT_MS", send_timeout_ms),
        ("WS_PING_INTERVAL_MS", "600000"),
    ]);
    let total = 100_000u64;
    // The stuck one subscribes, then stops reading.
    let mut stuck = connect(&server, "/wsapi/ws?subscribe").await;
    let subscribed = recv(&mut stuck).await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    let mut healthy = connect(&server, "/wsapi/ws?subscribe").await;
    assert_eq!(recv(&mut healthy).await["type"], "subscribed");
    let rss_before = server.rss_bytes();

    // The healthy one measures push-to-receive latency of probes while the
    // bulk goes by.
    let mut prober = connect(&server, "/wsapi/ws").await;
    let mut latencies = Vec::new();
    let mut seen = 0u64;
    let batch = 1000u64;
    for b in 0..total / batch {
        // Sign-in sized blobs (~600 bytes): far more than socket buffers hold.
        let blobs: Vec<Value> = (0..batch)
            .map(|i| {
                let n = b * batch + i;
                let mut blob = support::login_blob(n as i64, n);
                blob["n"] = json!(n);
                blob
            })
            .collect();
        server.store(&json!(blobs)).await;
        let sent = Instant::now();
        send(
            &mut prober,
            json!({"type":"push","data":{"timestamp": 0, "probe": b}}),
        )
        .await;
        assert_eq!(recv(&mut prober).await["type"], "ack");
        loop {
            let change = recv(&mut healthy).await;
            if change["doc"]["probe"] == b {
                latencies.push(sent.elapsed());
                break;
            }
            seen += 1;
        }
    }
    assert_eq!(seen, total, "the healthy subscriber got every blob");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_secs(1),
        "healthy subscriber p99 latency {p99:?}"
    );
    let grown = server.rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 200 * 1024 * 1024,
        "server memory grew by {grown} bytes"
    );

    // Now the stuck one reads: every blob in order, no gap, no duplicate,
    // either all of them or up to a close frame that says where to resume.
    let mut next = 0u64;
    let mut last_seq = subscribed["seq"].clone();
    let resume = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), stuck.next())
            .await
            .unwrap();
        match msg {
            Some(Ok(Message::Text(text))) => {
                let change: Value = serde_json::from_str(&text).unwrap();
                if change["doc"]["probe"].is_number() {
                    continue;
                }
                assert_eq!(change["doc"]["n"], next, "in order, no gap");
                next += 1;
                last_seq = change["seq"].clone();
                if next == total {
                    break None;
                }
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4000);
                let reason: Value = serde_json::from_str(&frame.reason).unwrap();
                assert_eq!(
                    reason["since"], last_seq,
                    "the close names the last seq sent"
                );
                assert_eq!(reason["epoch"], epoch.as_str());
                break Some(reason);
            }
            Some(Ok(_)) => continue,
            // The server gave up before the close frame could get through
            // (this reader was not reading): resume from the last seq seen.
            None | Some(Err(_)) => break Some(json!({"since": last_seq})),
        }
    };
    let closed = resume.is_some();
    if let Some(reason) = resume {
        let mut again = connect(
            &server,
            &format!("/wsapi/ws?since={}&epoch={epoch}", reason["since"]),
        )
        .await;
        assert_eq!(recv(&mut again).await["type"], "subscribed");
        while next < total {
            let change = recv(&mut again).await;
            if change["doc"]["probe"].is_number() {
                continue;
            }
            assert_eq!(change["doc"]["n"], next, "resumed in order, no gap");
            next += 1;
        }
    }
    assert_eq!(next, total);
    // It really fell behind: out of the hub's ring (caught up from the
    // store) or closed with a resume point.
    let stats = stats(&server).await;
    let catch_ups = stats["catch_ups"].as_u64().unwrap();
    assert_eq!(
        stats["closed_too_slow"].as_u64().unwrap() > 0,
        closed,
        "{stats}"
    );
    eprintln!("catch-ups: {catch_ups}, closed: {closed}, p99: {p99:?}, rss grown: {grown}");
    (catch_ups, closed)
}

#[tokio::test]
async fn shutdown_answers_pending_pushes_then_closes_with_1001() {
    let (mut server, _dir) = Server::start(&[]);
    let mut ws = connect(&server, "/wsapi/ws?subscribe").await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    for i in 0..200 {
        send(
            &mut ws,
            json!({"type":"push","ref": i,"data":{"timestamp": i}}),
        )
        .await;
    }
    // Wait until the first ack so that the pushes are being processed.
    recv_type(&mut ws, "ack").await;
    // The graceful stop SIGTERM triggers (the signal itself is tested in
    // tests/durability.rs), read through while it happens; `stop` fails the
    // test if serve errs or does not return.
    let read = async {
        let mut acks = 1;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "ack" {
                        acks += 1;
                    }
                }
                Some(Ok(Message::Close(frame))) => break (frame, acks),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    let ((close, acks), ()) = tokio::join!(read, server.stop());
    assert_eq!(u16::from(close.unwrap().code), 1001);
    // Every push the server read was answered; every ack is stored.
    server.restart().await;
    let count: u64 = server.count().await;
    assert!(count >= acks, "{count} stored, {acks} acknowledged");
}

#[tokio::test]
async fn a_flood_of_pushes_is_held_back_by_tcp_not_buffered() {
    // The process: its memory is measured during the flood.
    let (server, _dir) = Process::start(&[]);
    let rss_before = server.rss_bytes();
    let mut flooder = connect(&server, "/wsapi/ws").await;
    // Lists of 50 sign-in blobs, written as raw pre-masked frames straight
    // into the TCP socket: far faster than any store can take them.
    let list: Vec<Value> = (0..50).map(|n| support::login_blob(n, n as u64)).collect();
    let frame = masked_text_frame(json!({"type": "push", "data": list}).to_string().as_bytes());
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let MaybeTlsStream::Plain(tcp) = flooder.get_mut() else {
            unreachable!("plain ws://")
        };
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), tcp.write_all(&frame)).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => break,
            }
        }
        (sent, flooder)
    });
    // Meanwhile another producer is served promptly.
    let mut other = connect(&server, "/wsapi/ws").await;
    for i in 0..20 {
        let began = Instant::now();
        send(
            &mut other,
            json!({"type": "push", "ref": i, "data": {"timestamp": i}}),
        )
        .await;
        assert_eq!(recv(&mut other).await["type"], "ack");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "ack took {:?}",
            began.elapsed()
        );
        // Pacing, not waiting: the probes spread over the flood's seconds.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, _flooder) = flood.await.unwrap();
    let count = stats(&server).await["count"].as_u64().unwrap();
    let grown = server.rss_bytes().saturating_sub(rss_before);
    // What was written but not yet stored sits in bounded places (socket
    // buffers, the in-flight limit), not in a queue that grows with the flood.
    let behind = (sent * 50).saturating_sub(count) * 650;
    assert!(
        behind < 64 * 1024 * 1024,
        "{behind} bytes written but not stored: no backpressure"
    );
    assert!(
        grown < 100 * 1024 * 1024,
        "server memory grew by {grown} bytes after {sent} pushes"
    );
    eprintln!(
        "flood: {sent} lists written, {count} blobs stored, {behind} bytes behind, rss grown {grown}"
    );
}

/// A client-to-server text frame, masked as RFC 6455 requires.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}
