//! The bench's stand-in for Microsoft Entra (and its upload sink), used by `bench/run`.
//!
//! Binds `127.0.0.1:0` (or the port given as the first argument) and prints the bound port on
//! the first line of stdout. One thread: it must stay out of the way of what is measured.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /{tenant}/oauth2/v2.0/token` | `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"<JWT-shaped, ~1.2 KB>"}`, after the delay; counted |
//! | `GET /count` | the number of token requests so far |
//! | `POST /reset` | sets the count to 0 |
//! | `POST /delay?ms=N` | token answers wait N ms from now on |
//! | `POST /hold`, `POST /release` | token answers wait from `hold` until `release` (cold start: the acquisition stays in flight while the burst arrives) |
//! | `GET /token` | the access token alone (what nginx and haproxy send as their static token); not counted |
//! | `POST /sink` | reads and discards the body; answers `{"bytes":N}` with the number of bytes read |

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

struct State {
    count: AtomicU64,
    delay_ms: AtomicU64,
    /// `true` while token answers are held back.
    held: tokio::sync::watch::Sender<bool>,
    token: String,
}

/// A fixed token shaped like an Entra access token for Azure DevOps: header.payload.signature,
/// base64url, about 1.2 KB (what a real one weighs, so headers cost what they cost in production).
fn jwt() -> String {
    let header = r#"{"typ":"JWT","alg":"RS256","x5t":"bench-x5t-0000000000000000000","kid":"bench-kid-0000000000000000000"}"#;
    let payload = concat!(
        r#"{"aud":"499b84ac-1321-427f-aa17-267ca6975798","#,
        r#""iss":"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/","#,
        r#""iat":1700000000,"nbf":1700000000,"exp":4102444800,"#,
        r#""aio":"k2BgYBench0000000=","#,
        r#""appid":"3f2b9c1e-8d4a-4e6f-9b7c-2a1d5e8f0c34","appidacr":"1","#,
        r#""idp":"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/","#,
        r#""oid":"0b5c7e2a-9d41-4f3e-8a6b-1c2d3e4f5a6b","#,
        r#""sub":"0b5c7e2a-9d41-4f3e-8a6b-1c2d3e4f5a6b","#,
        r#""tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","#,
        r#""uti":"bench00000000000000000","ver":"1.0","#,
        r#""xms_tcdt":1400000000,"roles":["bench.read","bench.write"]}"#
    );
    // An RS256 signature is 256 bytes; any fixed bytes will do.
    let signature: Vec<u8> = (0..256u32).map(|i| (i * 37 + 11) as u8).collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::POST, p) if p.ends_with("/oauth2/v2.0/token") => {
            let _ = req.into_body().collect().await;
            let delay = state.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut held = state.held.subscribe();
            // Bounded: a forgotten hold ends after a minute.
            let _ = tokio::time::timeout(Duration::from_secs(60), held.wait_for(|h| !*h)).await;
            state.count.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": state.token,
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
        (&Method::GET, "/count") => text(
            StatusCode::OK,
            "text/plain",
            state.count.load(Ordering::SeqCst).to_string(),
        ),
        (&Method::POST, "/reset") => {
            state.count.store(0, Ordering::SeqCst);
            text(StatusCode::OK, "text/plain", "0".into())
        }
        (&Method::POST, "/delay") => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok());
            match ms {
                Some(ms) => {
                    state.delay_ms.store(ms, Ordering::Relaxed);
                    text(StatusCode::OK, "text/plain", ms.to_string())
                }
                None => text(StatusCode::BAD_REQUEST, "text/plain", "want ?ms=N".into()),
            }
        }
        (&Method::POST, "/hold") => {
            state.held.send_replace(true);
            text(StatusCode::OK, "text/plain", "held".into())
        }
        (&Method::POST, "/release") => {
            state.held.send_replace(false);
            text(StatusCode::OK, "text/plain", "released".into())
        }
        (&Method::GET, "/token") => text(StatusCode::OK, "text/plain", state.token.clone()),
        (&Method::POST, "/sink") | (&Method::PUT, "/sink") => {
            let mut body = req.into_body();
            let mut bytes: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            bytes += d.len() as u64;
                        }
                    }
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "application/json",
                            serde_json::json!({"bytes": bytes, "error": e.to_string()}).to_string(),
                        )
                    }
                }
            }
            text(
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "bytes": bytes }).to_string(),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("{}", listener.local_addr()?.port());
    // The first line must reach the script now, not when the buffer fills.
    use std::io::Write;
    std::io::stdout().flush()?;
    let state = Arc::new(State {
        count: AtomicU64::new(0),
        delay_ms: AtomicU64::new(0),
        held: tokio::sync::watch::channel(false).0,
        token: jwt(),
    });
    eprintln!(
        "bench-fake-entra: listening; token is {} bytes",
        state.token.len()
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bench-fake-entra: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
