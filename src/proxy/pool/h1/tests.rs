use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use bytes::Bytes;
use http_body::Frame;

use super::reading::{step, Chunk, Step};
use super::*;
use crate::proxy::pool::Lists;

fn decode(chunks: &[&[u8]]) -> Result<Vec<u8>, WireError> {
    let mut chunk = Chunk::Size;
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    for part in chunks {
        buf.extend_from_slice(part);
        loop {
            match step(&mut chunk, &mut buf, 1024)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Done => {
                    assert!(buf.is_empty(), "nothing after the body");
                    return Ok(body);
                }
                Step::More(_) => break,
            }
        }
    }
    Err(WireError::Closed)
}

#[test]
fn a_chunked_body_decodes_however_it_is_split() {
    let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
    assert_eq!(decode(&[wire]).expect("whole"), b"hello 0123456789");
    let bytes: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(decode(&bytes).expect("byte by byte"), b"hello 0123456789");
    let bytes: Vec<&[u8]> = wire.chunks(7).collect();
    assert_eq!(decode(&bytes).expect("by sevens"), b"hello 0123456789");
}

#[test]
fn a_broken_chunked_body_is_an_error_not_an_end() {
    for wire in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"\r\n",
        b"1234567890abcdef0\r\n",
    ] {
        assert!(
            matches!(decode(&[wire]), Err(WireError::Parse(_))),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
    assert!(matches!(decode(&[b"5\r\nhel"]), Err(WireError::Closed)));
    let long_trailers = format!("0\r\nx: {}\r\n\r\n", "v".repeat(2000));
    let parts: Vec<&[u8]> = long_trailers.as_bytes().chunks(100).collect();
    assert!(matches!(decode(&parts), Err(WireError::HeadTooLarge(_))));
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    map
}

#[test]
fn framing_follows_rfc_9112_section_6_3() {
    let ok = StatusCode::OK;
    type Case<'a> = (bool, StatusCode, &'a [(&'a str, &'a str)], Framing);
    let cases: &[Case] = &[
        (true, ok, &[("content-length", "10")], Framing::Length(0)),
        (false, StatusCode::NO_CONTENT, &[], Framing::Length(0)),
        (
            false,
            StatusCode::NOT_MODIFIED,
            &[("content-length", "9")],
            Framing::Length(0),
        ),
        (false, ok, &[("content-length", "10")], Framing::Length(10)),
        (
            false,
            ok,
            &[("content-length", "7, 7"), ("content-length", "7")],
            Framing::Length(7),
        ),
        (
            false,
            ok,
            &[("transfer-encoding", "gzip, chunked")],
            Framing::Chunked,
        ),
        (false, ok, &[("transfer-encoding", "gzip")], Framing::Close),
        (false, ok, &[], Framing::Close),
    ];
    for (head_only, status, pairs, want) in cases {
        let mut map = headers(pairs);
        assert_eq!(
            framing(*head_only, *status, &mut map).expect("framing"),
            *want,
            "{pairs:?}"
        );
    }
    let mut both = headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
    assert_eq!(
        framing(false, ok, &mut both).expect("framing"),
        Framing::Chunked
    );
    assert!(
        !both.contains_key(header::CONTENT_LENGTH),
        "the coding decides"
    );
    for bad in ["1, 2", "-1", "x", "", "99999999999999999999"] {
        let mut map = headers(&[("content-length", bad)]);
        assert!(framing(false, ok, &mut map).is_err(), "{bad:?}");
    }
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    assert!(keep_alive(Version::HTTP_11, &headers(&[])));
    assert!(!keep_alive(
        Version::HTTP_11,
        &headers(&[("connection", "foo, Close")])
    ));
    assert!(!keep_alive(Version::HTTP_10, &headers(&[])));
    assert!(keep_alive(
        Version::HTTP_10,
        &headers(&[("connection", "keep-alive")])
    ));
}

fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

fn head_of(req: &Request<ProxyBody>) -> String {
    let mut out = BytesMut::new();
    encode_head(req, &mut out).expect("head");
    String::from_utf8(out.to_vec()).expect("utf-8")
}

