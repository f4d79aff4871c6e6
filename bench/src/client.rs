//! A minimal HTTP/1.1 keep-alive client for the load loops, and WebSocket
//! connects with `TCP_NODELAY`.
//!
//! The load loops write pre-assembled request bytes and read just enough of
//! the answer (status, `Content-Length` or chunked body), so the client costs
//! a few microseconds per request: client and server share the machine's
//! cores, and a heavy client would measure itself.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// Headers read from one answer at most.
const MAX_HEADERS: usize = 32;

/// Largest answer accepted; the load loops only read small ones.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// The part of an answer the load loops look at.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Bytes,
}

impl HttpConn {
    /// Connects with `TCP_NODELAY`, so a request is never held back by Nagle.
    pub async fn connect(addr: SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// Writes one complete request and reads its answer.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        self.read_answer().await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.len() > MAX_ANSWER {
            return Err(io::Error::other("answer too large"));
        }
        self.buf.reserve(8 * 1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        Ok(())
    }

    async fn read_answer(&mut self) -> io::Result<Answer> {
        let (status, head_len, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut chunked = false;
                    for h in answer.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        }
                    }
                    break (answer.code.unwrap_or(0), n, length, chunked);
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(e) => return Err(io::Error::other(format!("bad answer: {e}"))),
            }
        };
        self.buf.advance(head_len);
        let body = if chunked {
            self.read_chunked().await?
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.split_to(length).freeze()
        };
        Ok(Answer { status, body })
    }

    async fn read_chunked(&mut self) -> io::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end]).unwrap_or("");
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            self.buf.advance(line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            if size == 0 {
                // No trailers are expected from the servers we measure.
                self.buf.advance(2);
                return Ok(body.freeze());
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }
}

/// A complete `POST` request with a body.
pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    request(addr, "POST", path, content_type, "", body)
}

/// A complete request; `headers` are extra lines, each ending in `\r\n`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nAccept: application/json\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// An `Authorization: Basic …\r\n` header line.
pub fn basic_auth(user: &str, pass: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Authorization: Basic {out}\r\n")
}

/// A complete `GET` request.
pub fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n").into_bytes()
}

/// A WebSocket client stream.
pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `ws://addr{path}` with `TCP_NODELAY`, so a small
/// push or change frame leaves at once (what latency figures assume).
pub async fn ws_connect(addr: SocketAddr, path: &str) -> io::Result<Ws> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(io::Error::other)?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_auth_is_base64() {
        assert_eq!(
            super::basic_auth("Aladdin", "open sesame"),
            "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"
        );
        assert_eq!(super::basic_auth("a", "b"), "Authorization: Basic YTpi\r\n");
    }
}
