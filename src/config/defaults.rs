//! Every default value, in one place: what a key means when the file leaves it out. Validation
//! reads these; `config/default.toml` (the embedded config) writes down only what differs from
//! them, and docs/configuration.md documents them key by key.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// `server.listen`: the proxy listener.
pub const LISTEN: SocketAddr = loopback(7070);
/// `server.admin_listen`: the admin listener (`""` turns it off).
pub const ADMIN_LISTEN: SocketAddr = loopback(7071);
/// `identity_endpoint.listen`.
pub const IDENTITY_ENDPOINT_LISTEN: SocketAddr = loopback(7072);
/// `identity_endpoint.imds`: the IMDS-compatible token path, off unless asked for.
pub const IDENTITY_ENDPOINT_IMDS: bool = false;
/// `server.host_routes`: serve `/{known-host}/…` with the default profile.
pub const HOST_ROUTES: bool = true;
/// `server.default_profile`; this profile exists even when not written down (kind `auto`).
pub const DEFAULT_PROFILE: &str = "auto";
/// `server.unix_socket_mode`: owner and group read and write.
pub const UNIX_SOCKET_MODE: u32 = 0o660;
/// `server.watch_config`.
pub const WATCH_CONFIG: bool = false;

/// `server.max_header_bytes`: request line + headers.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// `server.max_uri_bytes`: the request target (path + query).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// `server.max_connections`.
pub const MAX_CONNECTIONS: usize = 1024;
/// `server.header_read_timeout`: the slowloris bound.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `server.idle_timeout`: a kept-alive connection with no request in flight.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// `server.shutdown_grace`: how long SIGTERM waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `server.shutdown_delay`: how long `/readyz` answers 503 before the listeners close.
pub const SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// `server.connect_timeout`: upstream TCP + TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.response_header_timeout`: the upstream's response headers.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(100);
/// `server.token_wait_timeout`: a request waiting for a token being acquired.
pub const TOKEN_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// `server.upstream_http2`: HTTP/2 toward `https` upstreams that offer it.
pub const UPSTREAM_HTTP2: bool = true;
/// `server.upstream_max_idle`: idle HTTP/1.1 connections kept per upstream and worker, as
/// nginx's `keepalive` (which the bench's nginx runs at 64).
pub const UPSTREAM_MAX_IDLE: usize = 64;
/// `entra.request_timeout`: one token request.
pub const ENTRA_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `profiles.NAME.send_certificate_chain` (`client_certificate`).
pub const SEND_CERTIFICATE_CHAIN: bool = false;
/// The environment variable `profiles.NAME.system_access_token` (`azure_pipelines`) names when
/// not written: the job's access token, as Azure Pipelines exposes it.
pub const SYSTEM_ACCESS_TOKEN_ENV: &str = "SYSTEM_ACCESSTOKEN";

/// `server.workers`: the CPUs patless may use.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use crate::config::{load_from_str, ConfigSource, Format};
    use crate::env::MapEnv;

    /// `config/example.toml`, the reference users copy, states defaults in comments
    /// (`key = … # default X`): each must be what `patless config` shows when the key is left out.
    #[test]
    fn the_example_config_states_these_defaults() {
        let minimal = "[[routes]]\nprefix = \"/ado\"\nupstream = \"https://dev.azure.com\"\n\
                       profile = \"auto\"\n[identity_endpoint]\nheader = \"0123456789abcdef0123\"\n";
        let loaded = load_from_str(
            minimal,
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        )
        .expect("the minimal config loads");
        let effective =
            toml::Value::try_from(loaded.config.effective(&loaded.raw)).expect("serialises");
        let unquoted = |s: &str| s.trim().trim_matches('"').to_string();
        let (mut section, mut checked) = ("", 0);
        for line in include_str!("../../config/example.toml").lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
                continue;
            }
            let Some((setting, stated)) = line.split_once("# default ") else {
                continue;
            };
            let Some((key, _)) = setting.trim_start_matches("# ").split_once('=') else {
                continue;
            };
            let Some(actual) = effective.get(section).and_then(|s| s.get(key.trim())) else {
                continue;
            };
            let stated = stated.split(';').next().unwrap_or_default();
            assert_eq!(
                unquoted(stated),
                unquoted(&actual.to_string()),
                "[{section}] {}",
                key.trim()
            );
            checked += 1;
        }
        assert!(checked >= 12, "only {checked} stated defaults were found");
    }
}
