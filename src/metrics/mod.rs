//! Every metric (docs/metrics.md), in one place, registered on an injected [`Registry`]. Labels are
//! bounded: configured route and profile names, scopes, status codes and fixed error classes —
//! never a raw path, a token or a secret.
//!
//! The two per-request families are sharded per worker thread ([`requests`]): each worker writes
//! its own atomics and the registered collector sums them at scrape time.

mod requests;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `patless_token_refreshes_total{profile,result}`
    pub token_refreshes: IntCounterVec,
    /// `patless_token_refresh_duration_seconds{profile}`
    pub token_refresh_duration: HistogramVec,
    /// `patless_token_expiry_timestamp_seconds{profile,scope}`
    pub token_expiry: GaugeVec,
    /// `patless_requests_total{route,status}`: this worker's shard.
    requests: IntCounterVec,
    /// `patless_request_duration_seconds{route}`: this worker's shard.
    request_duration: HistogramVec,
    /// Every worker's shard of the two families above, registered as one collector.
    request_families: requests::RequestFamilies,
    /// `patless_upstream_errors_total{route,kind}`
    pub upstream_errors: IntCounterVec,
    /// `patless_upstream_auth_retries_total{route}`
    pub upstream_auth_retries: IntCounterVec,
    /// `patless_inbound_rejections_total{reason}`
    pub inbound_rejections: IntCounterVec,
    /// `patless_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `patless_identity_requests_total{protocol, result}`
    pub identity_requests: IntCounterVec,
    /// `patless_build_info{version}`
    pub build_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// One metric family as it is exposed: name, help text, label names.
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

impl Family {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family { name, help, labels }
    }

    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }
}

const TOKEN_REFRESHES: Family = Family::new(
    "patless_token_refreshes_total",
    "Token acquisitions by profile and result (success or an error class).",
    &["profile", "result"],
);
const TOKEN_REFRESH_DURATION: Family = Family::new(
    "patless_token_refresh_duration_seconds",
    "Time taken by one token acquisition.",
    &["profile"],
);
const TOKEN_EXPIRY: Family = Family::new(
    "patless_token_expiry_timestamp_seconds",
    "Unix time at which the cached token expires.",
    &["profile", "scope"],
);
const REQUESTS: Family = Family::new(
    "patless_requests_total",
    "Proxied requests by route and response status.",
    &["route", "status"],
);
const REQUEST_DURATION: Family = Family::new(
    "patless_request_duration_seconds",
    "Time to the response headers of a proxied request.",
    &["route"],
);
const UPSTREAM_ERRORS: Family = Family::new(
    "patless_upstream_errors_total",
    "Upstream failures by route and kind (connect, timeout, protocol, body).",
    &["route", "kind"],
);
const UPSTREAM_AUTH_RETRIES: Family = Family::new(
    "patless_upstream_auth_retries_total",
    "Requests replayed with a fresh token after an upstream 401.",
    &["route"],
);
const INBOUND_REJECTIONS: Family = Family::new(
    "patless_inbound_rejections_total",
    "Requests refused by the inbound policy, by reason.",
    &["reason"],
);
const CONFIG_RELOADS: Family = Family::new(
    "patless_config_reloads_total",
    "Configuration reloads by result.",
    &["result"],
);
const IDENTITY_REQUESTS: Family = Family::new(
    "patless_identity_requests_total",
    "Identity endpoint requests by protocol (app_service, imds, other) and result (success or the error code).",
    &["protocol", "result"],
);
const BUILD_INFO: Family = Family::new(
    "patless_build_info",
    "Build information; always 1.",
    &["version"],
);

/// Buckets of the duration histograms, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers one metric family on `registry` and returns it.
fn register<M>(registry: &Registry, family: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let family = family.expect("valid metric definition");
    registry
        .register(Box::new(family.clone()))
        .expect("metric registered once");
    family
}

fn counter(registry: &Registry, family: &Family) -> IntCounterVec {
    register(registry, IntCounterVec::new(family.opts(), family.labels))
}

fn histogram(registry: &Registry, family: &Family) -> HistogramVec {
    let opts = HistogramOpts::from(family.opts()).buckets(LATENCY_BUCKETS.to_vec());
    register(registry, HistogramVec::new(opts, family.labels))
}

impl Metrics {
    /// Registers every metric on `registry`; the per-request families write to worker 0's shard
    /// (see [`Metrics::for_worker`]). Panics only if the same registry is used twice,
    /// which is a programming error caught by the first test.
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        let request_families = register(r, Ok(requests::RequestFamilies::new()));
        let shard = request_families.shard(0);
        let metrics = Metrics {
            token_refreshes: counter(r, &TOKEN_REFRESHES),
            token_refresh_duration: histogram(r, &TOKEN_REFRESH_DURATION),
            token_expiry: register(r, GaugeVec::new(TOKEN_EXPIRY.opts(), TOKEN_EXPIRY.labels)),
            requests: shard.requests.clone(),
            request_duration: shard.request_duration.clone(),
            request_families,
            upstream_errors: counter(r, &UPSTREAM_ERRORS),
            upstream_auth_retries: counter(r, &UPSTREAM_AUTH_RETRIES),
            inbound_rejections: counter(r, &INBOUND_REJECTIONS),
            config_reloads: counter(r, &CONFIG_RELOADS),
            identity_requests: counter(r, &IDENTITY_REQUESTS),
            build_info: register(r, IntGaugeVec::new(BUILD_INFO.opts(), BUILD_INFO.labels)),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics
    }

    /// A clone writing the per-request families into worker `worker`'s shard: the same shard on
    /// every call with that index (a reload's new stacks keep counting where the old ones were).
    pub fn for_worker(&self, worker: usize) -> Metrics {
        let shard = self.request_families.shard(worker);
        Metrics {
            requests: shard.requests.clone(),
            request_duration: shard.request_duration.clone(),
            ..self.clone()
        }
    }

    /// `patless_requests_total{route,status}`, in this worker's shard.
    pub fn requests(&self) -> &IntCounterVec {
        &self.requests
    }

    /// `patless_request_duration_seconds{route}`, in this worker's shard.
    pub fn request_duration(&self) -> &HistogramVec {
        &self.request_duration
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The registry (for callers that add their own collectors).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
