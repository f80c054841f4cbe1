//! `patless_requests_total` and `patless_request_duration_seconds`, sharded per worker.
//!
//! Every proxied request writes both families. With one shared vec per family the worker threads
//! (one per core) write the same atomics, and those cache lines bounce between the cores. So each
//! worker writes its own unregistered vecs (a [`Shard`]), and one [`RequestFamilies`] collector,
//! registered in their place, sums the shards at scrape time: counters per label set; histograms
//! per label set by count, sum and each bucket's cumulative count. The exposition (names, help,
//! labels, buckets, counts) is the one a single registered vec would give, and never delayed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec};

use super::{LATENCY_BUCKETS, REQUESTS, REQUEST_DURATION};

/// One worker's own, unregistered request families.
#[derive(Debug)]
pub(super) struct Shard {
    /// `patless_requests_total{route,status}`
    pub(super) requests: IntCounterVec,
    /// `patless_request_duration_seconds{route}`
    pub(super) request_duration: HistogramVec,
}

impl Shard {
    fn new() -> Self {
        let opts = HistogramOpts::from(REQUEST_DURATION.opts()).buckets(LATENCY_BUCKETS.to_vec());
        Shard {
            requests: IntCounterVec::new(REQUESTS.opts(), REQUESTS.labels)
                .expect("valid metric definition"),
            request_duration: HistogramVec::new(opts, REQUEST_DURATION.labels)
                .expect("valid metric definition"),
        }
    }
}

struct Inner {
    /// The two families' descriptors, as a registered vec would describe them.
    descs: Vec<Desc>,
    /// Every worker's shard, by worker index; only ever grows.
    shards: Mutex<Vec<Arc<Shard>>>,
}

/// The collector registered for both request families: it owns the shards and sums them.
#[derive(Clone)]
pub(super) struct RequestFamilies {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RequestFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestFamilies")
    }
}

