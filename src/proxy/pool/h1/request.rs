//! The request's side of an exchange: its head on the wire, and its body written frame by frame
//! (it may go on while the answer is read).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header;
use http::{Method, Request};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::{parse_length, Io, WireError, COALESCE};
use crate::proxy::ProxyBody;

/// How the request's body is framed on the wire.
#[derive(Clone, Copy)]
pub(super) enum Encoding {
    Length(u64),
    Chunked,
}

/// The request line and headers, with the framing its body needs.
pub(super) fn encode_head(
    req: &Request<ProxyBody>,
    out: &mut BytesMut,
) -> Result<Encoding, WireError> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.put_slice(req.method().as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let headers = req.headers();
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = req.uri().authority() {
            out.put_slice(b"host: ");
            out.put_slice(authority.as_str().as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    let encoding = if headers.contains_key(header::TRANSFER_ENCODING) {
        Encoding::Chunked
    } else if let Some(value) = headers.get(header::CONTENT_LENGTH) {
        Encoding::Length(parse_length(value.as_bytes()).ok_or(WireError::RequestLength)?)
    } else {
        match req.body().size_hint().exact() {
            Some(0) if !expects_body(req.method()) => Encoding::Length(0),
            Some(n) => {
                out.put_slice(b"content-length: ");
                out.put_slice(n.to_string().as_bytes());
                out.put_slice(b"\r\n");
                Encoding::Length(n)
            }
            None => {
                out.put_slice(b"transfer-encoding: chunked\r\n");
                Encoding::Chunked
            }
        }
    };
    out.put_slice(b"\r\n");
    Ok(encoding)
}

/// About how long the request's head is on the wire (its `Authorization` alone is 1–3 KiB), so
/// that its buffer is allocated once.
pub(super) fn head_size(req: &Request<ProxyBody>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let lines: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    target + lines + 96
}

/// Methods whose empty body is still said (`content-length: 0`), as hyper's client did.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The request on its way out: its head, then its body frame by frame. It may outlive the
/// exchange's start: an upstream can answer before it has read the whole body (git's backend
/// sends its head first; a refusal comes at once), and then the rest goes out while the answer
/// is read ([`Reading`]).
pub struct Upload {
    out: BytesMut,
    /// A body frame large enough to write as it is rather than copy behind `out`.
    large: Bytes,
    body: ProxyBody,
    encoding: Encoding,
    sent: u64,
    body_done: bool,
}

impl Upload {
    pub(super) fn new(out: BytesMut, body: ProxyBody, encoding: Encoding) -> Self {
        let body_done = body.is_end_stream();
        let mut up = Upload {
            out,
            large: Bytes::new(),
            body,
            encoding,
            sent: 0,
            body_done: false,
        };
        if body_done {
            up.end_body();
        }
        up
    }

    fn end_body(&mut self) {
        self.body_done = true;
        if matches!(self.encoding, Encoding::Chunked) {
            self.out.put_slice(b"0\r\n\r\n");
        }
    }

    /// The body has ended: it must have been as long as it said.
    fn finish_body(&mut self) -> Result<(), WireError> {
        if let Encoding::Length(n) = self.encoding {
            if self.sent != n {
                return Err(WireError::RequestLength);
            }
        }
        self.end_body();
        Ok(())
    }

    /// Takes a data frame, framed for the wire.
    fn take(&mut self, data: Bytes) -> Result<(), WireError> {
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        match self.encoding {
            Encoding::Length(n) => {
                if self.sent > n {
                    return Err(WireError::RequestLength);
                }
                if data.len() > COALESCE {
                    self.large = data;
                } else {
                    self.out.put_slice(&data);
                }
            }
            Encoding::Chunked => {
                self.out
                    .put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.out.put_slice(&data);
                self.out.put_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// Writes what it can; ready when all of the request is written and flushed. Pending when
    /// the socket is full or the client's next bytes are not here (what is written is flushed
    /// first).
    pub(super) fn poll_send(
        &mut self,
        io: &mut Io,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WireError>> {
        loop {
            let pending: &mut dyn Buf = if !self.out.is_empty() {
                &mut self.out
            } else if !self.large.is_empty() {
                &mut self.large
            } else if self.body_done {
                return Pin::new(io).poll_flush(cx).map_err(Into::into);
            } else {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.take(data)?;
                        }
                        if self.body.is_end_stream() {
                            self.finish_body()?;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(WireError::RequestBody(e)))
                    }
                    Poll::Ready(None) => {
                        self.finish_body()?;
                        continue;
                    }
                    Poll::Pending => {
                        ready!(Pin::new(io).poll_flush(cx))?;
                        return Poll::Pending;
                    }
                }
            };
            match ready!(Pin::new(&mut *io).poll_write(cx, pending.chunk())) {
                Ok(0) => return Poll::Ready(Err(WireError::Closed)),
                Ok(n) => pending.advance(n),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}
