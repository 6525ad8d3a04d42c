//! Prometheus metrics at `GET /metrics`, in the OpenMetrics text format
//! (which Prometheus scrapes): one `sluice_` prefix, base units (seconds),
//! `_total` counters, and bounded label sets: `instance` (from
//! `sluice.toml`), `status` (a run status), `stream` (at most
//! [`MAX_STREAM_SERIES`] per instance), `outcome` and `upstream` (host and
//! port of the operator's allow list). Never a run id. Label values are
//! escaped by `prometheus-client` (a stream name comes from an untrusted
//! connector; a test holds it to that).
//!
//! Run figures are counted when a run ends, from its report; gauges
//! (`sluice_running_runs`, `sluice_breaker_open`) are read at each scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use sluice_core::run::{RunRecord, RunStatus};
use sluice_runner::pipeline::RunReport;
use sluice_wasm::host::resilience::BreakerView;

/// The streams of one instance that get series of their own; the
/// records of any further stream are counted under `stream="_other"` (a
/// connector that declares thousands of streams cannot blow up the label
/// set).
pub const MAX_STREAM_SERIES: usize = 64;

/// The `stream` label of streams past [`MAX_STREAM_SERIES`].
pub const OTHER_STREAM: &str = "_other";

/// The `status` label of a run that could not start at all.
pub const NOT_STARTED: &str = "not_started";

/// The content type of `/metrics` (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    instance: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    instance: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    instance: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Run durations: 0.1 s to about 55 min.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

