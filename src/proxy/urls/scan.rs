//! The streaming rewrite of absolute URLs in a body: every `http://…` or `https://…` (also JSON's
//! escaped `https:\/\/…`) that the map knows is replaced, every other byte kept, in constant
//! memory whatever the body's size.
//!
//! Only a URL's head decides where it points (scheme, host, the route's base path), so a URL is
//! read up to its first byte that cannot be in one (a quote, `<`, `>`, white space, a backslash
//! that is not JSON's `\/`, anything not ASCII), or [`MAX_URL_HEAD`] bytes, whichever comes
//! first; what follows is copied as it is. Between chunks at most one such head (or the start of
//! a scheme, `htt`) is held back, so a URL split across chunks is still found.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use memchr::memmem;
use pin_project_lite::pin_project;

/// The most of a URL that is read to decide where it points (the rest is copied untouched).
pub const MAX_URL_HEAD: usize = 2048;

/// The schemes that start a URL, as written in text and in JSON with escaped slashes.
const SCHEMES: [&[u8]; 4] = [b"https://", b"http://", b"https:\\/\\/", b"http:\\/\\/"];

/// Maps an absolute URL (`https://host/path…`, slashes unescaped) to its replacement, if any.
pub type UrlMap = Box<dyn FnMut(&str) -> Option<String> + Send>;

/// The state of one body's rewrite: the undecided tail of what was read so far.
pub struct Rewriter {
    map: UrlMap,
    finder: memmem::Finder<'static>,
    held: BytesMut,
    /// URLs replaced so far.
    pub replaced: u64,
}

/// A piece of the output: a range of the input, or a replacement.
enum Piece {
    Keep(usize, usize),
    New(String),
}

/// Where a URL starting at `start` ends, or why that is not known yet.
enum UrlEnd {
    /// At this index (exclusive).
    At(usize),
    /// More input is needed to tell.
    NeedMore,
}

impl Rewriter {
    /// A rewrite with `map`.
    pub fn new(map: UrlMap) -> Self {
        Rewriter {
            map,
            finder: memmem::Finder::new(b"http"),
            held: BytesMut::new(),
            replaced: 0,
        }
    }

    /// The next chunk of the body → what may be sent on now (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.held.is_empty() {
            return self.run(chunk, false);
        }
        self.held.extend_from_slice(&chunk);
        let buf = std::mem::take(&mut self.held).freeze();
        self.run(buf, false)
    }

    /// The end of the body → what was held back, rewritten.
    pub fn finish(&mut self) -> Bytes {
        let buf = std::mem::take(&mut self.held).freeze();
        self.run(buf, true)
    }

    /// Bytes held back, waiting for the rest of a URL.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn run(&mut self, buf: Bytes, eof: bool) -> Bytes {
        let (pieces, decided) = self.scan(&buf, eof);
        self.held.extend_from_slice(&buf[decided..]);
        match pieces.as_slice() {
            [] => Bytes::new(),
            [Piece::Keep(a, b)] => buf.slice(*a..*b),
            _ => {
                let mut out = BytesMut::with_capacity(decided + 64 * pieces.len());
                for p in &pieces {
                    match p {
                        Piece::Keep(a, b) => out.extend_from_slice(&buf[*a..*b]),
                        Piece::New(s) => out.extend_from_slice(s.as_bytes()),
                    }
                }
                out.freeze()
            }
        }
    }

    /// The output for `buf[..decided]`, and `decided`: what follows may be the start of a URL
    /// whose head has not all arrived (always 0 bytes at the end of the body).
    fn scan(&mut self, buf: &[u8], eof: bool) -> (Vec<Piece>, usize) {
        let mut pieces = Vec::new();
        let mut copied = 0;
        let mut from = 0;
        let decided = loop {
            let Some(off) = self.finder.find(&buf[from..]) else {
                break if eof {
                    buf.len()
                } else {
                    buf.len() - partial_tail(&buf[from.max(copied)..], b"http")
                };
            };
            let start = from + off;
            let Some(scheme) = scheme_at(&buf[start..], eof) else {
                from = start + 1;
                continue;
            };
            let Some(scheme) = scheme else {
                break start;
            };
            let end = match url_end(buf, start, start + scheme.len(), eof) {
                UrlEnd::At(end) => end,
                UrlEnd::NeedMore => break start,
            };
            if let Some(new) = self.replacement(&buf[start..end], scheme) {
                if copied < start {
                    pieces.push(Piece::Keep(copied, start));
                }
                pieces.push(Piece::New(new));
                self.replaced += 1;
                copied = end;
            }
            from = end.max(start + 1);
        };
        if copied < decided {
            pieces.push(Piece::Keep(copied, decided));
        }
        (pieces, decided)
    }

    /// The replacement of the URL `raw` (ASCII, starting with `scheme`), escaped as it was.
    fn replacement(&mut self, raw: &[u8], scheme: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(raw).ok()?;
        let escaped = scheme.contains(&b'\\');
        if !escaped {
            return (self.map)(text);
        }
        let new = (self.map)(&text.replace("\\/", "/"))?;
        Some(new.replace('/', "\\/"))
    }
}

