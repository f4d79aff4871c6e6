//! Edges of the protocols against a real server: answers that must not be
//! lost when a client closes or over-sends, protocol errors that must say
//! which, and query parameters that must not be ignored (issue 11).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use support::{Server, http};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(server: &Server, path: &str) -> Ws {
    connect_async(server.ws_url(path)).await.expect("connect").0
}

/// A client-to-server frame: `first` is FIN, RSV and opcode; masked unless
/// `masked` is false (RFC 6455 requires a client to mask).
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let bit = if masked { 0x80 } else { 0 };
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(bit | n as u8),
        n if n <= 0xffff => {
            frame.push(bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Writes `bytes` straight into the socket, under the client's framing.
async fn write_raw(ws: &mut Ws, bytes: &[u8]) {
    let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        unreachable!("plain ws://")
    };
    tcp.write_all(bytes).await.unwrap();
}

/// The frames up to the server's close: texts as JSON, then the close code
/// and reason. Panics when the connection ends without a close frame.
async fn until_close(ws: &mut Ws) -> (Vec<Value>, u16, String) {
    let mut texts = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s");
        match next {
            Some(Ok(Message::Text(text))) => texts.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(Some(close)))) => {
                return (texts, u16::from(close.code), close.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => {
                panic!("a close frame without a code, after {texts:?}")
            }
            Some(Ok(_)) => {}
            other => {
                panic!("the connection ended without a close frame ({other:?}), after {texts:?}")
            }
        }
    }
}

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

// ---------------------------------------------------------------------------
// 413 that must arrive as an answer, not a reset (item 8)

/// Writes a whole request of `body_len` bytes, and only then reads the
/// answer, as Python's http.client does; returns the status line and body.
/// `chunked`: without a length, so the server finds out only by reading.
fn post_all_then_read(
    addr: std::net::SocketAddr,
    body_len: usize,
    chunked: bool,
) -> Result<(String, String), String> {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {body_len}")
    };
    let head = format!(
        "POST /wsapi/interaction_data HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes())
        .map_err(|e| format!("head: {e}"))?;
    let chunk = vec![b' '; 1024 * 1024];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        let written = |e| format!("body, {} bytes written: {e}", body_len - left);
        if chunked {
            tcp.write_all(format!("{n:x}\r\n").as_bytes())
                .map_err(written)?;
        }
        tcp.write_all(&chunk[..n]).map_err(written)?;
        if chunked {
            tcp.write_all(b"\r\n").map_err(written)?;
        }
        left -= n;
    }
    if chunked {
        tcp.write_all(b"0\r\n\r\n")
            .map_err(|e| format!("last chunk: {e}"))?;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the body (Content-Length) or of the connection.
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if len.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no answer: {text:?}"))?;
    Ok((head.lines().next().unwrap().to_string(), body.to_string()))
}

#[tokio::test]
async fn a_client_that_writes_a_whole_oversized_body_before_reading_gets_the_413() {
    let (server, _dir) = Server::start(&[("MAX_BODY_BYTES", "4096")]);
    // 64 MiB, what Python's requests wrote in the report: far more than
    // the socket buffers hold, so a server that stops reading resets it.
    let addr = server.addr;
    for chunked in [false, true] {
        let (status, body) =
            tokio::task::spawn_blocking(move || post_all_then_read(addr, 64 << 20, chunked))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("chunked: {chunked}: {e}"));
        assert!(status.contains(" 413 "), "chunked: {chunked}: {status}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "too_large");
        assert!(body["error"].as_str().unwrap().contains("4096"), "{body}");
    }
    assert_eq!(server.count().await, 0);
}

#[tokio::test]
async fn a_client_that_waits_for_100_continue_gets_the_413_without_sending_the_body() {
    let (server, _dir) = Server::start(&[("MAX_BODY_BYTES", "4096")]);
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /wsapi/interaction_data HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            64 << 20
        );
        tcp.write_all(head.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    // Reading the body would have made the server invite it first.
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
}

