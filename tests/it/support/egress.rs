//! A fake HTTP `CONNECT` egress proxy and the TLS fronts behind it, for destinations that must
//! be reached by their real HTTPS names (tests/it/egress_proxy.rs, tests/it/host_routes.rs).
//!
//! Loopback never goes through an egress proxy, so a destination that must be tunnelled has a
//! name only [`FakeConnectProxy`] knows: it maps `host:443` to a local [`TlsFront`], which holds a
//! leaf from this file's test CA ([`pki`], valid for [`LEAF_NAMES`]; give patless
//! [`TestPki::ca_pem`] as `[entra] ca_file`) and relays the decrypted bytes to a plain-HTTP fake.
//! So an answer proves the request went through the tunnel and that TLS inside it was verified
//! against the test CA for the right name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{lock, AbortOnDrop};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// The names (and IPs) the trusted leaf is valid for: the egress tests' own names, and the real
/// names of known hosts that host routes (`/{host}/…`) reach through the proxy.
pub const LEAF_NAMES: [&str; 8] = [
    "login.test",
    "upstream.test",
    "localhost",
    "127.0.0.1",
    "0.0.0.0",
    "dev.azure.com",
    "api.security.microsoft.com",
    "graph.microsoft.com",
];

/// A test CA and two leaves for [`LEAF_NAMES`]: one it signed, one it did not.
pub struct TestPki {
    /// The CA patless trusts (`[entra] ca_file`), PEM.
    pub ca_pem: String,
    /// A leaf for [`LEAF_NAMES`] signed by the CA.
    pub trusted: Arc<rustls::ServerConfig>,
    /// A self-signed leaf for the same names: what a man in the middle would present.
    pub untrusted: Arc<rustls::ServerConfig>,
}

fn server_config(cert: &rcgen::Certificate, key: &KeyPair) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server TLS config");
    Arc::new(config)
}

/// The test PKI, made on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = KeyPair::generate_for(alg).expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "patless egress test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let names: Vec<String> = LEAF_NAMES.iter().map(|s| s.to_string()).collect();

        let leaf_key = KeyPair::generate_for(alg).expect("leaf key");
        let leaf = CertificateParams::new(names.clone())
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");

        let rogue_key = KeyPair::generate_for(alg).expect("rogue key");
        let rogue = CertificateParams::new(names)
            .expect("rogue params")
            .self_signed(&rogue_key)
            .expect("rogue cert");
        TestPki {
            ca_pem,
            trusted: server_config(&leaf, &leaf_key),
            untrusted: server_config(&rogue, &rogue_key),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// A TLS front: terminates TLS with a test certificate, relays the plaintext to a plain fake
// ---------------------------------------------------------------------------------------------

/// Terminates TLS with a test leaf on `127.0.0.1:0` and relays the plaintext to a plain fake.
pub struct TlsFront {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SNI of every completed handshake.
    sni: Arc<Mutex<Vec<String>>>,
    _task: AbortOnDrop,
}

impl TlsFront {
    /// Terminates TLS with `tls` on `127.0.0.1:0`, relaying each connection to `backend`.
    pub async fn start(backend: SocketAddr, tls: Arc<rustls::ServerConfig>) -> TlsFront {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("addr");
        let sni = Arc::new(Mutex::new(Vec::new()));
        let seen = sni.clone();
        let acceptor = TlsAcceptor::from(tls);
        let task = super::accept_each(listener, move |tcp| {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let name = tls.get_ref().1.server_name().unwrap_or("").to_string();
                lock(&seen).push(name);
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            }
        });
        TlsFront {
            addr,
            sni,
            _task: task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The SNI of every completed handshake, in order.
    pub fn sni(&self) -> Vec<String> {
        lock(&self.sni).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// A fake HTTP CONNECT proxy
// ---------------------------------------------------------------------------------------------

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    pub method: String,
    /// `host:port` of a CONNECT (the request target as sent).
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl ProxyRequest {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the proxy answers a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 and a tunnel to the mapped address (407 when credentials are required and wrong,
    /// 502 for a target it has no mapping for).
    Tunnel,
    /// This status, no tunnel.
    Refuse(u16),
}

struct ProxyState {
    /// `host:port` as in the CONNECT → where the tunnel really goes.
    routes: HashMap<String, SocketAddr>,
    answer: Mutex<Answer>,
    /// `Proxy-Authorization` value required for a tunnel, when set.
    required_auth: Mutex<Option<String>>,
    requests: Mutex<Vec<ProxyRequest>>,
}

/// An HTTP proxy that only tunnels (`CONNECT host:port`), to the addresses it was given, and
/// records every request.
pub struct FakeConnectProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    _task: AbortOnDrop,
}

impl FakeConnectProxy {
    /// Starts the proxy on `127.0.0.1:0`, tunnelling each `host:port` of `routes` to its address.
    pub async fn start(routes: HashMap<String, SocketAddr>) -> FakeConnectProxy {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ProxyState {
            routes,
            answer: Mutex::new(Answer::Tunnel),
            required_auth: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let task = super::accept_each(listener, move |tcp| proxy_connection(shared.clone(), tcp));
        FakeConnectProxy {
            addr,
            state,
            _task: task,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How CONNECTs are answered from now on.
    pub fn set_answer(&self, answer: Answer) {
        *lock(&self.state.answer) = answer;
    }

    /// A tunnel needs exactly this `Proxy-Authorization` from now on.
    pub fn require_auth(&self, value: &str) {
        *lock(&self.state.required_auth) = Some(value.to_string());
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        lock(&self.state.requests).clone()
    }

    /// The CONNECT targets seen so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.target).collect()
    }

    /// Forgets what was seen (between two patless runs on one proxy).
    pub fn clear(&self) {
        lock(&self.state.requests).clear();
    }
}

/// One client connection: reads the head, answers per [`ProxyState`], then relays both ways.
async fn proxy_connection(state: Arc<ProxyState>, mut client: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return;
        }
        let mut chunk = [0u8; 2048];
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let request = ProxyRequest {
        method,
        target,
        headers,
    };
    lock(&state.requests).push(request.clone());

    let refuse = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let answer = *lock(&state.answer);
    let required = lock(&state.required_auth).clone();
    let backend = state.routes.get(&request.target).copied();
    let reply = if request.method != "CONNECT" {
        Err(refuse("405 Method Not Allowed", ""))
    } else if let Answer::Refuse(code) = answer {
        let reason = match code {
            403 => "Forbidden",
            407 => "Proxy Authentication Required",
            _ => "Refused",
        };
        let extra = if code == 407 {
            "Proxy-Authenticate: Basic realm=\"egress\"\r\n"
        } else {
            ""
        };
        Err(refuse(&format!("{code} {reason}"), extra))
    } else if required.is_some() && request.header("proxy-authorization") != required.as_deref() {
        Err(refuse(
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Basic realm=\"egress\"\r\n",
        ))
    } else {
        match backend {
            Some(addr) => Ok(addr),
            None => Err(refuse("502 Bad Gateway", "")),
        }
    };
    let addr = match reply {
        Ok(addr) => addr,
        Err(text) => {
            let _ = client.write_all(text.as_bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect(addr).await else {
        let _ = client
            .write_all(refuse("502 Bad Gateway", "").as_bytes())
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if head_end < buf.len() && upstream.write_all(&buf[head_end..]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Writes the test CA (PEM) to `dir/ca.pem`, for `[entra] ca_file`; returns the path.
pub fn write_ca(dir: &Path) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki().ca_pem).expect("write CA");
    path
}