/// `Some(Some(scheme))`: a URL's scheme starts `at`; `Some(None)`: it may, once more has arrived;
/// `None`: it does not.
fn scheme_at(at: &[u8], eof: bool) -> Option<Option<&'static [u8]>> {
    let mut maybe = false;
    for s in SCHEMES {
        if at.starts_with(s) {
            return Some(Some(s));
        }
        maybe |= !eof && at.len() < s.len() && s.starts_with(at);
    }
    maybe.then_some(None)
}

/// Whether `b` can be part of a URL as answers write them (ASCII, printable, not a quote or a
/// bracket that closes an attribute or element).
fn url_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`' | b'\\')
}

/// Where the URL that starts at `start`, its scheme ending at `from`, ends: its first byte that cannot be in a URL (a `\`
/// only when not JSON's `\/`), or [`MAX_URL_HEAD`] bytes after its start.
fn url_end(buf: &[u8], start: usize, from: usize, eof: bool) -> UrlEnd {
    let limit = buf.len().min(start + MAX_URL_HEAD);
    let mut i = from;
    while i < limit {
        match buf[i] {
            b'\\' => match buf.get(i + 1) {
                Some(b'/') => i += 2,
                Some(_) => return UrlEnd::At(i),
                None if eof => return UrlEnd::At(i),
                None => return UrlEnd::NeedMore,
            },
            b if url_byte(b) => i += 1,
            _ => return UrlEnd::At(i),
        }
    }
    if i >= start + MAX_URL_HEAD || eof {
        UrlEnd::At(i.min(buf.len()))
    } else {
        UrlEnd::NeedMore
    }
}

/// How many bytes at the end of `buf` are a proper start of `word` (held back for the next
/// chunk).
fn partial_tail(buf: &[u8], word: &[u8]) -> usize {
    (1..word.len())
        .rev()
        .find(|&n| buf.len() >= n && buf.ends_with(&word[..n]))
        .unwrap_or(0)
}

pin_project! {
    /// A body with its absolute URLs rewritten as it streams.
    pub struct RewrittenBody<B> {
        #[pin]
        inner: B,
        rewriter: Rewriter,
        // Trailers met while bytes were held: sent after them.
        trailers: Option<http::HeaderMap>,
        done: bool,
        route: std::sync::Arc<str>,
    }
}

impl<B> RewrittenBody<B> {
    /// `inner`, rewritten with `rewriter` (`route` names it in the log).
    pub fn new(inner: B, rewriter: Rewriter, route: std::sync::Arc<str>) -> Self {
        RewrittenBody {
            inner,
            rewriter,
            trailers: None,
            done: false,
            route,
        }
    }
}

impl<B> Body for RewrittenBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    *this.done = true;
                    let rest = this.rewriter.finish();
                    tracing::debug!(
                        route = %this.route,
                        urls = this.rewriter.replaced,
                        "answer's absolute URLs pointed at the proxy"
                    );
                    if rest.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let out = this.rewriter.push(data);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Err(frame) => {
                    // Trailers end the body: what is held goes first.
                    *this.done = true;
                    *this.trailers = frame.into_trailers().ok();
                    let rest = this.rewriter.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_proxy() -> UrlMap {
        Box::new(|url: &str| {
            let rest = url.strip_prefix("https://pkgs.dev.azure.com")?;
            (rest.is_empty() || rest.starts_with(['/', '?', '#']))
                .then(|| format!("http://127.0.0.1:7070/pkgs.dev.azure.com{rest}"))
        })
    }

    /// `input` cut into chunks at `cuts`, rewritten.
    fn rewrite_in_chunks(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = Rewriter::new(to_proxy());
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(&input[last..c])));
            assert!(r.held() <= MAX_URL_HEAD + 16, "held {}", r.held());
            last = c;
        }
        out.extend_from_slice(&r.finish());
        out
    }

    const IN: &str = r#"{"dist":{"tarball":"https://pkgs.dev.azure.com/org/_packaging/feed/npm/registry/a/-/a-1.0.0.tgz"},"x":"https:\/\/pkgs.dev.azure.com\/org\/y","other":"https://registry.npmjs.org/a","near":"https://pkgs.dev.azure.com.evil.example/","h":"http","end":"https://pkgs.dev.azure.com"}"#;
    const OUT: &str = r#"{"dist":{"tarball":"http://127.0.0.1:7070/pkgs.dev.azure.com/org/_packaging/feed/npm/registry/a/-/a-1.0.0.tgz"},"x":"http:\/\/127.0.0.1:7070\/pkgs.dev.azure.com\/org\/y","other":"https://registry.npmjs.org/a","near":"https://pkgs.dev.azure.com.evil.example/","h":"http","end":"http://127.0.0.1:7070/pkgs.dev.azure.com"}"#;

    #[test]
    fn urls_into_the_upstream_are_rewritten_and_every_other_byte_kept() {
        assert_eq!(
            String::from_utf8(rewrite_in_chunks(IN.as_bytes(), &[])).expect("utf-8"),
            OUT
        );
    }

    #[test]
    fn a_url_split_anywhere_across_chunks_is_still_found() {
        let input = IN.as_bytes();
        for cut in 1..input.len() {
            let got = rewrite_in_chunks(input, &[cut]);
            assert_eq!(String::from_utf8_lossy(&got), OUT, "cut at {cut}");
        }
        // Byte by byte.
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            String::from_utf8_lossy(&rewrite_in_chunks(input, &every)),
            OUT
        );
    }

    #[test]
    fn html_links_with_fragments_and_the_end_of_the_body() {
        let input = r#"<a href="https://pkgs.dev.azure.com/org/_packaging/f/pypi/download/a/1/a-1.whl#sha256=ab">a</a>
<a href='https://pkgs.dev.azure.com/x'>b</a> https://pkgs.dev.azure.com/tail"#;
        let want = r#"<a href="http://127.0.0.1:7070/pkgs.dev.azure.com/org/_packaging/f/pypi/download/a/1/a-1.whl#sha256=ab">a</a>
<a href='http://127.0.0.1:7070/pkgs.dev.azure.com/x'>b</a> http://127.0.0.1:7070/pkgs.dev.azure.com/tail"#;
        let got = rewrite_in_chunks(input.as_bytes(), &[40, 41, 150]);
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    #[test]
    fn a_url_longer_than_the_head_limit_has_its_head_rewritten_and_the_rest_copied() {
        let long = format!(
            "\"https://pkgs.dev.azure.com/{}\"",
            "x".repeat(3 * MAX_URL_HEAD)
        );
        let got = rewrite_in_chunks(long.as_bytes(), &[100, 2000, 5000]);
        let want = format!(
            "\"http://127.0.0.1:7070/pkgs.dev.azure.com/{}\"",
            "x".repeat(3 * MAX_URL_HEAD)
        );
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    #[test]
    fn nothing_to_rewrite_is_passed_on_without_copying() {
        let mut r = Rewriter::new(to_proxy());
        let chunk = Bytes::from_static(b"{\"a\":\"no links here\",\"b\":\"ht");
        let out = r.push(chunk.clone());
        // Everything but the possible start of `http`, as a slice of the same buffer.
        assert_eq!(&out[..], &chunk[..chunk.len() - 2]);
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(r.held(), 2);
        assert_eq!(&r.push(Bytes::from_static(b"ml\"}"))[..], b"html\"}");
        assert!(r.finish().is_empty());
    }

    #[test]
    fn binary_and_odd_bytes_pass_untouched() {
        let input: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        assert_eq!(rewrite_in_chunks(&input, &[7, 1000, 3000]), input);
        let odd = b"http:/ https:// http:\\x https://pkgs.dev.azure.com\\u0026x=1 \xff";
        let got = rewrite_in_chunks(odd, &[3]);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(
                b"http:/ https:// http:\\x http://127.0.0.1:7070/pkgs.dev.azure.com\\u0026x=1 \xff"
            )
        );
    }
}
