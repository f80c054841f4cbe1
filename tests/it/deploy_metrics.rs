//! deploy/ against the real patless: every metric name that the alerting rules, their unit tests
//! and the Grafana dashboard (deploy/monitoring/) use is one patless exports, with the labels it
//! has; and the Kubernetes examples' patless.toml files are valid configurations.
//!
//! The exported names come from a live scrape, not from a list: patless runs in process against
//! the fake Entra and upstream, is driven through every metric family (a success, a refused
//! secret, an unreachable upstream, a refused token and its replay, a refused Host, a reload that
//! works and one that does not), and `/metrics` is read. The PromQL is parsed by a small lexer
//! that skips strings, label matchers, ranges, grouping label lists, functions and keywords; names
//! ending in `_bucket`, `_sum` or `_count` resolve to their family only when it is a histogram.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format as _, Yaml};
use figment::Figment;
use patless::env::MapEnv;
use serde_json::Value;

use crate::support;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE, CLIENT_ID, TENANT};
use crate::support::patless::{config, Patless, ADO};
use crate::support::upstream::FakeUpstream;

/// Metrics of other exporters that the rules may use, each with where it comes from. Anything
/// else that is not a patless metric is a mistake.
const EXTERNAL: &[(&str, &str)] = &[
    ("kube_pod_container_status_ready", "kube-state-metrics"),
    ("kube_pod_init_container_status_ready", "kube-state-metrics"),
    ("probe_success", "the blackbox exporter"),
];

/// Labels Prometheus attaches to every scraped sample: `job` and `instance`, and with the
/// Prometheus Operator's PodMonitor/ServiceMonitor the target's Kubernetes coordinates.
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "endpoint",
    "service",
];

/// Every family of docs/metrics.md: each one the scrape must show for the check to mean anything.
const DOCUMENTED_FAMILIES: &[&str] = &[
    "patless_token_refreshes_total",
    "patless_token_refresh_duration_seconds",
    "patless_token_expiry_timestamp_seconds",
    "patless_requests_total",
    "patless_request_duration_seconds",
    "patless_upstream_errors_total",
    "patless_upstream_auth_retries_total",
    "patless_inbound_rejections_total",
    "patless_config_reloads_total",
    "patless_build_info",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

// --- the scrape ---------------------------------------------------------------------------------

/// What `/metrics` exports: family name → type, and sample name → the label names it carries.
#[derive(Debug, Default)]
struct Exported {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut e = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    e.families.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = line[..end].to_string();
            let labels = if line[end..].starts_with('{') {
                label_names(&line[end + 1..])
            } else {
                BTreeSet::new()
            };
            e.samples.entry(name).or_default().extend(labels);
        }
        e
    }

    /// The label names of the samples called `name`: `None` if patless exports no such sample.
    /// `x_bucket`, `x_sum` and `x_count` exist only when `x` is a histogram (a counter's
    /// `patless_requests_total_count` does not), and a histogram's own name has no samples.
    fn lookup(&self, name: &str) -> Option<&BTreeSet<String>> {
        let plain = self
            .families
            .get(name)
            .is_some_and(|kind| kind != "histogram" && kind != "summary");
        let histogram_part = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| self.families.get(base).is_some_and(|k| k == "histogram"))
        });
        if !plain && !histogram_part {
            return None;
        }
        self.samples.get(name)
    }
}

