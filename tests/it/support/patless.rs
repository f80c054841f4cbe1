//! Starts patless in process, the way `patless serve` does, on listeners bound to `127.0.0.1:0`.
//!
//! Every entry point serves the proxy listener on worker threads of its own, as `serve` does
//! (`RunOptions { worker_threads: true, .. }`, `src/server/workers.rs`), as many as the config's
//! `server.workers`. When a config given as text does not set it, the harness makes it
//! [`HARNESS_WORKERS`] (2: several workers, whatever the machine, and not one thread per core for
//! each of the dozens of patless a test run starts). A config file ([`Patless::start_file`]) is
//! taken as written, its default included (the machine's cores, as `serve` does): reloads read
//! the same file, and a count they did not read would be a `server.workers` change they refuse.
//! Those threads run their own runtimes, on the real clock. A test on tokio's paused clock (`start_paused = true`, `time::pause()`) would
//! not control their time, so it starts patless with [`Patless::start_on_test_clock`], which
//! serves the proxy on the test's own runtime — the one place the single-runtime path is used.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use patless::app::reload::{ReloadHandle, Reloader};
use patless::config::{load_from_str, Config, ConfigError, ConfigSource, Format, LoadedConfig};
use patless::credentials::ArcAgent;
use patless::env::MapEnv;
use patless::server::Listener;
use patless::{App, Listeners, RunOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::entra::{FakeEntra, CLIENT_ID, CLIENT_SECRET, TENANT};

/// The Azure DevOps scope.
pub const ADO: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// The Defender XDR scope.
pub const DEFENDER: &str = "https://api.security.microsoft.com/.default";

/// The proxy's worker threads when the config does not set `server.workers`: more than one, so
/// that connections really are spread over several workers, each with its own upstream pool.
pub const HARNESS_WORKERS: usize = 2;

/// How the proxy listener is served.
#[derive(Clone, Copy)]
enum Serving {
    /// On worker threads, as `serve` does: `Some(n)` threads, or `None`: the config's
    /// `server.workers` ([`HARNESS_WORKERS`] when a config given as text sets none).
    Workers(Option<usize>),
    /// On the test's runtime, whose clock the test may pause.
    TestClock,
}

/// A running patless.
pub struct Patless {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The identity endpoint's address, when the config has `[identity_endpoint]` (bound on
    /// `127.0.0.1:0` like the others, whatever its `listen` says).
    pub identity: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    reload: Option<ReloadHandle>,
}

impl Patless {
    /// Starts patless with `toml` and an empty environment, the proxy on worker threads (see the
    /// module's doc).
    pub async fn start(toml: &str) -> Patless {
        Self::start_with_env(toml, MapEnv::default()).await
    }

    /// Starts patless with `toml` and the environment `env`, the proxy on worker threads. Unless
    /// `toml` sets `server.shutdown_delay`, it is 0 here (not 5 s): stopping a test's patless is
    /// immediate.
    pub async fn start_with_env(toml: &str, env: MapEnv) -> Patless {
        Self::start_inner(toml, env, Serving::Workers(None), ArcAgent::default()).await
    }

    /// [`Patless::start_with_env`], with the Azure Arc agent looked for at `arc` (a temporary
    /// directory) instead of its real paths.
    pub async fn start_with_arc_agent(toml: &str, env: MapEnv, arc: ArcAgent) -> Patless {
        Self::start_inner(toml, env, Serving::Workers(None), arc).await
    }

    /// [`Patless::start`], with the proxy served on exactly `workers` threads, whatever the
    /// config says.
    pub async fn start_with_workers(toml: &str, workers: usize) -> Patless {
        let serving = Serving::Workers(Some(workers));
        Self::start_inner(toml, MapEnv::default(), serving, ArcAgent::default()).await
    }

    /// [`Patless::start`], but the proxy served on the test's own runtime instead of worker
    /// threads: for tests on tokio's paused clock only (`#[tokio::test(start_paused = true)]`,
    /// `tokio::time::pause()`). Worker threads run their own runtimes on the real clock, so the
    /// proxy's timers (`Retry-After` left, request timeouts) would not follow the test's
    /// `advance()`, and the paused runtime would jump its clock while waiting on them. Every
    /// other test uses the production path.
    pub async fn start_on_test_clock(toml: &str) -> Patless {
        Self::start_on_test_clock_with_env(toml, MapEnv::default()).await
    }

    /// [`Patless::start_on_test_clock`] with the environment `env`.
    pub async fn start_on_test_clock_with_env(toml: &str, env: MapEnv) -> Patless {
        Self::start_inner(toml, env, Serving::TestClock, ArcAgent::default()).await
    }

    async fn start_inner(toml: &str, env: MapEnv, serving: Serving, arc: ArcAgent) -> Patless {
        let mut loaded = load(toml, &env);
        if loaded.raw.server.shutdown_delay.is_none() {
            loaded.config.server.shutdown_delay = Duration::ZERO;
        }
        let app = App::with_arc_agent(
            harness_workers(loaded, serving),
            std::sync::Arc::new(env),
            prometheus::Registry::new(),
            arc,
        )
        .expect("app builds");
        Self::launch(app, None, serving).await
    }

    /// Starts patless from the config file `path` (as `--config path` would), read with `env`,
    /// able to reload: through [`Patless::reloader`], and on file changes (polled every
    /// `watch_interval`) when the file sets `watch_config = true`. The proxy is on the file's
    /// `server.workers` threads: the machine's cores when it sets none, as `serve` would.
    pub async fn start_file(path: &Path, env: MapEnv, watch_interval: Duration) -> Patless {
        let loaded = patless::config::load(Some(path), &env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let source = loaded.source.clone();
        let serving = Serving::Workers(None);
        let app = App::new(
            loaded.config,
            std::sync::Arc::new(env),
            prometheus::Registry::new(),
        )
        .expect("app builds");
        let (handle, requests) = patless::app::reload::channel();
        let mut reloader = Reloader::new(Some(path.to_path_buf()), source, requests);
        reloader.watch_interval = watch_interval;
        let mut p = Self::launch(app, Some(reloader), serving).await;
        p.reload = Some(handle);
        p
    }

    /// Binds the listeners on `127.0.0.1:0` (the identity endpoint's only when the config has
    /// one) and spawns `run_with`.
    async fn launch(app: App, reload: Option<Reloader>, serving: Serving) -> Patless {
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = proxy.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let identity = match app.config.identity_endpoint {
            Some(_) => Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind identity endpoint"),
            ),
            None => None,
        };
        let identity_addr = identity.as_ref().map(|l| l.local_addr().expect("addr"));
        let listeners = Listeners {
            proxy: Listener::Tcp(proxy),
            admin: Some(Listener::Tcp(admin)),
            identity: identity.map(Listener::Tcp),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let options = RunOptions {
            shutdown: async move {
                let _ = rx.await;
            },
            stop_now_hint: None,
            reload,
            worker_threads: matches!(serving, Serving::Workers(_)),
        };
        let task = tokio::spawn(patless::run_with(listeners, app, options));
        Patless {
            addr,
            admin: admin_addr,
            identity: identity_addr,
            stop: Some(tx),
            task: Some(task),
            reload: None,
        }
    }

    /// The reload trigger of a patless started with [`Patless::start_file`].
    pub fn reloader(&self) -> &ReloadHandle {
        self.reload
            .as_ref()
            .expect("started with Patless::start_file")
    }

    /// Waits up to `within` for `run` to return on its own (after a shutdown began).
    pub async fn wait_stopped(&mut self, within: Duration) -> bool {
        match self.task.as_mut() {
            Some(t) => match tokio::time::timeout(within, t).await {
                Ok(r) => {
                    r.expect("run task");
                    self.task = None;
                    true
                }
                Err(_) => false,
            },
            None => true,
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

    /// `GET {path}` through the proxy, on a new [`super::http_client`]; panics when no answer
    /// comes (any status is an answer).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        super::http_client()
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through the proxy: {e}"))
    }

    /// `http://127.0.0.1:PORT{path}` on the identity endpoint (the config must have one).
    pub fn identity_url(&self, path: &str) -> String {
        let addr = self.identity.expect("the config has [identity_endpoint]");
        format!("http://{addr}{path}")
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

    /// Waits up to 5 s for `/readyz` to answer 200 (every route holds a token); panics if not.
    pub async fn wait_ready(&self) {
        assert!(
            poll_status(&self.admin_url("/readyz"), 200, Duration::from_secs(5)).await,
            "/readyz never turned 200"
        );
    }

    /// After [`Patless::begin_shutdown`] with requests in flight: waits up to 2 s for the proxy
    /// listener to refuse connections, then asserts that `run` has not returned 200 ms later
    /// (it is draining them).
    pub async fn assert_closed_while_draining(&mut self) {
        let began = std::time::Instant::now();
        while !refused(self.addr) {
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "listener never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !self.wait_stopped(Duration::from_millis(200)).await,
            "run returned before the drain"
        );
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

/// The config of `loaded` (given as text), with `server.workers` as `serving` has it: the number
/// given, else the config's own when it sets one, else [`HARNESS_WORKERS`].
fn harness_workers(loaded: LoadedConfig, serving: Serving) -> Config {
    let mut config = loaded.config;
    match serving {
        Serving::Workers(Some(n)) => config.server.workers = n,
        Serving::Workers(None) if loaded.raw.server.workers.is_none() => {
            config.server.workers = HARNESS_WORKERS;
        }
        Serving::Workers(None) | Serving::TestClock => {}
    }
    config
}

/// A fake Entra, an Azure DevOps upstream and patless routing `/ado` to it with the profile
/// `bot` ([`config`], `server_extra` in `[server]`): where most proxy tests start.
pub async fn start_ado(server_extra: &str) -> (FakeEntra, super::upstream::FakeUpstream, Patless) {
    let entra = FakeEntra::start().await;
    let up = super::upstream::FakeUpstream::start(super::entra::ADO_AUDIENCE).await;
    let p = Patless::start(&config(
        &entra,
        &[("/ado", &up.url(), ADO)],
        server_extra,
        "",
    ))
    .await;
    (entra, up, p)
}

/// Loads `toml` as an embedded config read with an empty environment: the errors, when invalid.
pub fn try_load(toml: &str) -> Result<LoadedConfig, ConfigError> {
    load_from_str(
        toml,
        Format::Toml,
        ConfigSource::Embedded,
        &MapEnv::default(),
    )
}

/// Loads `toml` as an embedded config read with `env`; panics with the errors when it is invalid.
pub fn load(toml: &str, env: &MapEnv) -> LoadedConfig {
    load_from_str(toml, Format::Toml, ConfigSource::Embedded, env)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// The validated config of `toml`, read with an empty environment (see [`load`]).
pub fn load_config(toml: &str) -> Config {
    load(toml, &MapEnv::default()).config
}

/// `[server]` for a patless under test: proxy and admin on `127.0.0.1:0`, no host routes, then
/// the `extra` keys (one a line).
pub fn server_toml(extra: &str) -> String {
    format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nhost_routes = false\n{extra}\n"
    )
}

/// A `[[routes]]` table: `prefix` → `upstream` with `profile`'s token for `scope`.
pub fn route_toml(prefix: &str, upstream: &str, profile: &str, scope: &str) -> String {
    format!(
        "\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprofile = \"{profile}\"\nscope = \"{scope}\"\n"
    )
}

/// A config with one `client_secret` profile `bot` (the fake Entra's app) and the given routes
/// `(prefix, upstream, scope)`; `extra` is appended (more `[server]` keys go in `server_extra`).
pub fn config(
    entra: &FakeEntra,
    routes: &[(&str, &str, &str)],
    server_extra: &str,
    extra: &str,
) -> String {
    let server = format!("shutdown_grace = \"5s\"\nshutdown_delay = \"0s\"\n{server_extra}");
    let mut s = bot_config(&entra.authority(), routes, &server, "");
    s.push_str(extra);
    s
}

/// The profile `bot` (the fake Entra's app and secret) with Entra at `authority` (`entra_extra`
/// inside `[entra]`), and its routes `(prefix, upstream, scope)`; `server_extra` in `[server]`.
pub fn bot_config(
    authority: &str,
    routes: &[(&str, &str, &str)],
    server_extra: &str,
    entra_extra: &str,
) -> String {
    let mut s = format!(
        r#"{server}
[entra]
authority_host = "{authority}"
{entra_extra}

[profiles.bot]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
"#,
        server = server_toml(server_extra)
    );
    for (prefix, upstream, scope) in routes {
        s.push_str(&route_toml(prefix, upstream, "bot", scope));
    }
    s
}

/// A config with the one profile `profile` (its keys, `kind` first, in `body`) behind the route
/// `/ado` → `upstream` with the Azure DevOps scope, Entra at `authority` when given, and
/// `server_extra` in `[server]`.
pub fn profile_config(
    authority: Option<&str>,
    upstream: &str,
    profile: &str,
    body: &str,
    server_extra: &str,
) -> String {
    let entra = authority
        .map(|a| format!("\n[entra]\nauthority_host = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "{}{entra}\n[profiles.{profile}]\n{body}\n{}",
        server_toml(server_extra),
        route_toml("/ado", upstream, profile, ADO)
    )
}

/// A port that was free a moment ago (bind `127.0.0.1:0`, read the port, let it go): for a
/// config that names a listen address nothing binds.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The real patless binary serving, in a scrubbed environment, its log in a file; killed (by
/// its own handle) if the test ends before it exits. Its config listens on `127.0.0.1:0`, and
/// the addresses it bound are read from its log: no port is chosen before it binds, so none can
/// be taken by another test in between.
pub struct PatlessProcess {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

impl PatlessProcess {
    /// `patless serve --config CONFIG` in `dir` (HOME, XDG dirs and the log live there too),
    /// once it has bound its listeners.
    pub async fn spawn(dir: &Path, config: &Path) -> PatlessProcess {
        let config = config.to_str().expect("UTF-8 path");
        Self::spawn_args(dir, &["serve", "--config", config]).await
    }

    /// `patless ARGS` (which name a config listening on `127.0.0.1:0`, with an admin listener),
    /// logging at `info`; waits up to 5 s for the log to say where it listens.
    pub async fn spawn_args(dir: &Path, args: &[&str]) -> PatlessProcess {
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).expect("log file");
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("home");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_patless"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", dir.join("xdg"))
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("PATLESS_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn patless");
        let mut p = PatlessProcess {
            child: Some(child),
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let started = std::time::Instant::now();
        loop {
            let log = p.log();
            let bound = |what: &str| {
                log.lines()
                    .find(|l| l.contains(what))
                    .and_then(|l| l.split("listen=").nth(1))
                    .and_then(|a| a.split_whitespace().next()?.parse().ok())
            };
            if let (Some(addr), Some(admin)) = (bound("proxy listening"), bound("admin listening"))
            {
                p.addr = addr;
                p.admin = admin;
                return p;
            }
            assert!(
                p.running() && started.elapsed() < Duration::from_secs(5),
                "patless never said where it listens; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to 5 s for `/readyz` to answer 200; panics with the log if it does not.
    pub async fn wait_ready(&self) {
        assert!(
            poll_status(&self.admin_url("/readyz"), 200, Duration::from_secs(5)).await,
            "never ready; log:\n{}",
            self.log()
        );
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`"HUP"`, `"TERM"`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Waits up to `within` for it to exit; its exit code, `None` if it did not exit in time.
    pub async fn wait(&mut self, within: Duration) -> Option<Option<i32>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait().expect("try_wait") {
                    self.child = None;
                    return Some(status.code());
                }
            } else {
                return None;
            }
            if started.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
}

impl Drop for PatlessProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `addr` refuses a connection (or does not accept one within 200 ms).
pub fn refused(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
}

/// Polls `url` (a fresh connection each time) until it answers `want`, for up to `within`.
pub async fn poll_status(url: &str, want: u16, within: Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        let client = super::http_client();
        if let Ok(resp) = client.get(url).send().await {
            if resp.status().as_u16() == want {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The value of the metric line that starts with `series` (`name{labels}`), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An upstream that holds every request until [`Gate::open`] lets it through, then answers
/// `200 {"from": NAME}`: a request in flight, for as long as a test needs one.
pub struct Gate {
    addr: SocketAddr,
    name: &'static str,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    _server: super::AbortOnDrop,
}

impl Gate {
    /// Starts it on `127.0.0.1:0`.
    pub async fn start(name: &'static str) -> Gate {
        use std::sync::atomic::Ordering;
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("addr");
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let (a, p) = (arrived.clone(), permits.clone());
        let server = super::serve(listener, move |_req| {
            let (a, p) = (a.clone(), p.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                if let Ok(permit) = p.acquire().await {
                    permit.forget();
                }
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(super::full(format!(r#"{{"from":"{name}"}}"#)))
                    .expect("response")
            }
        });
        Gate {
            addr,
            name,
            arrived,
            permits,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached it.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits up to 5 s for `n` requests to have arrived.
    pub async fn wait_arrived(&self, n: usize) {
        for _ in 0..500 {
            if self.arrived() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} requests never reached the gate {}", n, self.name);
    }

    /// Lets `n` held (or future) requests through.
    pub fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }
}
