//! Starts patless in process, the way `main` does, on listeners bound to `127.0.0.1:0`.

use std::net::SocketAddr;

use patless::config::{load_from_str, ConfigSource, Format};
use patless::env::MapEnv;
use patless::server::Listener;
use patless::{App, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::entra::{FakeEntra, CLIENT_ID, CLIENT_SECRET, TENANT};

/// The Azure DevOps scope.
pub const ADO: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// The Defender XDR scope.
pub const DEFENDER: &str = "https://api.security.microsoft.com/.default";

/// A running patless.
pub struct Patless {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Patless {
    /// Starts patless with `toml` and an empty environment.
    pub async fn start(toml: &str) -> Patless {
        Self::start_with_env(toml, MapEnv::default()).await
    }

    /// Starts patless with `toml` and the environment `env`.
    pub async fn start_with_env(toml: &str, env: MapEnv) -> Patless {
        let loaded = load_from_str(toml, Format::Toml, ConfigSource::Embedded, &env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let app = App::new(
            loaded.config,
            std::sync::Arc::new(env),
            prometheus::Registry::new(),
        )
        .expect("app builds");
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = proxy.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let listeners = Listeners {
            proxy: Listener::Tcp(proxy),
            admin: Some(Listener::Tcp(admin)),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(patless::run(listeners, app, async move {
            let _ = rx.await;
        }));
        Patless {
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT{path}` on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://127.0.0.1:PORT{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        super::http_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Signals shutdown (SIGTERM's path) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for `run` to return (after draining).
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(t) = self.task.take() {
            t.await.expect("run task");
        }
    }
}

impl Drop for Patless {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A config with one `client_secret` profile `bot` (the fake Entra's app) and the given routes
/// `(prefix, upstream, scope)`; `extra` is appended (more `[server]` keys go in `server_extra`).
pub fn config(
    entra: &FakeEntra,
    routes: &[(&str, &str, &str)],
    server_extra: &str,
    extra: &str,
) -> String {
    let mut s = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
host_routes = false
shutdown_grace = "5s"
{server_extra}

[entra]
authority_host = "{authority}"

[profiles.bot]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
"#,
        authority = entra.authority()
    );
    for (prefix, upstream, scope) in routes {
        s.push_str(&format!(
            "\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprofile = \"bot\"\nscope = \"{scope}\"\n"
        ));
    }
    s.push_str(extra);
    s
}
