//! Reads the `\r\n`-terminated lines of a `/stream` response.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

/// A `/stream` response, line by line.
pub struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// Where to look for the next `\r\n` (everything before has none).
    scanned: usize,
}

/// What the next read found.
#[derive(Debug)]
pub enum Next {
    /// A complete line, without its `\r\n`.
    Line(String),
    /// The server ended the response.
    End,
}

impl Lines {
    /// Wraps a streaming response.
    pub fn new(res: reqwest::Response) -> Lines {
        Lines {
            body: res.bytes_stream().boxed(),
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The next line, or the end of the response; panics after `wait` of silence.
    pub async fn next(&mut self, wait: Duration) -> Next {
        loop {
            if let Some(pos) = self.buf[self.scanned..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map(|p| p + self.scanned)
            {
                let line = String::from_utf8(self.buf[..pos].to_vec()).expect("UTF-8 line");
                self.buf.drain(..pos + 2);
                self.scanned = 0;
                return Next::Line(line);
            }
            self.scanned = self.buf.len().saturating_sub(1);
            let chunk = tokio::time::timeout(wait, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("nothing on the stream within {wait:?}"));
            match chunk {
                None => return Next::End,
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                // A connection cut by the server's exit ends the stream too.
                Some(Err(_)) => return Next::End,
            }
        }
    }

    /// The next change (heartbeats skipped); panics when the stream ends.
    pub async fn next_change(&mut self) -> Value {
        loop {
            match self.next(Duration::from_secs(20)).await {
                Next::Line(line) if line.is_empty() => continue,
                Next::Line(line) => {
                    return serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("change line {line:?}: {e}"));
                }
                Next::End => panic!("the stream ended"),
            }
        }
    }
}
