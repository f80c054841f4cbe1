//! The answer's side of an exchange: its body read from the connection (plain, by length, or
//! chunked), and the connection given back when the body has been read to its end.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::{read_size, Conn, Framing, Home, Upload, WireError, HEAD_CHUNK, MAX_CHUNK_LINE};
use crate::proxy::BoxError;

/// Where in a chunked body the reader is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

/// How much of the answer's body is left.
#[derive(Debug, Clone, Copy)]
enum Left {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// Reads one answer's body from its connection, and gives the connection back to its pool
/// ([`Home`]) when the body has been read to its end (dropped unread, the connection closes).
pub struct Reading {
    conn: Option<Conn>,
    left: Left,
    /// The rest of the request, still going out.
    upload: Option<Box<Upload>>,
    /// Body bytes handed on so far.
    read: u64,
    home: Option<Home>,
    max_trailers: usize,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Reading {
    /// The body after `framing`'s head on `conn`; `max_trailers` bounds a chunked body's
    /// trailer section.
    pub fn new(
        conn: Conn,
        framing: Framing,
        upload: Option<Box<Upload>>,
        max_trailers: usize,
        home: Home,
    ) -> Self {
        let left = match framing {
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunk::Size),
            Framing::Close => Left::Close,
        };
        let mut reading = Reading {
            conn: Some(conn),
            left,
            upload,
            read: 0,
            home: Some(home),
            max_trailers,
        };
        if matches!(left, Left::Length(0)) {
            reading.finish();
        }
        reading
    }

    /// The body is read to its end: the connection goes back (if it can carry another: the
    /// request, too, went out whole).
    fn finish(&mut self) {
        let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if conn.reusable && conn.buf.is_empty() && self.upload.take().is_none() {
            conn.served += 1;
            home.give_back(conn);
        }
    }

    fn ended(&self) -> bool {
        self.conn.is_none()
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, WireError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(upload) = self.upload.as_mut() {
                match upload.poll_send(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => self.upload = None,
                    // The answer goes on; the connection ends with it.
                    Poll::Ready(Err(_)) => {
                        self.upload = None;
                        conn.reusable = false;
                    }
                    Poll::Pending => {}
                }
            }
            match &mut self.left {
                Left::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Left::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        let data = conn.buf.split_to(n).freeze();
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    let want = *left;
                    if ready!(conn.poll_fill_up_to(cx, want, read_size(self.read)))? == 0 {
                        return Poll::Ready(Some(Err(WireError::Closed)));
                    }
                }
                Left::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(data)));
                    }
                    let most = read_size(self.read);
                    if ready!(conn.poll_fill_up_to(cx, most as u64, most))? == 0 {
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                }
                Left::Chunked(chunk) => match step(chunk, &mut conn.buf, self.max_trailers)? {
                    Step::Data(data) => {
                        return Poll::Ready(Some(Ok(data)));
                    }
                    Step::Done => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Step::More(want) => {
                        let most = read_size(self.read);
                        if ready!(conn.poll_fill_up_to(cx, want, most))? == 0 {
                            return Poll::Ready(Some(Err(WireError::Closed)));
                        }
                    }
                },
            }
        }
    }
}

/// What a chunked body's next step found in the buffer.
pub(super) enum Step {
    Data(Bytes),
    /// The last chunk and the trailers are read.
    Done,
    /// More bytes are needed (about this many).
    More(u64),
}

/// Moves through a chunked body as far as the buffer allows (RFC 9112 §7.1).
pub(super) fn step(
    chunk: &mut Chunk,
    buf: &mut BytesMut,
    max_trailers: usize,
) -> Result<Step, WireError> {
    loop {
        match *chunk {
            Chunk::Size => {
                let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(WireError::Parse("a chunk-size line"));
                    }
                    return Ok(Step::More(HEAD_CHUNK as u64));
                };
                let line = &buf[..end];
                let digits = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .map_or(line, |i| &line[..i]);
                if digits.is_empty() || digits.len() > 15 {
                    return Err(WireError::Parse("a chunk size"));
                }
                let size = digits.iter().try_fold(0u64, |n, &d| {
                    let d = (d as char).to_digit(16)?;
                    Some(n << 4 | u64::from(d))
                });
                let size = size.ok_or(WireError::Parse("a chunk size"))?;
                buf.advance(end + 2);
                *chunk = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More(left));
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let data = buf.split_to(n).freeze();
                *chunk = if left == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Step::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More(2));
                }
                if &buf[..2] != b"\r\n" {
                    return Err(WireError::Parse("a chunk's end"));
                }
                buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers(seen) => {
                let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
                    if seen + buf.len() > max_trailers {
                        return Err(WireError::HeadTooLarge(max_trailers));
                    }
                    return Ok(Step::More(HEAD_CHUNK as u64));
                };
                buf.advance(end + 2);
                if end == 0 {
                    return Ok(Step::Done);
                }
                // A trailer field: not forwarded (the client's side has no trailers to carry).
                *chunk = Chunk::Trailers(seen + end + 2);
            }
        }
    }
}

impl Body for Reading {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(this.poll_next(cx)) {
            Some(Ok(data)) => {
                this.read += data.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                // Broken off: the connection cannot carry another answer.
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            _ if self.ended() => SizeHint::with_exact(0),
            Left::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
