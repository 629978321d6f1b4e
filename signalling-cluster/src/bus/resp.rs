//! A small RESP2 client for the cluster bus' hot path: the publisher's pipelines and the
//! subscription's pushes.
//!
//! redis-rs (kept for everything else: liveness, reaping, claims) passes every pipeline through
//! its multiplexer's channel to a driver task and back through a oneshot, and parses every reply
//! and push into a general value tree with owned buffers. On the relay path that cost as much as
//! the rest of the Redis hop (see `BENCHMARKS.md`). Here the publishing task encodes its pipeline
//! into one buffer, writes it and reads the replies itself; the subscriber reads pushes in place
//! and hands their payloads on as borrowed `&str`s.
//!
//! Connections are made from the same URL as redis-rs' (`redis://`, `rediss://`, unix sockets;
//! user, password and database), so both speak to the same Redis with the same credentials.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Longest a connection attempt (connect, TLS, `AUTH`, `SELECT`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Redis' own default limit on one bulk string (`proto-max-bulk-len`); anything longer is a
/// broken stream, not a message.
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Deepest nesting of arrays accepted (pushes and replies here have depth 1).
const MAX_DEPTH: usize = 4;

/// What can go wrong on a hot-path connection.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis refused {what}: {message}")]
    Refused { what: &'static str, message: String },
    #[error("not a RESP stream: {0}")]
    Protocol(&'static str),
    #[error("unsupported Redis address: {0}")]
    Unsupported(&'static str),
    #[error("no trusted root certificates found ({0})")]
    NoTrustedRoots(String),
}

impl RespError {
    /// Redis' certificate was rejected, or there is nothing to check it against: what this
    /// process trusts does not change by waiting.
    pub fn is_untrusted(&self) -> bool {
        match self {
            RespError::NoTrustedRoots(_) => true,
            RespError::Io(e) => matches!(
                e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            _ => false,
        }
    }
}

/// One RESP2 value, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
    Array(Option<Vec<Value<'a>>>),
}

impl Value<'_> {
    fn error_text(&self) -> Option<String> {
        match self {
            Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        }
    }
}

/// Parses one value at the start of `buf`: the value and the bytes it took, or `None` if `buf`
/// holds only part of it.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value<'_>, usize)>, RespError> {
    let Some((kind, line, next)) = line(buf, at)? else {
        return Ok(None);
    };
    let value = match kind {
        b'+' => Value::Simple(line),
        b'-' => Value::Error(line),
        b':' => Value::Int(number(line)?),
        b'$' => {
            let Ok(len) = usize::try_from(number(line)?) else {
                return Ok(Some((Value::Bulk(None), next))); // $-1: nil
            };
            if len > MAX_BULK {
                return Err(RespError::Protocol("bulk string too long"));
            }
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Protocol("bulk string not ended by CRLF"));
            }
            return Ok(Some((Value::Bulk(Some(&buf[next..end])), end + 2)));
        }
        b'*' => {
            let Ok(len) = usize::try_from(number(line)?) else {
                return Ok(Some((Value::Array(None), next))); // *-1: nil
            };
            if depth >= MAX_DEPTH {
                return Err(RespError::Protocol("arrays nested too deep"));
            }
            // Every element takes at least 3 bytes: no allocation beyond what arrived.
            let mut items = Vec::with_capacity(len.min((buf.len() - next) / 3));
            let mut pos = next;
            for _ in 0..len {
                let Some((item, after)) = parse_at(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = after;
            }
            return Ok(Some((Value::Array(Some(items)), pos)));
        }
        _ => return Err(RespError::Protocol("unknown value type")),
    };
    Ok(Some((value, next)))
}

/// A line's type byte, the rest of the line, and where the next line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The line starting at `at`, if it is all there.
fn line(buf: &[u8], at: usize) -> Result<Option<Line<'_>>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    // (after the type byte: a line that starts with CR is not RESP, and must not make the
    // rest of the line end before it starts; found by the property test below)
    let Some(cr) = buf[at + 1..].iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    let cr = at + 1 + cr;
    match buf.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((kind, &buf[at + 1..cr], cr + 2))),
        Some(_) => Err(RespError::Protocol("line not ended by CRLF")),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Protocol("bad number"))
}