// ---------------------------------------------------------------------------
// A stream that ends says why (item 6)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_ended_by_the_server_says_why_in_its_last_line() {
    let (mut server, _dir) = Server::start(&[]);
    let res = http()
        .get(server.url("/wsapi/interaction_data/stream?heartbeat=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = tokio::spawn(res.text());
    tokio::time::sleep(Duration::from_millis(250)).await;
    server.stop().await;
    let body = body.await.unwrap().expect("the stream ends cleanly");
    let last = body.trim_end().lines().last().unwrap_or_default();
    let last: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(last["type"], "error", "{body:?}");
    assert_eq!(last["code"], "shutting_down", "{body:?}");
}

// ---------------------------------------------------------------------------
// WebSocket protocol errors close with the code RFC 6455 names (item 5)

#[tokio::test]
async fn websocket_protocol_errors_close_with_1002_or_1007_and_a_reason() {
    let (server, _dir) = Server::start(&[]);
    let text = |p: &[u8]| frame(0x81, p, true);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid UTF-8 text",
            text(&[b'{', 0xc3, 0x28, b'}']),
            1007,
            "UTF-8",
        ),
        (
            "a reserved bit",
            frame(0x81 | 0x40, b"{}", true),
            1002,
            "eserved",
        ),
        (
            "a reserved data opcode",
            frame(0x83, b"{}", true),
            1002,
            "3",
        ),
        (
            "a reserved control opcode",
            frame(0x8b, b"", true),
            1002,
            "11",
        ),
        (
            "an unmasked frame",
            frame(0x81, b"{}", false),
            1002,
            "unmasked",
        ),
        (
            "a ping of 126 bytes",
            frame(0x89, &[0; 126], true),
            1002,
            "125",
        ),
        (
            "an orphan continuation end",
            frame(0x80, b"{}", true),
            1002,
            "ontinu",
        ),
    ];
    for (what, bytes, code, needle) in cases {
        let mut ws = connect(&server, "/wsapi/ws").await;
        write_raw(&mut ws, &bytes).await;
        let (texts, got, reason) = until_close(&mut ws).await;
        assert!(texts.is_empty(), "{what}: {texts:?}");
        assert_eq!(got, code, "{what}: {reason}");
        assert!(reason.contains(needle), "{what}: {reason:?}");
        assert!(reason.len() <= 123, "{what}: {reason:?}");
    }
    // The server is fine, and so is the next connection.
    let mut ws = connect(&server, "/wsapi/ws").await;
    write_raw(&mut ws, &text(br#"{"timestamp":1}"#)).await;
    let ack = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(matches!(ack, Some(Ok(Message::Text(_)))), "{ack:?}");
}

// ---------------------------------------------------------------------------
// Pushes read before a client's close are all answered (item 4)

#[tokio::test]
async fn pushes_read_before_a_close_are_all_answered_before_the_close_completes() {
    let (server, _dir) = Server::start(&[]);
    for round in 0..3 {
        let mut ws = connect(&server, "/wsapi/ws").await;
        // What `printf … | websocat` does: three lines, one frame each, then
        // its close at end of input, all in one go.
        let mut bytes = Vec::new();
        for t in 11..=13 {
            bytes.extend(frame(
                0x81,
                format!("{{\"timestamp\":{t}}}\n").as_bytes(),
                true,
            ));
        }
        bytes.extend(frame(0x88, &1000u16.to_be_bytes(), true));
        write_raw(&mut ws, &bytes).await;
        let (answers, code, reason) = until_close(&mut ws).await;
        let kinds: Vec<&Value> = answers.iter().map(|a| &a["type"]).collect();
        assert_eq!(kinds, ["ack", "ack", "ack"], "round {round}: {answers:?}");
        assert_eq!(code, 1000, "round {round}: the close echoed ({reason})");
    }
    assert_eq!(server.count().await, 9);
}

// ---------------------------------------------------------------------------
// The WebSocket handshake, taken by hand

/// Sends a raw upgrade request with `headers`; the status line and the
/// headers of the answer.
async fn raw_upgrade(server: &Server, headers: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /wsapi/ws HTTP/1.1\r\nHost: {}\r\n{headers}\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn the_websocket_handshake_is_checked_and_says_what_is_missing() {
    let (server, _dir) = Server::start(&[]);
    // A browser's form of the headers, and the key of RFC 6455's example.
    let answer = raw_upgrade(
        &server,
        "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(
        answer.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{answer}"
    );
    for (headers, needle) in [
        ("", "`Upgrade`"),
        (
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "`Sec-WebSocket-Version`",
        ),
        (
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "`Sec-WebSocket-Key`",
        ),
    ] {
        let answer = raw_upgrade(&server, headers).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("not_websocket"), "{answer}");
        assert!(answer.contains(needle), "{answer}");
    }
}

#[tokio::test]
async fn a_clients_close_is_answered_with_its_code() {
    let (server, _dir) = Server::start(&[]);
    let mut ws = connect(&server, "/wsapi/ws").await;
    write_raw(&mut ws, &frame(0x88, &1000u16.to_be_bytes(), true)).await;
    let (texts, code, _) = until_close(&mut ws).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(code, 1000);
}