/// The label names of `a="x",b="y\"}"}…` (the text after a `{`), up to the closing `}`.
fn label_names(rest: &str) -> BTreeSet<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() && chars[i] != '}' {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            names.insert(chars[start..i].iter().collect());
        } else if c == '"' {
            // a quoted value, with escapes
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

// --- PromQL -------------------------------------------------------------------------------------

/// One vector selector of an expression: a metric name and the label names its matchers use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    name: String,
    labels: BTreeSet<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The vector selectors in a PromQL expression (Grafana variables allowed).
fn selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // From an opening bracket at `j`, the index after its match (strings skipped).
    let matching = |j: usize| -> usize {
        let (open, close) = (s[j], if s[j] == '(' { ')' } else { ']' });
        let mut depth = 0;
        let mut k = j;
        while k < s.len() {
            match s[k] {
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return k + 1;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        k
    };
    let string_end = |j: usize| -> usize {
        let q = s[j];
        let mut k = j + 1;
        while k < s.len() && s[k] != q {
            if s[k] == '\\' && q != '`' {
                k += 1;
            }
            k += 1;
        }
        k + 1
    };
    // From `{` at `j`: the label names of the matchers, and the index after `}`.
    let matchers = |j: usize| -> (BTreeSet<String>, Option<String>, usize) {
        let mut labels = BTreeSet::new();
        let mut metric = None;
        let mut k = j + 1;
        let mut current: Option<String> = None;
        while k < s.len() && s[k] != '}' {
            let c = s[k];
            if c == '"' || c == '\'' || c == '`' {
                let end = string_end(k);
                if current.as_deref() == Some("__name__") {
                    metric = Some(s[k + 1..end - 1].iter().collect());
                }
                current = None;
                k = end;
                continue;
            }
            if c.is_ascii_alphabetic() || c == '_' {
                let start = k;
                while k < s.len() && (s[k].is_ascii_alphanumeric() || s[k] == '_') {
                    k += 1;
                }
                let name: String = s[start..k].iter().collect();
                if name != "__name__" {
                    labels.insert(name.clone());
                }
                current = Some(name);
                continue;
            }
            k += 1;
        }
        (labels, metric, k + 1)
    };
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string_end(i);
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            i = matching(i);
        } else if c == '{' {
            let (labels, metric, end) = matchers(i);
            if let Some(name) = metric {
                out.push(Selector { name, labels });
            }
            i = end;
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if i < s.len() && s[i] == '{' {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration: 0.95, 1e-3, 5m, 1h30m, 0x1f.
            i += 1;
            while i < s.len()
                && (s[i].is_ascii_alphanumeric()
                    || s[i] == '.'
                    || ((s[i] == '-' || s[i] == '+') && matches!(s[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = skip_ws(i);
            let before_paren = s.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&lower.as_str()) {
                if before_paren {
                    i = matching(next);
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || before_paren
            {
                // an operator, an aggregation or a function: its arguments are read next
            } else if s.get(next) == Some(&'{') {
                let (labels, _, end) = matchers(next);
                out.push(Selector { name: word, labels });
                i = end;
            } else {
                out.push(Selector {
                    name: word,
                    labels: BTreeSet::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every string under a key named one of `keys`, anywhere in `v`, with where it was found.
fn strings_under(v: &Value, keys: &[&str], path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let here = format!("{path}.{k}");
                match x {
                    Value::String(text) if keys.contains(&k.as_str()) => {
                        out.push((here, text.clone()));
                    }
                    _ => strings_under(x, keys, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (n, x) in items.iter().enumerate() {
                strings_under(x, keys, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Grafana's `label_values(selector, label)`: the selector alone (the label is no metric).
fn grafana_query(q: &str) -> String {
    let t = q.trim();
    if let Some(inner) = t
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let mut depth = 0;
        for (n, c) in inner.char_indices() {
            match c {
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth -= 1,
                ',' if depth == 0 => return inner[..n].to_string(),
                _ => {}
            }
        }
        return inner.to_string();
    }
    t.to_string()
}

/// The PromQL of deploy/monitoring: `expr` (rules, dashboard panels and annotations) and
/// `series` (the rules' unit tests) in every YAML file, and the dashboard's template queries.
fn deploy_queries() -> Vec<(String, String)> {
    let dir = deploy_dir().join("monitoring");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/monitoring")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        let value: Value = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") | Some("yml") => Figment::from(Yaml::string(&text))
                .extract()
                .unwrap_or_else(|e| panic!("{name} is not YAML: {e}")),
            Some("json") => {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
            }
            _ => continue,
        };
        let mut found = Vec::new();
        strings_under(&value, &["expr", "series"], &name, &mut found);
        if let Some(vars) = value.pointer("/templating/list").and_then(Value::as_array) {
            for (n, var) in vars.iter().enumerate() {
                if var["type"] != "query" {
                    continue;
                }
                let q = var["query"]["query"]
                    .as_str()
                    .or_else(|| var["query"].as_str())
                    .unwrap_or_default();
                found.push((
                    format!("{name}.templating.list[{n}].query"),
                    grafana_query(q),
                ));
            }
        }
        out.extend(found);
    }
    out
}

/// The problems of `queries` against `exported`: unknown names, unknown labels.
fn problems(queries: &[(String, String)], exported: &Exported) -> Vec<String> {
    let mut out = Vec::new();
    for (place, expr) in queries {
        for sel in selectors(expr) {
            if EXTERNAL.iter().any(|(n, _)| *n == sel.name) {
                continue;
            }
            match exported.lookup(&sel.name) {
                None => out.push(format!(
                    "{place}: `{}` is not a metric patless exports (nor a known external one)",
                    sel.name
                )),
                Some(labels) => {
                    let unknown = sel
                        .labels
                        .iter()
                        .filter(|l| !labels.contains(*l) && !TARGET_LABELS.contains(&l.as_str()));
                    for l in unknown {
                        out.push(format!(
                            "{place}: `{}` has no label `{l}` (it has {labels:?})",
                            sel.name
                        ));
                    }
                }
            }
        }
    }
    out
}

// --- the live patless ---------------------------------------------------------------------------

/// patless, driven through every metric family, scraped.
async fn live_scrape() -> String {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let closed = support::ClosedPort::new();
    let unreachable = closed.url();
    let broken = format!(
        r#"
[profiles.broken]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "not-the-secret"

[[routes]]
prefix = "/broken"
upstream = "{upstream}"
profile = "broken"
scope = "{ADO}"
"#,
        upstream = up.url()
    );
    let toml = config(
        &entra,
        &[("/ado", &up.url(), ADO), ("/down", &unreachable, ADO)],
        "",
        &broken,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("patless.toml");
    std::fs::write(&path, &toml).expect("write config");
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_secs(3600)).await;
    let client = support::http_client();
    let get = |path: &str| client.get(p.url(path)).send();

    // patless_config_reloads_total: one reload that works, one that does not.
    p.reloader()
        .reload()
        .await
        .expect("reload of the same file");
    std::fs::write(&path, "[server]\nlisten = 5\n").expect("write bad config");
    assert!(
        p.reloader().reload().await.is_err(),
        "a bad config is refused"
    );
    std::fs::write(&path, &toml).expect("restore config");

    // requests, their durations, token refreshes, the expiry gauge
    assert_eq!(
        get("/ado/org/_apis/projects").await.expect("req").status(),
        200
    );
    // patless_upstream_errors_total: nothing listens there
    assert_eq!(get("/down/x").await.expect("req").status(), 502);
    // patless_upstream_auth_retries_total: the upstream refuses the token once
    let token = entra.issued_tokens().last().cloned().expect("a token");
    up.revoke(&token);
    assert_eq!(
        get("/ado/org/_apis/projects").await.expect("req").status(),
        200
    );
    // patless_inbound_rejections_total
    let r = client
        .get(p.url("/ado/x"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 403);
    // a failed refresh (invalid_client), and the 503 it leads to; a 404 for no route
    assert_eq!(get("/broken/x").await.expect("req").status(), 503);
    assert_eq!(get("/nowhere").await.expect("req").status(), 404);

    let mut text = String::new();
    for _ in 0..100 {
        text = p.metrics().await;
        if text.contains(r#"result="invalid_client""#)
            && text.contains("patless_upstream_auth_retries_total{")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop().await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_in_deploy_monitoring_is_one_patless_exports() {
    let text = live_scrape().await;
    let exported = Exported::parse(&text);
    for family in DOCUMENTED_FAMILIES {
        let has_samples = exported
            .samples
            .keys()
            .any(|s| s == family || s.starts_with(&format!("{family}_")));
        assert!(
            exported.families.contains_key(*family) && has_samples,
            "the scrape lacks {family}: the test did not drive it\n{text}"
        );
    }

    let queries = deploy_queries();
    let names: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, q)| selectors(q))
        .map(|s| s.name)
        .collect();
    let ours: BTreeSet<&String> = names.iter().filter(|n| n.starts_with("patless_")).collect();
    assert!(
        ours.len() >= 8,
        "the parser found only {} distinct patless names in deploy/monitoring: {ours:?}",
        ours.len()
    );
    for file in [
        "alerts.yaml",
        "alerts.test.yaml",
        "prometheusrule.yaml",
        "grafana-dashboard.json",
    ] {
        let n = queries.iter().filter(|(p, _)| p.starts_with(file)).count();
        assert!(n >= 5, "only {n} queries found in {file}");
    }
    let bad = problems(&queries, &exported);
    assert!(
        bad.is_empty(),
        "deploy/monitoring uses metrics or labels patless does not export:\n  {}\n\nexported: {:?}",
        bad.join("\n  "),
        exported.samples.keys().collect::<Vec<_>>()
    );
    // The families the issue names are all used somewhere.
    for used in [
        "patless_token_refreshes_total",
        "patless_token_expiry_timestamp_seconds",
        "patless_requests_total",
        "patless_request_duration_seconds_bucket",
        "patless_upstream_errors_total",
        "patless_inbound_rejections_total",
    ] {
        assert!(names.contains(used), "deploy/monitoring never uses {used}");
    }
}

#[test]
fn the_checker_finds_wrong_names_and_labels() {
    let scrape = "\
# HELP patless_requests_total x
# TYPE patless_requests_total counter
patless_requests_total{route=\"/ado\",status=\"200\"} 3
# HELP patless_request_duration_seconds x
# TYPE patless_request_duration_seconds histogram
patless_request_duration_seconds_bucket{route=\"/a,}b\",le=\"0.5\"} 1
patless_request_duration_seconds_sum{route=\"/a,}b\"} 0.1
patless_request_duration_seconds_count{route=\"/a,}b\"} 1
";
    let exported = Exported::parse(scrape);
    let check = |expr: &str| problems(&[("t".into(), expr.into())], &exported);
    assert!(check(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(patless_request_duration_seconds_bucket{route=~"$route"}[$__rate_interval])))"#
    )
    .is_empty());
    assert!(check(
        "sum(rate(patless_request_duration_seconds_sum[5m])) / sum(rate(patless_request_duration_seconds_count[5m]))"
    )
    .is_empty());
    // a misspelt name, a counter's non-existent _count, an unknown label, a stray name
    assert_eq!(check("rate(patless_request_total[5m])").len(), 1);
    assert_eq!(check("patless_requests_total_count").len(), 1);
    assert_eq!(check(r#"patless_requests_total{reason="x"}"#).len(), 1);
    assert_eq!(check("up == 0").len(), 1);
    assert!(
        check("probe_success == 0").is_empty(),
        "an allowed external name"
    );
}

#[test]
fn the_parser_sees_selectors_only() {
    let names = |e: &str| -> Vec<String> { selectors(e).into_iter().map(|s| s.name).collect() };
    assert_eq!(
        names(
            r#"sum by (route, status) (rate(a_total{x="b,}c", y!~'d'}[5m:1m])) / on (job) group_left (instance) b offset 5m
               unless ignoring(z) c @ start() and bool_thing > bool 1e-3 or {__name__="d"} # e_comment
               or max without(q) (count_values("v", f)) * time() - vector(0) + label_values_x"#
        ),
        [
            "a_total",
            "b",
            "c",
            "bool_thing",
            "d",
            "f",
            "label_values_x"
        ]
    );
    let sel = selectors(r#"a{x="1", y=~"2"}"#);
    assert_eq!(
        sel[0].labels,
        BTreeSet::from(["x".to_string(), "y".to_string()])
    );
    assert_eq!(
        grafana_query(r#"label_values(patless_requests_total{job=~"$job"}, route)"#),
        r#"patless_requests_total{job=~"$job"}"#
    );
    assert_eq!(
        label_names(r#"route="/a,}b",le="+Inf"} 1"#),
        BTreeSet::from(["le".to_string(), "route".to_string()])
    );
}

#[test]
fn the_kubernetes_examples_configs_are_valid() {
    // What the Azure Workload Identity webhook injects.
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
    ]);
    let mut seen = 0;
    for kind in ["sidecar", "gateway"] {
        let path = deploy_dir()
            .join("kubernetes")
            .join(kind)
            .join("patless.toml");
        let loaded = patless::config::load(Some(&path), &env)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let server = &loaded.config.server;
        assert!(server.watch_config, "{kind}: watch_config");
        assert!(
            server.admin_listen.is_some(),
            "{kind}: the admin listener serves the probes"
        );
        seen += 1;
    }
    assert_eq!(seen, 2);
}