/// Commands encoded back to back, to be written at once.
#[derive(Default)]
pub struct Pipeline {
    buf: Vec<u8>,
    commands: usize,
}

impl Pipeline {
    pub fn cmd(&mut self, args: &[&[u8]]) {
        self.buf.push(b'*');
        self.put_len(args.len());
        for arg in args {
            self.buf.push(b'$');
            self.put_len(arg.len());
            self.buf.extend_from_slice(arg);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.commands += 1;
    }

    pub fn publish(&mut self, channel: &str, message: &str) {
        self.cmd(&[b"PUBLISH", channel.as_bytes(), message.as_bytes()]);
    }

    pub fn hset(&mut self, key: &str, field: &str, value: &str) {
        self.cmd(&[b"HSET", key.as_bytes(), field.as_bytes(), value.as_bytes()]);
    }

    pub fn hdel(&mut self, key: &str, field: &str) {
        self.cmd(&[b"HDEL", key.as_bytes(), field.as_bytes()]);
    }

    /// Commands in the pipeline (each gets one reply).
    pub fn len(&self) -> usize {
        self.commands
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.commands = 0;
    }

    fn put_len(&mut self, n: usize) {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }
}

/// A connection to Redis: a stream and what has been read from it but not yet parsed.
pub struct Connection {
    stream: Stream,
    read: BytesMut,
    /// `CLIENT REPLY OFF` is in force: Redis answers nothing, not even errors.
    quiet: bool,
}

impl Connection {
    /// Connects to the Redis of `info` and authenticates and selects its database, if the URL
    /// says so; `name` is given to `CLIENT SETNAME` (seen in `CLIENT LIST`).
    pub async fn connect(info: &ConnectionInfo, name: &str) -> Result<Connection, RespError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_now(info, name))
            .await
            .map_err(|_| RespError::Timeout(CONNECT_TIMEOUT))?
    }

    async fn connect_now(info: &ConnectionInfo, name: &str) -> Result<Connection, RespError> {
        let stream = Stream::connect(info.addr()).await?;
        let mut con = Connection {
            stream,
            read: BytesMut::with_capacity(16 * 1024),
            quiet: false,
        };
        let redis = info.redis_settings();
        let mut hello = Pipeline::default();
        let mut what = Vec::new();
        if let Some(password) = redis.password() {
            match redis.username() {
                Some(user) => hello.cmd(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => hello.cmd(&[b"AUTH", password.as_bytes()]),
            }
            what.push("AUTH");
        }
        if redis.db() != 0 {
            let db = redis.db().to_string();
            hello.cmd(&[b"SELECT", db.as_bytes()]);
            what.push("SELECT");
        }
        hello.cmd(&[b"CLIENT", b"SETNAME", name.as_bytes()]);
        con.write(&hello).await?;
        for what in what {
            if let Some(message) = con.reply(|v| v.error_text()).await? {
                return Err(RespError::Refused { what, message });
            }
        }
        // The name only shows in `CLIENT LIST`: a user whose ACL forbids `CLIENT` goes on.
        if let Some(refused) = con.reply(|v| v.error_text()).await? {
            tracing::debug!("Redis refused CLIENT SETNAME: {refused}");
        }
        Ok(con)
    }

    /// Turns Redis' replies off for this connection (`CLIENT REPLY OFF`), for a writer that
    /// needs no answers: every reply would wake the reader's event loop and cost Redis a write.
    /// Returns whether Redis agreed (ACLs may forbid `CLIENT`); if not, nothing changed.
    pub async fn quiet(&mut self) -> Result<bool, RespError> {
        let mut pipe = Pipeline::default();
        pipe.cmd(&[b"CLIENT", b"REPLY", b"OFF"]);
        pipe.cmd(&[b"CLIENT", b"REPLY", b"ON"]);
        self.write(&pipe).await?;
        // OFF accepted: only ON answers (+OK). OFF refused: its error comes first.
        if let Some(refused) = self.reply(|v| v.error_text()).await? {
            self.reply(|_| ()).await?;
            tracing::debug!("Redis keeps replying: {refused}");
            return Ok(false);
        }
        pipe.clear();
        pipe.cmd(&[b"CLIENT", b"REPLY", b"OFF"]);
        self.write(&pipe).await?;
        self.quiet = true;
        Ok(true)
    }

    /// Whether Redis' replies are off (see [`Connection::quiet`]).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Resolves when a quiet connection ends: closed, broken, or sent something it should not
    /// have. Reading costs nothing until then: nothing arrives.
    pub async fn closed(&mut self) -> RespError {
        match self.fill().await {
            Err(e) => e,
            Ok(()) => RespError::Protocol("data on a connection whose replies are off"),
        }
    }

    /// Writes the whole pipeline.
    pub async fn write(&mut self, pipe: &Pipeline) -> Result<(), RespError> {
        self.stream.write_all(&pipe.buf).await?;
        Ok(())
    }

    /// Reads one reply and gives it to `f`, reading from the stream as needed.
    pub async fn reply<T>(&mut self, f: impl FnOnce(Value<'_>) -> T) -> Result<T, RespError> {
        loop {
            if let Some((value, used)) = parse(&self.read)? {
                let out = f(value);
                self.read.advance(used);
                return Ok(out);
            }
            self.fill().await?;
        }
    }

    /// Reads the replies of a pipeline of `n` commands: the error messages among them.
    pub async fn replies(&mut self, n: usize) -> Result<Vec<String>, RespError> {
        let mut errors = Vec::new();
        for _ in 0..n {
            if let Some(e) = self.reply(|v| v.error_text()).await? {
                errors.push(e);
            }
        }
        Ok(errors)
    }

    /// Reads what is there (at least one byte) and gives every complete value to `f`.
    pub async fn read_values(&mut self, mut f: impl FnMut(Value<'_>)) -> Result<(), RespError> {
        self.fill().await?;
        let mut at = 0;
        while let Some((value, used)) = parse(&self.read[at..])? {
            f(value);
            at += used;
        }
        self.read.advance(at);
        Ok(())
    }

    async fn fill(&mut self) -> Result<(), RespError> {
        if self.read.capacity() - self.read.len() < 4096 {
            self.read.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.read).await? {
            0 => Err(RespError::Closed),
            _ => Ok(()),
        }
    }
}

/// Subscribes `con` to `channels` and waits for Redis to confirm every one.
pub async fn subscribe(con: &mut Connection, channels: &[&str]) -> Result<(), RespError> {
    let mut pipe = Pipeline::default();
    let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    args.extend(channels.iter().map(|c| c.as_bytes()));
    pipe.cmd(&args);
    con.write(&pipe).await?;
    for _ in channels {
        let confirmed = con
            .reply(|v| match v {
                Value::Array(Some(items)) => {
                    matches!(items.first(), Some(Value::Bulk(Some(b"subscribe"))))
                        .then_some(())
                        .ok_or_else(|| "an unexpected reply".to_string())
                }
                other => Err(other
                    .error_text()
                    .unwrap_or_else(|| "an unexpected reply".into())),
            })
            .await?;
        if let Err(message) = confirmed {
            return Err(RespError::Refused {
                what: "SUBSCRIBE",
                message,
            });
        }
    }
    Ok(())
}

/// A pub/sub message push: its channel and payload.
pub fn message<'a>(value: &Value<'a>) -> Option<(&'a [u8], &'a [u8])> {
    match value {
        Value::Array(Some(items)) => match items.as_slice() {
            [Value::Bulk(Some(b"message")), Value::Bulk(Some(channel)), Value::Bulk(Some(payload))] => {
                Some((channel, payload))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether this client can connect to `addr` as redis-rs would: not to `rediss://…#insecure`
/// (no certificate check) nor with client certificates, which redis-rs takes and we do not.
pub fn supported(addr: &ConnectionAddr) -> Result<(), RespError> {
    match addr {
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            Err(RespError::Unsupported("rediss:// with #insecure"))
        }
        ConnectionAddr::TcpTls {
            tls_params: Some(_),
            ..
        } => Err(RespError::Unsupported("rediss:// with client certificates")),
        ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. } | ConnectionAddr::Unix(_) => Ok(()),
        _ => Err(RespError::Unsupported("unknown address kind")),
    }
}

/// The transports redis-rs connects over, for the same URLs.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl Stream {
    async fn connect(addr: &ConnectionAddr) -> Result<Stream, RespError> {
        match addr {
            ConnectionAddr::Tcp(host, port) => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                Ok(Stream::Tcp(tcp))
            }
            ConnectionAddr::TcpTls { host, port, .. } => {
                supported(addr)?;
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| RespError::Unsupported("rediss:// host is not a valid name"))?;
                let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                    .connect(name, tcp)
                    .await?;
                Ok(Stream::Tls(Box::new(tls)))
            }
            ConnectionAddr::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
            _ => Err(RespError::Unsupported("unknown address kind")),
        }
    }
}

