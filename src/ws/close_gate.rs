//! Holds a client's Close frame back from tungstenite while that client's
//! pushes still wait for their answers.
//!
//! tungstenite answers a Close the moment it reads one, and from then on
//! refuses to send anything but that answer (RFC 6455 only forbids data
//! after *our* Close, but tungstenite cannot wait). So pushes read just
//! before a close, as `printf '…' | websocat` sends them (lines, then the
//! close at end of input, in one go), would never get their acks. This
//! reader sits between the socket and tungstenite, follows the frame
//! boundaries, and stops short of a Close frame while [`Gate::hold`] says
//! answers are owed, for at most its time limit. It reads only frame
//! headers, to find the boundaries; tungstenite still checks every frame.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The opcode of a Close frame (RFC 6455 §5.2).
const OP_CLOSE: u8 = 0x8;

/// What the connection's task tells the reader.
#[derive(Default)]
pub struct Gate(Mutex<GateState>);

#[derive(Default)]
struct GateState {
    /// Answers are owed: a Close must wait.
    hold: bool,
    /// The reader, stopped at a Close, to wake when it may go on.
    waker: Option<Waker>,
}

impl Gate {
    /// Says whether answers are owed; when no longer, a waiting Close goes on.
    pub fn hold(&self, hold: bool) {
        let mut state = self.0.lock();
        state.hold = hold;
        if !hold && let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// A socket whose reads stop short of a Close frame while its [`Gate`] holds.
pub struct GatedIo<T> {
    io: T,
    gate: Arc<Gate>,
    /// Read from `io` but kept back: a Close and what follows it.
    buf: BytesMut,
    frames: Frames,
    /// Longest a Close may wait.
    limit: Duration,
    /// When the waiting Close goes on regardless; set when one first waits.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The limit passed: hold nothing any more.
    expired: bool,
}

impl<T> GatedIo<T> {
    /// `io`, whose Close frames wait while `gate` holds, at most `limit`.
    pub fn new(io: T, gate: Arc<Gate>, limit: Duration) -> GatedIo<T> {
        GatedIo {
            io,
            gate,
            buf: BytesMut::new(),
            frames: Frames::default(),
            limit,
            deadline: None,
            expired: false,
        }
    }

    fn holding(&self) -> bool {
        !self.expired && self.gate.0.lock().hold
    }

    /// Waits for the gate, a Close being first in line: `true` to return
    /// `Pending` (woken by [`Gate::hold`] or the deadline), `false` when it
    /// may go on already.
    fn wait(&mut self, cx: &mut Context<'_>) -> bool {
        {
            // Checked and registered under one lock, so a release between
            // the two cannot be missed.
            let mut state = self.gate.0.lock();
            if !state.hold {
                return false;
            }
            state.waker = Some(cx.waker().clone());
        }
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!("a client's close waited {limit:?} for its answers; closing anyway");
            self.expired = true;
            return false;
        }
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GatedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                // What was kept back last time goes first.
                let room = this.buf.len().min(out.remaining());
                let n = this.frames.pass(&this.buf[..room], this.holding());
                if n > 0 || room == 0 {
                    out.put_slice(&this.buf[..n]);
                    this.buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A Close is first in line.
                if this.wait(cx) {
                    return Poll::Pending;
                }
                continue;
            }
            // Straight into tungstenite's buffer, so an idle connection
            // holds no buffer of ours; what may not pass yet is taken back.
            let before = out.filled().len();
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
            let fresh = &out.filled()[before..];
            if fresh.is_empty() {
                // The end of the stream.
                return Poll::Ready(Ok(()));
            }
            let n = this.frames.pass(fresh, this.holding());
            if n < fresh.len() {
                this.buf.extend_from_slice(&fresh[n..]);
                out.set_filled(before + n);
            }
            if n > 0 {
                return Poll::Ready(Ok(()));
            }
            // Nothing may pass: handing on nothing would read as the end.
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GatedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where the bytes handed on so far stand among the frames (RFC 6455 §5.2).
#[derive(Default)]
struct Frames {
    /// The current frame's header so far: at most 2 + 8 (length) + 4 (mask).
    header: [u8; 14],
    /// Bytes of it in `header`; 0 between frames.
    have: usize,
    /// Bytes of the current frame's payload still to pass.
    payload: u64,
}

impl Frames {
    /// Follows `bytes` as they pass and says how many may: those before a
    /// Close frame, which passes only first in line, and only when not
    /// `hold`. Alone, because the frames before it may be pushes: their
    /// reader must see them and hold before tungstenite sees the Close.
    fn pass(&mut self, bytes: &[u8], hold: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if self.payload > 0 {
                let n = ((bytes.len() - i) as u64).min(self.payload);
                self.payload -= n;
                i += n as usize;
                continue;
            }
            if self.have == 0 && (hold || i > 0) && bytes[i] & 0x0f == OP_CLOSE {
                return i;
            }
            self.header[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if self.have == self.header_len() {
                self.payload = self.payload_len();
                self.have = 0;
            }
        }
        i
    }

    /// The header's length, once its second byte is known (before, 2).
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let length = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + length + mask
    }

    /// The payload length a whole header gives.
    fn payload_len(&self) -> u64 {
        let h = &self.header;
        match h[1] & 0x7f {
            126 => u16::from_be_bytes([h[2], h[3]]).into(),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => n.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
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
        // A zero mask leaves the payload as it is: enough to find bounds.
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn frames_are_followed_across_any_split_and_a_close_is_found_at_its_start() {
        // A close byte (0x88) inside payloads and lengths must not count.
        let mut bytes = frame(0x81, &[0x88; 3]);
        bytes.extend(frame(0x82, &[0x88; 300]));
        bytes.extend(frame(0x89, b""));
        bytes.extend(frame(0x82, &vec![0x88; 70_000]));
        let close_at = bytes.len();
        bytes.extend(frame(0x88, &1000u16.to_be_bytes()));
        for step in [1, 2, 3, 7, 64, 4096, bytes.len()] {
            let mut frames = Frames::default();
            let mut at = 0;
            while at < bytes.len() {
                let piece = &bytes[at..(at + step).min(bytes.len())];
                let n = frames.pass(piece, true);
                at += n;
                if n < piece.len() {
                    break;
                }
            }
            assert_eq!(at, close_at, "in pieces of {step}");
            // Released, the close goes on.
            assert_eq!(frames.pass(&bytes[at..], false), bytes.len() - at);
        }
        // Not held, it still goes alone: what came before may be pushes.
        let mut frames = Frames::default();
        assert_eq!(frames.pass(&bytes, false), close_at);
        assert_eq!(
            frames.pass(&bytes[close_at..], false),
            bytes.len() - close_at
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_waits_while_held_and_goes_on_when_released_or_late() {
        let push = frame(0x81, b"{}");
        let close = frame(0x88, &1000u16.to_be_bytes());
        let all = [push.clone(), close.clone()].concat();
        for released in [true, false] {
            let (mut client, server) = tokio::io::duplex(1024);
            let gate = Arc::new(Gate::default());
            gate.hold(true);
            let mut io = GatedIo::new(server, gate.clone(), Duration::from_secs(3));
            client.write_all(&all).await.unwrap();
            let mut got = vec![0; push.len()];
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, push);
            let mut next = [0u8; 1];
            let waited = tokio::time::timeout(Duration::from_secs(1), io.read(&mut next)).await;
            assert!(waited.is_err(), "the close waits while held");
            if released {
                gate.hold(false);
            }
            let began = tokio::time::Instant::now();
            let mut rest = vec![0; close.len()];
            io.read_exact(&mut rest).await.unwrap();
            assert_eq!(rest, close);
            let late = began.elapsed() >= Duration::from_secs(1);
            assert_eq!(late, !released, "released: {released}");
        }
    }
}
