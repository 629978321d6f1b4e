//! The WebSocket after the handshake: frames decoded from and encoded into the connection
//! directly, with no HTTP machinery left in between.
//!
//! Most peers are idle most of the time (waiting for a session), so neither side keeps a
//! buffer while there is nothing to read or write: an idle connection costs its socket, a
//! few small structs and nothing else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::{AsyncRead, AsyncWrite, Decoder as _, ReadBuf};
use actix_http::ws::{CloseReason, Codec, Frame, Item, OpCode, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::oneshot;

/// Bytes read per `read` call. They land on the stack and are copied into the frame buffer,
/// which therefore exists only while a frame is incomplete.
const READ_CHUNK: usize = 8 * 1024;

/// A message of the peer, its fragments already joined.
#[derive(Debug)]
pub enum Incoming {
    /// A text message (its UTF-8 not yet checked).
    Text(Bytes),
    /// A binary message (not part of the protocol; its content does not matter).
    Binary,
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
}

/// Why the peer's frames end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A frame, or a message joined from fragments, above the size limit.
    #[error("message above the size limit")]
    TooBig,
    #[error("protocol error: {0}")]
    Protocol(ProtocolError),
    /// The connection broke (without a close frame).
    #[error("connection dropped: {0}")]
    Io(#[from] io::Error),
}

/// A fragmented message being joined.
struct Partial {
    text: bool,
    data: BytesMut,
    /// Bytes received so far (binary fragments are counted, not kept).
    len: usize,
}

/// The peer's messages, read from the read half of its connection.
pub struct FrameStream<R> {
    io: Option<R>,
    /// Bytes read but not yet decoded; empty (no allocation) between messages.
    buf: BytesMut,
    codec: Codec,
    max_size: usize,
    partial: Option<Partial>,
    done: bool,
    /// Gives the read half back when the stream is dropped, for the writer's closing
    /// handshake (see [`linger`]).
    give_back: Option<oneshot::Sender<R>>,
}

impl<R> FrameStream<R> {
    /// Reads frames from `io`, after `read` (bytes that arrived with the handshake).
    pub fn new(
        io: R,
        read: BytesMut,
        max_size: usize,
        give_back: oneshot::Sender<R>,
    ) -> FrameStream<R> {
        FrameStream {
            io: Some(io),
            buf: read,
            codec: Codec::new().max_size(max_size),
            max_size,
            partial: None,
            done: false,
            give_back: Some(give_back),
        }
    }

    /// The next whole message among the bytes already read, if there is one.
    fn next_message(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            // Refuse an oversized frame by its header, before buffering its payload.
            if let Some(len) = declared_len(&self.buf) {
                let joined = self.partial.as_ref().map_or(0, |p| p.len);
                if len.saturating_add(joined as u64) > self.max_size as u64 {
                    return Err(ReadError::TooBig);
                }
            }
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(ProtocolError::Overflow) => return Err(ReadError::TooBig),
                Err(e) => return Err(ReadError::Protocol(e)),
            };
            let fragment = match frame {
                Frame::Text(data) => return Ok(Some(Incoming::Text(data))),
                Frame::Binary(_) => return Ok(Some(Incoming::Binary)),
                Frame::Ping(data) => return Ok(Some(Incoming::Ping(data))),
                Frame::Pong(_) => return Ok(Some(Incoming::Pong)),
                Frame::Close(reason) => return Ok(Some(Incoming::Close(reason))),
                Frame::Continuation(fragment) => fragment,
            };
            // (the codec rejects fragments out of order)
            let (first, data, last) = match fragment {
                Item::FirstText(data) => (Some(true), data, false),
                Item::FirstBinary(data) => (Some(false), data, false),
                Item::Continue(data) => (None, data, false),
                Item::Last(data) => (None, data, true),
            };
            let partial = match first {
                Some(text) => self.partial.insert(Partial {
                    text,
                    data: BytesMut::new(),
                    len: 0,
                }),
                None => match self.partial.as_mut() {
                    Some(p) => p,
                    None => return Err(ReadError::Protocol(ProtocolError::ContinuationNotStarted)),
                },
            };
            partial.len += data.len();
            if partial.len > self.max_size {
                return Err(ReadError::TooBig);
            }
            if partial.text {
                partial.data.extend_from_slice(&data);
            }
            if last {
                let whole = self.partial.take().map(|p| (p.text, p.data));
                return Ok(whole.map(|(text, data)| match text {
                    true => Incoming::Text(data.freeze()),
                    false => Incoming::Binary,
                }));
            }
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameStream<R> {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(io).poll_read(cx, &mut read) {
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // all decoded: release the buffer (and whatever it shared with the
                        // frames already handed out) while the peer is quiet
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ReadError::Io(e))));
                }
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.done = true; // end of stream, without a close frame
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(read.filled()),
            }
        }
    }
}

impl<R> Drop for FrameStream<R> {
    fn drop(&mut self) {
        if let (Some(io), Some(give_back)) = (self.io.take(), self.give_back.take()) {
            let _ = give_back.send(io);
        }
    }
}

/// The payload length a frame header announces, once enough of the header is there.
fn declared_len(buf: &[u8]) -> Option<u64> {
    let len = buf.get(1)? & 0x7f;
    Some(match len {
        126 => u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        127 => u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
        n => u64::from(n),
    })
}