/// Trusts the system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`), as redis-rs does: the Helm
/// chart points `SSL_CERT_FILE` at a private CA.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, RespError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(RespError::NoTrustedRoots(
            found
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushes_replies_and_partial_input() {
        let push = b"*3\r\n$7\r\nmessage\r\n$5\r\nchan1\r\n$11\r\n{\"a\":\"b c\"}\r\n:1\r\n";
        let (value, used) = parse(push).unwrap().unwrap();
        assert_eq!(
            message(&value),
            Some((&b"chan1"[..], &b"{\"a\":\"b c\"}"[..]))
        );
        assert_eq!(parse(&push[used..]).unwrap(), Some((Value::Int(1), 4)));
        // Every proper prefix is incomplete, not an error.
        for cut in 0..used {
            assert_eq!(parse(&push[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
        assert_eq!(
            parse(b"-ERR wrong\r\n").unwrap(),
            Some((Value::Error(b"ERR wrong"), 12))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Value::Bulk(None), 5)));
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Value::Simple(b"OK"), 5)));
    }

    #[test]
    fn rejects_what_is_not_resp() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":12x\r\n").is_err());
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
        assert!(parse(b"+OK\rX").is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert!(parse(b"$999999999999\r\n").is_err());
        assert!(parse(b"\r\n:1\r\n").is_err(), "a line starting with CR");
    }

    #[test]
    fn takes_the_urls_redis_rs_takes_but_unchecked_tls() {
        let addr = |url: &str| {
            redis::Client::open(url)
                .expect("a valid URL")
                .get_connection_info()
                .addr()
                .clone()
        };
        assert!(supported(&addr("redis://u:p@127.0.0.1:6379/2")).is_ok());
        assert!(supported(&addr("rediss://redis.example:6380")).is_ok());
        assert!(supported(&addr("redis+unix:///run/redis.sock")).is_ok());
        assert!(supported(&addr("rediss://redis.example:6380/#insecure")).is_err());
    }

    #[test]
    fn a_subscribe_confirmation_is_not_a_message() {
        let (value, _) = parse(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(message(&value), None);
    }

    #[test]
    fn pipelines_encode_as_arrays_of_bulk_strings() {
        let mut pipe = Pipeline::default();
        pipe.publish("c", "hé");
        pipe.hdel("k", "f");
        assert_eq!(
            pipe.buf,
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$3\r\nh\xc3\xa9\r\n*3\r\n$4\r\nHDEL\r\n$1\r\nk\r\n$1\r\nf\r\n"
        );
        assert_eq!(pipe.commands, 2);
        // What we encode, we parse back.
        let (value, used) = parse(&pipe.buf).unwrap().unwrap();
        assert_eq!(
            value,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"PUBLISH")),
                Value::Bulk(Some(b"c")),
                Value::Bulk(Some("hé".as_bytes())),
            ]))
        );
        assert!(parse(&pipe.buf[used..]).unwrap().is_some());
    }

    proptest::proptest! {
        /// Whatever Redis (or something posing as it) sends: a value, "need more", or an
        /// error; never a panic, never more bytes taken than given.
        #[test]
        fn the_resp_reader_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(Some((_, used))) = parse(&bytes) {
                proptest::prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn the_resp_reader_takes_mutated_real_replies(
            edits in proptest::collection::vec(proptest::prelude::any::<(u16, u8, u8)>(), 0..8),
        ) {
            let seed = b"*3\r\n$7\r\nmessage\r\n$5\r\nchan1\r\n$11\r\n{\"a\":\"b c\"}\r\n:1\r\n+OK\r\n-ERR x\r\n$-1\r\n*2\r\n:1\r\n:2\r\n";
            let bytes = crate::fuzzing::mutate(seed, &edits);
            let mut rest = &bytes[..];
            while let Ok(Some((_, used))) = parse(rest) {
                proptest::prop_assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
        }
    }
}