#[test]
fn the_request_head_says_how_its_body_is_framed() {
    let get = Request::get("http://up.example/a?b=1")
        .body(boxed(Empty::<Bytes>::new()))
        .expect("request");
    assert_eq!(
        head_of(&get),
        "GET /a?b=1 HTTP/1.1\r\nhost: up.example\r\n\r\n"
    );
    let post = Request::post("/p")
        .header("host", "h")
        .body(boxed(Empty::<Bytes>::new()))
        .expect("request");
    assert_eq!(
        head_of(&post),
        "POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
    );
    let full = Request::put("/p")
        .header("host", "h")
        .body(boxed(Full::new(Bytes::from_static(b"abc"))))
        .expect("request");
    assert!(head_of(&full).ends_with("content-length: 3\r\n\r\n"));
    let frames =
        futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))]);
    let streamed = Request::post("/p")
        .header("host", "h")
        .body(boxed(StreamBody::new(frames)))
        .expect("request");
    assert!(head_of(&streamed).ends_with("transfer-encoding: chunked\r\n\r\n"));
}

/// A hand-written upstream: answers its first connection's first request with `answer` (in
/// pieces of `piece` bytes) without reading a request body, then ends its side of the
/// connection (without saying so) and records what else it reads.
async fn upstream(answer: Vec<u8>, piece: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .expect("read");
        record.lock().expect("lock").extend_from_slice(&buf[..n]);
        for part in answer.chunks(piece) {
            if s.write_all(part).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = s.shutdown().await;
        // Keep reading (and recording) until the client closes.
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
            if n == 0 {
                break;
            }
            record.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    (addr, seen)
}

async fn connect(addr: std::net::SocketAddr) -> Conn {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    Conn::new(TokioIo::new(hyper_rustls::MaybeHttpsStream::Http(
        TokioIo::new(tcp),
    )))
}

fn home() -> (Home, Arc<Lists>) {
    let lists = Arc::new(Lists::default());
    let home = Home::new(
        &lists,
        http::uri::Scheme::HTTP,
        http::uri::Authority::from_static("up"),
    );
    (home, lists)
}

/// Sends a GET to an upstream that answers `answer`; the answer's head and body (or the body's
/// error), and whether the connection went back to its pool.
async fn exchange(answer: &str, piece: usize) -> (Answer, Result<Bytes, BoxError>, bool) {
    let (addr, _) = upstream(answer.as_bytes().to_vec(), piece).await;
    let mut conn = connect(addr).await;
    let mut req = Request::get("/x")
        .header("host", "up")
        .body(boxed(Empty::<Bytes>::new()))
        .expect("request");
    let answer = conn.send(&mut req, 1024).await.expect("head");
    assert!(answer.upload.is_none());
    let (home, lists) = home();
    let body = Reading::new(conn, answer.framing, None, 1024, home);
    let bytes = body.collect().await.map(|c| c.to_bytes());
    let back = lists
        .hosts
        .lock()
        .expect("lock")
        .iter()
        .map(|h| h.conns.len())
        .sum::<usize>();
    assert_eq!(
        lists.busy.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "not busy after"
    );
    (answer, bytes, back == 1)
}

#[tokio::test]
async fn answers_are_read_whole_and_the_connection_goes_back_only_when_it_may() {
    for piece in [1, 3, 4096] {
        let (a, body, back) = exchange(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            piece,
        )
        .await;
        assert_eq!(a.parts.status, 200);
        assert_eq!(a.parts.headers["x-a"], "b");
        assert_eq!(body.expect("body"), "hello");
        assert!(
            back,
            "a whole Content-Length answer lets the connection go back"
        );

        let (_, body, back) = exchange(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            piece,
        )
        .await;
        assert_eq!(body.expect("body"), "abcde");
        assert!(back);

        let (_, body, back) = exchange(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            piece,
        )
        .await;
        assert_eq!(body.expect("body"), "ok");
        assert!(!back, "the upstream said close");
    }
}

#[tokio::test]
async fn an_answer_cut_short_is_an_error_never_a_clean_end() {
    for answer in [
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ] {
        let (_, body, back) = exchange(answer, 4096).await;
        assert!(body.is_err(), "{answer:?}");
        assert!(!back);
    }
    // No framing at all: the body is what arrives until the upstream closes.
    let (a, body, back) = exchange("HTTP/1.0 200 OK\r\n\r\nuntil the end", 4).await;
    assert_eq!(a.framing, Framing::Close);
    assert_eq!(body.expect("body"), "until the end");
    assert!(!back);
}

#[tokio::test]
async fn a_head_over_the_bound_or_not_http_fails_the_exchange() {
    let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "v".repeat(2000));
    for (answer, large) in [(big.as_str(), true), ("SSH-2.0-OpenSSH\r\n\r\n", false)] {
        let (addr, _) = upstream(answer.as_bytes().to_vec(), 4096).await;
        let mut conn = connect(addr).await;
        let mut req = Request::get("/x")
            .header("host", "up")
            .body(boxed(Empty::<Bytes>::new()))
            .expect("request");
        let failed = conn.send(&mut req, 1024).await.err().expect("fails");
        assert_eq!(
            matches!(failed.error, WireError::HeadTooLarge(1024)),
            large,
            "{failed:?}"
        );
        assert!(!failed.retry, "something came back");
    }
}

