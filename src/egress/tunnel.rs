//! The upstream client's connector: a `CONNECT` tunnel through the egress proxy where it applies,
//! a direct connection elsewhere, and the words for a tunnel that could not be opened.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::EgressProxy;

/// Why a tunnel through the egress proxy could not be opened. Its message is complete (the proxy's
/// `host:port`, the destination, the cause); it has no `source`, so the answer to the client reads
/// it whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TunnelFailed(String);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

/// The upstream client's TCP connector: a `CONNECT` tunnel through the egress proxy for the
/// destinations it applies to, a direct connection for the rest. It sits under
/// `hyper_rustls::HttpsConnector`, so TLS runs over the tunnel to the real upstream.
#[derive(Clone)]
pub struct EgressConnector {
    direct: HttpConnector,
    tunnel: Option<(Arc<EgressProxy>, Tunnel<HttpConnector>)>,
    /// Bound on reaching the proxy and getting its answer to `CONNECT`.
    timeout: Duration,
}

impl fmt::Debug for EgressConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressConnector")
            .field("egress", &self.tunnel.as_ref().map(|(p, _)| p))
            .finish()
    }
}

impl EgressConnector {
    /// Connects with `http` (its timeouts and options apply to the proxy too), through `egress`
    /// when it applies; `timeout` bounds the tunnel's set-up (TCP to the proxy and its answer).
    pub fn new(http: HttpConnector, egress: Option<&EgressProxy>, timeout: Duration) -> Self {
        let tunnel = egress.map(|p| (Arc::new(p.clone()), tunnel(p, http.clone())));
        EgressConnector {
            direct: http,
            tunnel,
            timeout,
        }
    }
}

/// hyper-util's `CONNECT` connector to `egress`, with its credentials when it has some.
fn tunnel(egress: &EgressProxy, http: HttpConnector) -> Tunnel<HttpConnector> {
    let tunnel = Tunnel::new(egress.uri.clone(), http);
    match &egress.basic_auth {
        Some(auth) => tunnel.with_auth(egress.auth_header(auth)),
        None => tunnel,
    }
}

impl tower::Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.direct.poll_ready(cx))?;
        if let Some((_, tunnel)) = &mut self.tunnel {
            ready!(tunnel.poll_ready(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some((egress, tunnel)) = self.tunnel.as_mut().filter(|(p, _)| p.intercepts(&dst))
        else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(BoxError::from) });
        };
        let proxy = egress.authority().to_string();
        let target = format!(
            "{}:{}",
            dst.host().unwrap_or_default(),
            dst.port_u16().unwrap_or(443)
        );
        tracing::trace!(%proxy, %target, "opening a tunnel through the egress proxy");
        let connecting = tunnel.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(tunnel_failed(&proxy, &target, &e).into()),
                Err(_) => Err(TunnelFailed(format!(
                    "the egress proxy {proxy} did not open a tunnel to {target} within {}s",
                    timeout.as_secs_f64()
                ))
                .into()),
            }
        })
    }
}

/// The cause of a failure reached through the proxy, in words: hyper-util's tunnel errors
/// ("tunnel error: …") are explained, anything else (refused, DNS, TLS) is passed on.
pub fn explain_tunnel_cause(cause: &str) -> String {
    match cause.strip_prefix("tunnel error: ") {
        Some("proxy authorization required") => "the proxy wants authentication (407): give \
             user:password in the proxy URL, or check them"
            .into(),
        Some("unsuccessful") => "the proxy refused the tunnel".into(),
        Some(other) => format!("opening the tunnel failed: {other}"),
        None => cause.to_string(),
    }
}

/// Explains a failed `CONNECT`. hyper-util does not export its `TunnelError` type, so the kind is
/// read from its `Display` (stable: "tunnel error: <kind>") and the cause from its source chain.
fn tunnel_failed(proxy: &str, target: &str, e: &(dyn std::error::Error + 'static)) -> TunnelFailed {
    let innermost = || crate::error_chain::innermost_source(e);
    let text = e.to_string();
    let kind = text.strip_prefix("tunnel error: ").unwrap_or(&text);
    TunnelFailed(match kind {
        "failed to create underlying connection" => format!(
            "cannot connect to the egress proxy {proxy}: {}",
            innermost().unwrap_or_else(|| kind.to_string())
        ),
        "proxy authorization required" => format!(
            "the egress proxy {proxy} wants authentication (407) for a tunnel to {target}: give \
             user:password in the proxy URL, or check them"
        ),
        "unsuccessful" => format!("the egress proxy {proxy} refused a tunnel to {target}"),
        "io error establishing tunnel" => format!(
            "the egress proxy {proxy} failed while opening a tunnel to {target}: {}",
            innermost().unwrap_or_else(|| kind.to_string())
        ),
        other => format!("the egress proxy {proxy}, tunnel to {target}: {other}"),
    })
}
