//! HTTP/1.1 toward an upstream, on the request's own task: the request is written and its
//! answer read by the task that serves the client, with no connection task between them.
//!
//! Why not hyper's HTTP/1.1 client: there each connection runs in a task of its own and reads
//! ahead into a buffer that grows to fit what arrives, so memory follows the bytes in flight
//! (256 connections of 64 KiB answers held ~77 MiB), and every chunk of an answer is a hand-off
//! between two tasks. Here a connection reads only when the client's side asks for the next
//! chunk, in reads of at most [`READ_CHUNK`] bytes; a connection is one buffer, whatever the
//! answers' sizes (bench/README.md, "Peak RSS").
//!
//! The wire follows RFC 9112: the request's framing from its `Content-Length` or its body's
//! exact size, else chunked; the answer's from `Transfer-Encoding`, `Content-Length`, the
//! method and the status (§6.3), or read to the connection's end. A connection is reused only
//! when its answer was read to the end, nothing more arrived, and neither side said `close`.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;

use super::Home;
use crate::proxy::{BoxError, ProxyBody};

mod reading;
mod request;

pub use reading::Reading;
pub use request::Upload;
use request::{encode_head, head_size};

/// A connection's stream: TCP, or TLS over it.
pub type Io = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>>;

/// The most read at once for an answer's first 64 KiB (and so about what one connection holds
/// while its answer is read, however many answers are in flight). A 64 KiB cap held 256
/// connections of 64 KiB answers at ~37 MiB, 32 KiB at ~32, 16 KiB at ~27 (bench/README.md).
pub const READ_CHUNK: usize = 16 * 1024;

/// The most read at once past an answer's first 64 KiB: a long download in 16 KiB reads ran at
/// about two thirds of the speed (each read is a system call and a hand-off through the stack).
pub const READ_STREAM: usize = 256 * 1024;

/// How much one read of a body may take, once `so_far` bytes of it have come: [`READ_CHUNK`]
/// for the first 64 KiB, so that many answers at once hold little each; [`READ_STREAM`] for a
/// long one.
fn read_size(so_far: u64) -> usize {
    if so_far < 64 * 1024 {
        READ_CHUNK
    } else {
        READ_STREAM
    }
}

/// The first read of an answer's head (with what follows it of the body); a longer head grows
/// the buffer up to the pool's bound.
const HEAD_CHUNK: usize = READ_CHUNK;

/// Header lines accepted in an answer (hyper's limit, which this replaces).
const MAX_HEADERS: usize = 100;

/// A chunk-size line longer than this is not HTTP.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Body bytes at most copied into the buffer that carries the request's head, rather than
/// written on their own.
const COALESCE: usize = 16 * 1024;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before its answer was complete")]
    Closed,
    #[error("the upstream's answer is not HTTP/1.1: {0}")]
    Parse(&'static str),
    #[error("the upstream's answer head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("the request body does not match its content-length")]
    RequestLength,
}

/// How a failed exchange ended.
#[derive(Debug)]
pub struct Failed {
    pub error: WireError,
    /// Nothing came back on a connection used before, for a request that may be sent again: the
    /// upstream most likely closed it while idle, and another connection may carry the request.
    pub retry: bool,
}