impl RequestFamilies {
    /// No shards yet.
    pub(super) fn new() -> Self {
        let template = Shard::new();
        let descs = template
            .requests
            .desc()
            .into_iter()
            .chain(template.request_duration.desc())
            .cloned()
            .collect();
        RequestFamilies {
            inner: Arc::new(Inner {
                descs,
                shards: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Worker `worker`'s shard: the same one on every call, created (with any before it) on the
    /// first.
    pub(super) fn shard(&self, worker: usize) -> Arc<Shard> {
        let mut shards = self.shards();
        while shards.len() <= worker {
            shards.push(Arc::new(Shard::new()));
        }
        Arc::clone(&shards[worker])
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Shard>>> {
        self.inner
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for RequestFamilies {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The list is only read here: a worker never waits on a scrape's merge.
        let shards: Vec<Arc<Shard>> = self.shards().clone();
        let requests = merge(shards.iter().map(|s| s.requests.collect()), add_counter);
        let durations = merge(
            shards.iter().map(|s| s.request_duration.collect()),
            add_histogram,
        );
        requests.into_iter().chain(durations).collect()
    }
}

/// Sums one family across shards: metrics with the same label set become one (`add` folds the
/// second into the first), sorted by label values. `None` without a shard; with shards but no
/// samples, a family with no metrics, which the registry omits as it would a vec's.
fn merge(
    collected: impl Iterator<Item = Vec<MetricFamily>>,
    add: fn(&mut Metric, &Metric),
) -> Option<MetricFamily> {
    let mut family: Option<MetricFamily> = None;
    let mut by_labels: BTreeMap<Vec<(String, String)>, Metric> = BTreeMap::new();
    for mut mf in collected.flatten() {
        for metric in mf.take_metric() {
            let key = metric
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            match by_labels.get_mut(&key) {
                Some(sum) => add(sum, &metric),
                None => {
                    by_labels.insert(key, metric);
                }
            }
        }
        family.get_or_insert(mf);
    }
    let mut family = family?;
    family.set_metric(by_labels.into_values().collect());
    Some(family)
}

fn add_counter(sum: &mut Metric, other: &Metric) {
    let mut counter = sum.get_counter().clone();
    counter.set_value(counter.get_value() + other.get_counter().get_value());
    sum.set_counter(counter);
}

fn add_histogram(sum: &mut Metric, other: &Metric) {
    let (a, b) = (sum.get_histogram(), other.get_histogram());
    debug_assert_eq!(a.get_bucket().len(), b.get_bucket().len(), "same buckets");
    let mut h = a.clone();
    h.set_sample_count(a.get_sample_count() + b.get_sample_count());
    h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
    let buckets = a
        .get_bucket()
        .iter()
        .zip(b.get_bucket())
        .map(|(x, y)| {
            let mut bucket = x.clone();
            bucket.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
            bucket
        })
        .collect();
    h.set_bucket(buckets);
    sum.set_histogram(h);
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use prometheus::{Encoder, Registry, TextEncoder};

    /// The lines of `text` about `family`: HELP, TYPE and samples.
    fn lines_of(text: &str, family: &str) -> Vec<String> {
        let meta = [format!("# HELP {family} "), format!("# TYPE {family} ")];
        text.lines()
            .filter(|l| {
                let sample = l
                    .strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(['{', '_']));
                sample || meta.iter().any(|m| l.starts_with(m.as_str()))
            })
            .map(str::to_owned)
            .collect()
    }

    /// Requests counted on two workers: `(worker, route, status, seconds)`.
    const SAMPLES: [(usize, &str, &str, f64); 7] = [
        (0, "/ado", "200", 0.25),
        (1, "/ado", "200", 0.5),
        (0, "/ado", "200", 0.125),
        (1, "/ado", "200", 2.0),
        (1, "/ado", "200", 0.0625),
        (0, "/ado", "404", 0.000_976_562_5),
        (1, "/graph", "500", 40.0),
    ];

    fn count(metrics: &[Metrics], samples: &[(usize, &str, &str, f64)]) {
        for &(worker, route, status, secs) in samples {
            let m = &metrics[worker];
            m.requests().with_label_values(&[route, status]).inc();
            m.request_duration()
                .with_label_values(&[route])
                .observe(secs);
        }
    }

    #[test]
    fn two_shards_render_as_their_sum() {
        let metrics = Metrics::new(Registry::new());
        let workers = [metrics.for_worker(0), metrics.for_worker(1)];
        count(&workers, &SAMPLES);
        let text = metrics.render();
        for line in [
            r#"patless_requests_total{route="/ado",status="200"} 5"#,
            r#"patless_requests_total{route="/ado",status="404"} 1"#,
            r#"patless_requests_total{route="/graph",status="500"} 1"#,
            r#"patless_request_duration_seconds_count{route="/ado"} 6"#,
            r#"patless_request_duration_seconds_sum{route="/ado"} 2.9384765625"#,
            r#"patless_request_duration_seconds_bucket{route="/ado",le="0.25"} 4"#,
            r#"patless_request_duration_seconds_bucket{route="/ado",le="0.5"} 5"#,
            r#"patless_request_duration_seconds_bucket{route="/ado",le="+Inf"} 6"#,
            r#"patless_request_duration_seconds_bucket{route="/graph",le="30"} 0"#,
            r#"patless_request_duration_seconds_count{route="/graph"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_sum_renders_as_one_registered_vec_would() {
        // The same samples counted by plain registered vecs, the exposition before sharding.
        let reference = Registry::new();
        let one = Metrics::new(Registry::new());
        let (requests, durations) = (one.requests().clone(), one.request_duration().clone());
        reference.register(Box::new(requests)).expect("register");
        reference.register(Box::new(durations)).expect("register");
        count(&[one.clone(), one], &SAMPLES);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&reference.gather(), &mut buf)
            .expect("encode");
        let expected = String::from_utf8(buf).expect("utf-8");

        let metrics = Metrics::new(Registry::new());
        count(&[metrics.for_worker(0), metrics.for_worker(1)], &SAMPLES);
        let text = metrics.render();
        for family in ["patless_requests_total", "patless_request_duration_seconds"] {
            let want = lines_of(&expected, family);
            assert!(want.len() > 3, "{want:?}");
            assert_eq!(lines_of(&text, family), want);
        }
    }

    #[test]
    fn a_worker_keeps_its_shard() {
        let metrics = Metrics::new(Registry::new());
        metrics
            .for_worker(1)
            .requests()
            .with_label_values(&["/ado", "200"])
            .inc();
        // A reload builds its stacks again from the same `Metrics`.
        let again = metrics.for_worker(1);
        again.requests().with_label_values(&["/ado", "200"]).inc();
        assert_eq!(
            again.requests().with_label_values(&["/ado", "200"]).get(),
            2
        );
        assert_eq!(
            metrics.requests().with_label_values(&["/ado", "200"]).get(),
            0
        );
        assert!(metrics
            .render()
            .contains(r#"patless_requests_total{route="/ado",status="200"} 2"#));
    }

    #[test]
    fn help_and_type_lines_are_unchanged() {
        let metrics = Metrics::new(Registry::new());
        count(&[metrics.for_worker(0), metrics.for_worker(1)], &SAMPLES);
        let text = metrics.render();
        for line in [
            "# HELP patless_requests_total Proxied requests by route and response status.",
            "# TYPE patless_requests_total counter",
            "# HELP patless_request_duration_seconds Time to the response headers of a proxied request.",
            "# TYPE patless_request_duration_seconds histogram",
        ] {
            assert_eq!(text.lines().filter(|l| *l == line).count(), 1, "{line}");
        }
    }

    #[test]
    fn a_family_without_samples_is_omitted_as_before() {
        let metrics = Metrics::new(Registry::new());
        let _ = metrics.for_worker(1);
        let text = metrics.render();
        assert!(!text.contains("patless_requests_total"), "{text}");
        assert!(!text.contains("patless_request_duration_seconds"), "{text}");
        assert!(text.contains("patless_build_info"), "{text}");

        metrics.requests().with_label_values(&["/ado", "200"]).inc();
        let text = metrics.render();
        assert!(
            text.contains("# TYPE patless_requests_total counter"),
            "{text}"
        );
        assert!(!text.contains("patless_request_duration_seconds"), "{text}");
    }
}