/// A body of frames sent through a channel, as a client's upload arrives.
fn channel_body() -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    ProxyBody,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, boxed(StreamBody::new(stream)))
}

/// An upstream that refuses an upload at once, without reading it: the refusal comes back while
/// the body is still going, the rest is not sent, and the connection is not reused.
#[tokio::test]
async fn an_early_refusal_ends_the_upload() {
    let refusal = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n".to_vec();
    let (addr, seen) = upstream(refusal, 4096).await;
    let mut conn = connect(addr).await;
    // A body that never ends: only an early answer can finish the exchange.
    let (_tx, endless) = channel_body();
    let mut req = Request::put("/upload")
        .header("host", "up")
        .header("content-length", "1000000")
        .body(endless)
        .expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(5), conn.send(&mut req, 1024))
        .await
        .expect("answered while the body waits")
        .expect("answer");
    assert_eq!(answer.parts.status, 413);
    assert!(answer.upload.is_some(), "the body is not all out");
    let (home, lists) = home();
    let body = Reading::new(conn, answer.framing, answer.upload, 1024, home);
    assert!(body.collect().await.expect("body").to_bytes().is_empty());
    assert!(lists.hosts.lock().expect("lock").is_empty(), "not reused");
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.starts_with(b"PUT /upload HTTP/1.1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// An upstream that sends its answer's head first and its body after the whole upload (as
/// git's backend does): the upload goes on while the answer is read, and then the connection is
/// reused.
#[tokio::test]
async fn an_early_head_lets_the_upload_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !got.ends_with(b"0\r\n\r\n") {
            if got.windows(4).any(|w| w == b"\r\n\r\n") && !got.contains(&b'!') {
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await
                    .expect("head");
                got.push(b'!');
            }
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .expect("read");
            assert!(n > 0, "the upload ended early");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"2\r\nok\r\n0\r\n\r\n").await.expect("body");
        String::from_utf8_lossy(&got).into_owned()
    });
    let mut conn = connect(addr).await;
    let (tx, body) = channel_body();
    let mut req = Request::post("/git-receive-pack")
        .header("host", "up")
        .body(body)
        .expect("request");
    let answer = conn.send(&mut req, 1024).await.expect("answer");
    assert!(answer.upload.is_some(), "the head came before the body");
    let (home, lists) = home();
    let reading = Reading::new(conn, answer.framing, answer.upload, 1024, home);
    let feed = tokio::spawn(async move {
        for part in ["pack-", "data"] {
            tx.send(Ok(Frame::data(Bytes::from(part))))
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert_eq!(reading.collect().await.expect("body").to_bytes(), "ok");
    feed.await.expect("feed");
    let got = upstream.await.expect("upstream");
    assert!(
        got.ends_with("5\r\npack-\r\n4\r\ndata\r\n0\r\n\r\n"),
        "{got:?}"
    );
    let back: usize = lists
        .hosts
        .lock()
        .expect("lock")
        .iter()
        .map(|h| h.conns.len())
        .sum();
    assert_eq!(back, 1, "all of both went: the connection is reused");
}