/// One upstream connection, idle or carrying one exchange.
pub struct Conn {
    /// Boxed: a TLS stream is over 1 KiB, and a connection moves in and out of its pool.
    io: Box<Io>,
    buf: BytesMut,
    /// Answers read to their end on it.
    served: u32,
    /// Neither side has said `close`, and the last answer was read to its end.
    reusable: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes (0: no body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// An answer's head.
pub struct Answer {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// The rest of the request, when the answer began before all of it was written.
    pub upload: Option<Box<Upload>>,
}

impl Conn {
    /// A connection just made.
    pub fn new(io: Io) -> Self {
        Conn {
            io: Box::new(io),
            buf: BytesMut::new(),
            served: 0,
            reusable: true,
        }
    }

    /// Whether an idle connection can carry a request: nothing unread and, when `look`, a look at
    /// the socket (without waiting: one `recv` that finds nothing) finds it neither closed by the
    /// upstream nor holding bytes no request asked for.
    pub fn is_open(&mut self, look: bool) -> bool {
        if !self.reusable || !self.buf.is_empty() {
            return false;
        }
        if !look {
            return true;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut *self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Writes `req` (its URI in origin form) and reads its answer's head. The body is read by
    /// [`Reading`] afterwards.
    pub async fn send(
        &mut self,
        req: &mut Request<ProxyBody>,
        max_head: usize,
    ) -> Result<Answer, Failed> {
        let reused = self.served > 0;
        let replayable = may_send_again(req);
        let retry = |error: WireError, received: bool| Failed {
            retry: reused && replayable && !received && is_hangup(&error),
            error,
        };
        let mut out = BytesMut::with_capacity(head_size(req));
        let encoding = encode_head(req, &mut out).map_err(|e| retry(e, true))?;
        let mut upload = Upload::new(out, std::mem::take(req.body_mut()), encoding);
        let head_only = req.method() == Method::HEAD;
        let sent = std::future::poll_fn(|cx| self.poll_start(cx, &mut upload, head_only, max_head))
            .await
            .map_err(|(e, received)| retry(e, received))?;
        match sent {
            Sent::Early(mut answer) => {
                answer.upload = Some(Box::new(upload));
                return Ok(*answer);
            }
            Sent::Cut => self.reusable = false,
            Sent::All => {}
        }
        self.read_head(head_only, max_head)
            .await
            .map_err(|(e, received)| retry(e, received))
    }

    /// Writes the request until it is all written, or its answer's head has come, or the
    /// upstream hangs up.
    fn poll_start(
        &mut self,
        cx: &mut Context<'_>,
        upload: &mut Upload,
        head_only: bool,
        max_head: usize,
    ) -> Poll<Result<Sent, (WireError, bool)>> {
        loop {
            match upload.poll_send(&mut self.io, cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Sent::All)),
                Poll::Ready(Err(WireError::RequestBody(e))) => {
                    return Poll::Ready(Err((WireError::RequestBody(e), true)))
                }
                Poll::Ready(Err(WireError::RequestLength)) => {
                    return Poll::Ready(Err((WireError::RequestLength, true)))
                }
                // The upstream may have answered before it hung up: read what it sent.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(Sent::Cut)),
                Poll::Pending => {}
            }
            // The request waits: has the answer begun?
            if self.buf.len() >= max_head {
                return Poll::Ready(Err((WireError::HeadTooLarge(max_head), true)));
            }
            let want = (max_head - self.buf.len()).min(HEAD_CHUNK) as u64;
            match ready!(self.poll_fill(cx, want)) {
                Ok(0) => return Poll::Ready(Ok(Sent::Cut)),
                Ok(_) => {
                    if let Some(answer) = self.parse_head(head_only).map_err(|e| (e, true))? {
                        return Poll::Ready(Ok(Sent::Early(Box::new(answer))));
                    }
                }
                Err(e) => return Poll::Ready(Err((e.into(), !self.buf.is_empty()))),
            }
        }
    }

    /// Reads up to the end of the answer's head (skipping interim `1xx` answers).
    async fn read_head(
        &mut self,
        head_only: bool,
        max_head: usize,
    ) -> Result<Answer, (WireError, bool)> {
        let mut received = !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                if let Some(answer) = self.parse_head(head_only).map_err(|e| (e, true))? {
                    return Ok(answer);
                }
            }
            if self.buf.len() >= max_head {
                return Err((WireError::HeadTooLarge(max_head), true));
            }
            let room = (self.buf.len().max(HEAD_CHUNK)).min(max_head - self.buf.len());
            self.buf.reserve(room);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err((WireError::Closed, received)),
                Ok(_) => received = true,
                Err(e) => return Err((WireError::Io(e), received)),
            }
        }
    }

    /// The answer's head, if the buffer holds all of it (after any interim answers, which are
    /// dropped).
    fn parse_head(&mut self, head_only: bool) -> Result<Option<Answer>, WireError> {
        loop {
            // Uninitialised: 100 header slots are 3.2 KiB that a parse need not clear first.
            let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let config = httparse::ParserConfig::default();
            let len =
                match config.parse_response_with_uninit_headers(&mut parsed, &self.buf, &mut lines)
                {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(e) => return Err(WireError::Parse(parse_error(e))),
                };
            let code = parsed.code.unwrap_or_default();
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(WireError::Parse(
                        "101 Switching Protocols was not asked for",
                    ));
                }
                self.buf.advance(len);
                continue;
            }
            let status = StatusCode::from_u16(code).map_err(|_| WireError::Parse("status"))?;
            let version = if parsed.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // Where each name and value lies in the head, so that the values can share the
            // head's bytes instead of each being copied.
            // (A head is at most the pool's bound, 256 KiB: offsets fit in u32.)
            let base = self.buf.as_ptr() as usize;
            let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
            let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
            let count = parsed.headers.len();
            for (span, line) in spans.iter_mut().zip(parsed.headers.iter()) {
                let (name, value) = (line.name.as_bytes(), line.value);
                *span = (
                    offset(name),
                    name.len() as u32,
                    offset(value),
                    value.len() as u32,
                );
            }
            let head = self.buf.split_to(len).freeze();
            let mut headers = HeaderMap::with_capacity(count);
            for &(name, name_len, value, value_len) in &spans[..count] {
                let (name, value) = (name as usize, value as usize);
                let (name_len, value_len) = (name_len as usize, value_len as usize);
                let name = HeaderName::from_bytes(&head[name..name + name_len])
                    .map_err(|_| WireError::Parse("a header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
                    .map_err(|_| WireError::Parse("a header value"))?;
                headers.append(name, value);
            }
            let keep_alive = keep_alive(version, &headers);
            let framing = framing(head_only, status, &mut headers)?;
            self.reusable &= keep_alive && framing != Framing::Close;
            let (mut parts, ()) = http::Response::new(()).into_parts();
            parts.status = status;
            parts.version = Version::HTTP_11;
            parts.headers = headers;
            return Ok(Some(Answer {
                parts,
                framing,
                upload: None,
            }));
        }
    }

    /// Reads more of the answer: at most `want` bytes' room (and [`READ_CHUNK`]).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        self.poll_fill_up_to(cx, want, READ_CHUNK)
    }

    fn poll_fill_up_to(
        &mut self,
        cx: &mut Context<'_>,
        want: u64,
        most: usize,
    ) -> Poll<io::Result<usize>> {
        let room = usize::try_from(want).unwrap_or(most).clamp(1, most);
        self.buf.reserve(room);
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }
}