/// Scheduler lag: 1 ms to about 65 s.
fn lag_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The service's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_duration: HistogramFamily<InstanceLabels>,
    records_emitted: Family<StreamLabels, Counter>,
    records_upserted: Family<StreamLabels, Counter>,
    records_quarantined: Family<StreamLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_retries: Family<InstanceLabels, Counter>,
    http_throttled: Family<InstanceLabels, FloatCounter>,
    fuel: Family<InstanceLabels, Counter>,
    skipped: Family<InstanceLabels, Counter>,
    last_success: Family<InstanceLabels, FloatGauge>,
    breaker_open: Family<UpstreamLabels, Gauge>,
    running: Gauge,
    schedule_lag: Histogram,
    /// The streams with series of their own, per instance.
    streams: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn instance(name: &str) -> InstanceLabels {
    InstanceLabels {
        instance: name.to_string(),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            runs: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            records_emitted: Family::default(),
            records_upserted: Family::default(),
            records_quarantined: Family::default(),
            http_requests: Family::default(),
            http_retries: Family::default(),
            http_throttled: Family::default(),
            fuel: Family::default(),
            skipped: Family::default(),
            last_success: Family::default(),
            breaker_open: Family::default(),
            running: Gauge::default(),
            schedule_lag: lag_histogram(),
            streams: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "runs",
            "Runs that ended, by instance and status (not_started: it could not run at all)",
            m.runs.clone(),
        );
        registry.register_with_unit(
            "run_duration",
            "How long runs took, by instance",
            Unit::Seconds,
            m.run_duration.clone(),
        );
        registry.register(
            "records_emitted",
            "Records connectors emitted, by instance and stream",
            m.records_emitted.clone(),
        );
        registry.register(
            "records_upserted",
            "Records committed to the destination, by instance and stream",
            m.records_upserted.clone(),
        );
        registry.register(
            "records_quarantined",
            "Records quarantined (failed validation), by instance and stream",
            m.records_quarantined.clone(),
        );
        registry.register(
            "http_requests",
            "Connector HTTP requests by outcome: ok and failed were sent; denied, invalid and circuit_open were refused by the host",
            m.http_requests.clone(),
        );
        registry.register(
            "http_retries",
            "HTTP attempts repeated after transient failures",
            m.http_retries.clone(),
        );
        registry.register_with_unit(
            "http_throttled",
            "Time runs waited for rate-limit tokens",
            Unit::Seconds,
            m.http_throttled.clone(),
        );
        registry.register(
            "fuel_consumed",
            "Fuel (WebAssembly instructions, roughly) connectors consumed",
            m.fuel.clone(),
        );
        registry.register(
            "runs_skipped",
            "Due runs that did not run (the previous run was still going, or the server stopped first)",
            m.skipped.clone(),
        );
        registry.register_with_unit(
            "last_success_timestamp",
            "When the instance's newest successful run ended (Unix time)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while an upstream's circuit breaker is open (requests fail fast), else 0",
            m.breaker_open.clone(),
        );
        registry.register("running_runs", "Runs going now", m.running.clone());
        registry.register_with_unit(
            "schedule_lag",
            "How late scheduled runs started after they fell due",
            Unit::Seconds,
            m.schedule_lag.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The `stream` label for `stream` of `instance`.
    fn stream_label(&self, instance: &str, stream: &str) -> String {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let known = streams.entry(instance.to_string()).or_default();
        if known.contains(stream) || known.len() < MAX_STREAM_SERIES {
            known.insert(stream.to_string());
            stream.to_string()
        } else {
            OTHER_STREAM.to_string()
        }
    }

    /// Count a run that ended, from its report.
    pub fn run_ended(&self, name: &str, report: &RunReport) {
        let r = &report.record;
        self.runs
            .get_or_create(&RunLabels {
                instance: name.to_string(),
                status: r.status.as_str().to_string(),
            })
            .inc();
        if let Some(ms) = r.duration_ms {
            self.run_duration
                .get_or_create(&instance(name))
                .observe(ms as f64 / 1000.0);
        }
        for (stream, c) in &r.streams {
            let labels = StreamLabels {
                instance: name.to_string(),
                stream: self.stream_label(name, stream),
            };
            self.records_emitted
                .get_or_create(&labels)
                .inc_by(c.emitted);
            self.records_upserted
                .get_or_create(&labels)
                .inc_by(c.upserted);
            self.records_quarantined
                .get_or_create(&labels)
                .inc_by(c.quarantined);
        }
        let sent_ok = r.http_requests.saturating_sub(report.http_failed);
        for (outcome, n) in [
            ("ok", sent_ok),
            ("failed", report.http_failed),
            ("denied", r.http_denied),
            ("invalid", report.http_invalid),
            ("circuit_open", report.http_circuit_open),
        ] {
            self.http_requests
                .get_or_create(&HttpLabels {
                    instance: name.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc_by(n);
        }
        self.http_retries
            .get_or_create(&instance(name))
            .inc_by(r.http_retries);
        self.http_throttled
            .get_or_create(&instance(name))
            .inc_by(r.http_throttled_ms as f64 / 1000.0);
        self.fuel.get_or_create(&instance(name)).inc_by(r.fuel_used);
        if r.status == RunStatus::Succeeded {
            self.succeeded(name, r);
        }
    }

    /// Note the newest successful run of `name` (also at startup, from
    /// the run log).
    pub fn succeeded(&self, name: &str, r: &RunRecord) {
        let Some(ended) = r.ended_at.as_deref().and_then(unix_seconds) else {
            return;
        };
        let gauge = self.last_success.get_or_create(&instance(name));
        if ended > gauge.get() {
            gauge.set(ended);
        }
    }

    /// Count a run that could not run at all.
    pub fn not_started(&self, name: &str) {
        self.runs
            .get_or_create(&RunLabels {
                instance: name.to_string(),
                status: NOT_STARTED.to_string(),
            })
            .inc();
    }

    /// Count a due run that did not run.
    pub fn skipped(&self, name: &str) {
        self.skipped.get_or_create(&instance(name)).inc();
    }

    /// A scheduled run started `lag_ms` after it fell due.
    pub fn schedule_lag(&self, lag_ms: i64) {
        self.schedule_lag.observe(lag_ms.max(0) as f64 / 1000.0);
    }

    /// The text of a scrape, with the gauges read now.
    pub fn encode(&self, running: usize, breakers: &[BreakerView]) -> String {
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        for b in breakers {
            self.breaker_open
                .get_or_create(&UpstreamLabels {
                    upstream: b.upstream.clone(),
                })
                .set(i64::from(b.open));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A run log time (RFC 3339, as [`sluice_core::run::now_rfc3339`]
/// writes it) as Unix seconds.
fn unix_seconds(text: &str) -> Option<f64> {
    sluice_runner::schedule::parse_rfc3339_ms(text).map(|ms| ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::run::StreamCounts;

    fn report(status: RunStatus, streams: &[(&str, u64)]) -> RunReport {
        let mut record = RunRecord::started("r1", "gh", "1.0.0", "h");
        record.status = status;
        record.duration_ms = Some(1500);
        record.ended_at = Some("2026-12-02T06:00:00.000Z".into());
        record.http_requests = 7;
        record.http_retries = 2;
        for (s, n) in streams {
            record.streams.insert(
                s.to_string(),
                StreamCounts {
                    emitted: *n,
                    valid: *n,
                    upserted: *n,
                    ..Default::default()
                },
            );
        }
        RunReport {
            record,
            selected_streams: vec![],
            tables: Default::default(),
            http_failed: 1,
            http_circuit_open: 0,
            log_lines_suppressed: 0,
            http_invalid: 0,
            http_log_lines_suppressed: 0,
            component_cache: "memory",
            component_load_ms: 0,
        }
    }

    /// The value of the series written exactly `series` (name and
    /// labels as encoded), if the text has it.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn a_run_is_counted_by_instance_status_and_stream() {
        let m = Metrics::new();
        m.run_ended("gh", &report(RunStatus::Succeeded, &[("issues", 10)]));
        m.run_ended("gh", &report(RunStatus::Failed, &[("issues", 5)]));
        m.not_started("gh");
        m.skipped("gh");
        m.schedule_lag(40);
        let t = m.encode(3, &[]);
        let v = |series: &str| value(&t, series).unwrap_or_else(|| panic!("no {series} in {t}"));
        assert_eq!(
            v(r#"sluice_runs_total{instance="gh",status="succeeded"}"#),
            1.0
        );
        assert_eq!(
            v(r#"sluice_runs_total{instance="gh",status="failed"}"#),
            1.0
        );
        assert_eq!(
            v(r#"sluice_runs_total{instance="gh",status="not_started"}"#),
            1.0
        );
        assert_eq!(v(r#"sluice_runs_skipped_total{instance="gh"}"#), 1.0);
        assert_eq!(
            v(r#"sluice_records_upserted_total{instance="gh",stream="issues"}"#),
            15.0
        );
        assert_eq!(
            v(r#"sluice_http_requests_total{instance="gh",outcome="ok"}"#),
            12.0
        );
        assert_eq!(
            v(r#"sluice_http_requests_total{instance="gh",outcome="failed"}"#),
            2.0
        );
        assert_eq!(v(r#"sluice_http_retries_total{instance="gh"}"#), 4.0);
        assert_eq!(v("sluice_running_runs"), 3.0);
        assert_eq!(
            v(r#"sluice_last_success_timestamp_seconds{instance="gh"}"#),
            1_796_191_200.0
        );
        assert_eq!(
            v(r#"sluice_run_duration_seconds_count{instance="gh"}"#),
            2.0
        );
        assert_eq!(v("sluice_schedule_lag_seconds_count"), 1.0);
        assert!(t.contains("# TYPE sluice_runs counter"), "{t}");
        assert!(
            t.contains("# UNIT sluice_run_duration_seconds seconds"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert!(!t.contains("r1"), "never a run id: {t}");
    }

    #[test]
    fn hostile_stream_names_are_escaped_and_bounded() {
        let m = Metrics::new();
        let hostile = "a\"b\\c\nd} 99";
        m.run_ended("gh", &report(RunStatus::Succeeded, &[(hostile, 4)]));
        let many: Vec<String> = (0..MAX_STREAM_SERIES + 10)
            .map(|i| format!("s{i}"))
            .collect();
        let streams: Vec<(&str, u64)> = many.iter().map(|s| (s.as_str(), 1)).collect();
        m.run_ended("gh", &report(RunStatus::Succeeded, &streams));
        let t = m.encode(0, &[]);
        assert_eq!(
            value(
                &t,
                r#"sluice_records_emitted_total{instance="gh",stream="a\"b\\c\nd} 99"}"#
            ),
            Some(4.0),
            "escaped as the text format wants: {t}"
        );
        assert!(
            t.lines()
                .all(|l| l.starts_with('#') || l.starts_with("sluice_")),
            "a name broke a line: {t}"
        );
        let series = t
            .lines()
            .filter(|l| l.starts_with("sluice_records_emitted_total{"))
            .count();
        assert_eq!(series, MAX_STREAM_SERIES + 1, "the cap, plus _other");
        // The hostile stream took one of the slots: 11 streams are other.
        assert_eq!(
            value(
                &t,
                r#"sluice_records_emitted_total{instance="gh",stream="_other"}"#
            ),
            Some(11.0)
        );
    }

    #[test]
    fn breakers_are_read_at_each_scrape() {
        let m = Metrics::new();
        let b = |open| {
            vec![BreakerView {
                upstream: "api.example.com:443".into(),
                open,
            }]
        };
        let series = r#"sluice_breaker_open{upstream="api.example.com:443"}"#;
        assert_eq!(value(&m.encode(0, &b(true)), series), Some(1.0));
        assert_eq!(value(&m.encode(0, &b(false)), series), Some(0.0));
    }
}
