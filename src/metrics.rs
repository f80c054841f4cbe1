//! Every metric (docs/metrics.md), in one place, registered on an injected [`Registry`]. Labels are
//! bounded: configured route and profile names, scopes, status codes and fixed error classes —
//! never a raw path, a token or a secret.

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
    /// `patless_requests_total{route,status}`
    pub requests: IntCounterVec,
    /// `patless_request_duration_seconds{route}`
    pub request_duration: HistogramVec,
    /// `patless_upstream_errors_total{route,kind}`
    pub upstream_errors: IntCounterVec,
    /// `patless_upstream_auth_retries_total{route}`
    pub upstream_auth_retries: IntCounterVec,
    /// `patless_inbound_rejections_total{reason}`
    pub inbound_rejections: IntCounterVec,
    /// `patless_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `patless_identity_requests_total{result}`
    pub identity_requests: IntCounterVec,
    /// `patless_build_info{version}`
    pub build_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// Registers every metric on `registry`. Panics only if the same registry is used twice,
    /// which is a programming error caught by the first test.
    pub fn new(registry: Registry) -> Self {
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let token_expiry = GaugeVec::new(
            Opts::new(
                "patless_token_expiry_timestamp_seconds",
                "Unix time at which the cached token expires.",
            ),
            &["profile", "scope"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(token_expiry.clone()))
            .expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("patless_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            token_refreshes: counter(
                &registry,
                "patless_token_refreshes_total",
                "Token acquisitions by profile and result (success or an error class).",
                &["profile", "result"],
            ),
            token_refresh_duration: histogram(
                &registry,
                "patless_token_refresh_duration_seconds",
                "Time taken by one token acquisition.",
                &["profile"],
                latency.clone(),
            ),
            token_expiry,
            requests: counter(
                &registry,
                "patless_requests_total",
                "Proxied requests by route and response status.",
                &["route", "status"],
            ),
            request_duration: histogram(
                &registry,
                "patless_request_duration_seconds",
                "Time to the response headers of a proxied request.",
                &["route"],
                latency,
            ),
            upstream_errors: counter(
                &registry,
                "patless_upstream_errors_total",
                "Upstream failures by route and kind (connect, timeout, protocol, body).",
                &["route", "kind"],
            ),
            upstream_auth_retries: counter(
                &registry,
                "patless_upstream_auth_retries_total",
                "Requests replayed with a fresh token after an upstream 401.",
                &["route"],
            ),
            inbound_rejections: counter(
                &registry,
                "patless_inbound_rejections_total",
                "Requests refused by the inbound policy, by reason.",
                &["reason"],
            ),
            config_reloads: counter(
                &registry,
                "patless_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            identity_requests: counter(
                &registry,
                "patless_identity_requests_total",
                "Identity endpoint requests by result (success or the error code).",
                &["result"],
            ),
            build_info,
            registry,
        }
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