/// Whether `req` may be sent again when nothing came back: no body, and a method that asks for
/// nothing more if it arrives twice (RFC 9110 §9.2.2).
pub fn may_send_again(req: &Request<ProxyBody>) -> bool {
    req.body().is_end_stream() && req.method().is_idempotent()
}

/// Whether the error is the upstream hanging up (rather than, say, a malformed answer).
fn is_hangup(e: &WireError) -> bool {
    match e {
        WireError::Closed => true,
        WireError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "more than 100 header lines",
        httparse::Error::Status => "the status line",
        httparse::Error::Version => "the version",
        httparse::Error::HeaderName => "a header name",
        httparse::Error::HeaderValue => "a header value",
        _ => "the head",
    }
}

/// Whether the connection may carry another request after this answer (RFC 9112 §9.3).
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut keep = version == Version::HTTP_11;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            if token.eq_ignore_ascii_case(b"keep-alive") {
                keep = true;
            }
        }
    }
    keep
}

/// How the answer's body is delimited (RFC 9112 §6.3); a `Content-Length` beside a
/// `Transfer-Encoding` goes, as the coding decides.
fn framing(
    head_only: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<Framing, WireError> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .map(<[u8]>::trim_ascii);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n =
                parse_length(part.trim_ascii()).ok_or(WireError::Parse("the content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Parse("two content-lengths"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// How the request's start went.
enum Sent {
    /// All of it is written.
    All,
    /// Not all of it could be written (the upstream hung up, or stopped reading and answered):
    /// what came back is read, and the connection ends with it.
    Cut,
    /// The answer's head came while the request's body was still going.
    Early(Box<Answer>),
}

#[cfg(test)]
mod tests;