/// Frames for the peer, encoded into one buffer and written to the write half of its
/// connection in one go.
pub struct FrameWriter<W> {
    io: W,
    /// Frames not yet written; empty (no allocation) between writes.
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> FrameWriter<W> {
        FrameWriter {
            io,
            buf: BytesMut::new(),
        }
    }

    pub fn text(&mut self, text: &str) {
        Parser::write_message(&mut self.buf, text, OpCode::Text, true, false);
    }

    pub fn ping(&mut self) {
        Parser::write_message(&mut self.buf, b"", OpCode::Ping, true, false);
    }

    pub fn pong(&mut self, data: &[u8]) {
        Parser::write_message(&mut self.buf, data, OpCode::Pong, true, false);
    }

    pub fn close(&mut self, reason: Option<CloseReason>) {
        Parser::write_close(&mut self.buf, reason, false);
    }

    /// Bytes encoded and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is buffered, then releases the buffer.
    pub async fn write(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            // (TLS keeps what it encrypted until flushed)
            self.io.flush().await?;
        }
        self.buf = BytesMut::new();
        Ok(())
    }

    /// Ends the connection after a close frame: no more writes, then what the peer still
    /// sends is read and dropped until it closes too, or `within` passes. Dropping a socket
    /// with unread input makes the kernel reset the connection, and a reset can destroy the
    /// close frame before the peer reads it.
    pub async fn linger<R: AsyncRead + Unpin>(
        mut self,
        read_half: oneshot::Receiver<R>,
        within: std::time::Duration,
    ) {
        let _ = self.io.shutdown().await;
        let _ = tokio::time::timeout(within, async {
            let Ok(mut io) = read_half.await else {
                return;
            };
            let mut sink = [0u8; 1024];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut io, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// A client frame (masked, as clients must).
    fn frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                out.push(0x80 | 126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [1, 2, 3, 4];
        out.extend(mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn stream(bytes: Vec<u8>, max: usize) -> FrameStream<tokio::io::DuplexStream> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let _ = client.write_all(&bytes).await;
            // keep the client open until the test is done reading
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        FrameStream::new(server, BytesMut::new(), max, oneshot::channel().0)
    }

    #[tokio::test]
    async fn fragments_are_joined() {
        let mut bytes = frame(0x1, false, b"hel");
        bytes.extend(frame(0x9, true, b"p")); // a ping between fragments is allowed
        bytes.extend(frame(0x0, false, b"lo "));
        bytes.extend(frame(0x0, true, b"world"));
        let mut s = stream(bytes, 64);
        assert!(matches!(s.next().await, Some(Ok(Incoming::Ping(p))) if &p[..] == b"p"));
        match s.next().await {
            Some(Ok(Incoming::Text(t))) => assert_eq!(&t[..], b"hello world"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn joined_fragments_above_the_limit_are_too_big() {
        let mut bytes = frame(0x1, false, &[b'a'; 40]);
        bytes.extend(frame(0x0, true, &[b'a'; 40]));
        let mut s = stream(bytes, 64);
        assert!(matches!(s.next().await, Some(Err(ReadError::TooBig))));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_by_its_header() {
        // only the header arrives: the payload is never waited for
        let bytes = frame(0x1, true, &[b'a'; 70_000])[..14].to_vec();
        let mut s = stream(bytes, 64);
        assert!(matches!(s.next().await, Some(Err(ReadError::TooBig))));
    }

    #[tokio::test]
    async fn bytes_read_with_the_handshake_come_first() {
        let (_client, server) = tokio::io::duplex(64);
        let early = BytesMut::from(&frame(0x1, true, b"{}")[..]);
        let mut s = FrameStream::new(server, early, 64, oneshot::channel().0);
        assert!(matches!(s.next().await, Some(Ok(Incoming::Text(t))) if &t[..] == b"{}"));
    }

    #[tokio::test]
    async fn frames_are_written_in_one_go() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut w = FrameWriter::new(server);
        w.text("a");
        w.ping();
        assert_eq!(w.buffered(), 5);
        w.write().await.unwrap();
        assert_eq!(w.buffered(), 0);
        let mut got = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(got, [0x81, 1, b'a', 0x89, 0]);
    }

    /// Every message the reader finds in `bytes` (already read), until it wants more or
    /// refuses: never a panic, never a message over the limit.
    fn drain(bytes: Vec<u8>, max: usize) {
        let mut s = FrameStream::new(
            tokio::io::empty(),
            BytesMut::from(&bytes[..]),
            max,
            oneshot::channel().0,
        );
        for _ in 0..1000 {
            match s.next_message() {
                Ok(Some(Incoming::Text(t))) => assert!(t.len() <= max),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_frame_reader_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            drain(bytes, 256);
        }

        #[test]
        fn the_frame_reader_takes_mutated_real_frames(
            edits in proptest::collection::vec(proptest::prelude::any::<(u16, u8, u8)>(), 0..8),
        ) {
            let mut seed = frame(0x1, false, b"{\"type\":\"li");
            seed.extend(frame(0x9, true, b"p"));
            seed.extend(frame(0x0, true, b"st\"}"));
            seed.extend(frame(0x1, true, &[b'x'; 300]));
            seed.extend(frame(0x8, true, &[3, 232]));
            drain(crate::fuzzing::mutate(&seed, &edits), 256);
        }
    }
}
