//! The control plane's Prometheus metrics, on `prometheus-client` (the Prometheus project's
//! own Rust client): one registry per [`Metrics`], so every app — and every test — has its
//! own, and `/metrics` renders it in the OpenMetrics text format.
//!
//! Names are listed in docs/operations.md (with the filter's Envoy stats beside them) and used by
//! the Grafana dashboard in `deploy/grafana/opsgate.json`; a test checks the two agree.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Latency buckets: 100 µs to ~3.3 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route's template (`/admin/v1/orgs/{id}`), never the path a client sent.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChargeLabels {
    pub provider: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the ledger's writer records (it lives with the database handle, which has no
/// registry of its own; [`Metrics::new`] registers these).
#[derive(Clone)]
pub struct LedgerMetrics {
    pub batches: Counter,
    pub jobs: Counter,
    pub batch_size: Histogram,
    pub transaction_seconds: HistogramFamily<BackendLabels>,
    /// Batch attempts after the first (a conflict re-run on locked rows).
    pub retries: Counter,
    /// SQLite: batches decided on the mirror of the ledger rows (one trip), and those that
    /// found the database moved since and ran again on rows read.
    pub mirrored: Counter,
    pub mirror_stale: Counter,
}

impl Default for LedgerMetrics {
    fn default() -> Self {
        LedgerMetrics {
            batches: Counter::default(),
            jobs: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            transaction_seconds: Family::new_with_constructor(latency),
            retries: Counter::default(),
            mirrored: Counter::default(),
            mirror_stale: Counter::default(),
        }
    }
}

impl LedgerMetrics {
    pub fn transaction(&self, backend: crate::db::Backend, took: Duration) {
        let backend = match backend {
            crate::db::Backend::Sqlite => "sqlite",
            crate::db::Backend::Postgres => "postgres",
        };
        self.transaction_seconds
            .get_or_create(&BackendLabels { backend })
            .observe(took.as_secs_f64());
    }
}

pub struct Metrics {
    registry: Registry,
    pub http: HistogramFamily<RouteLabels>,
    pub authorize: Family<DecisionLabels, Counter>,
    pub authorize_seconds: HistogramFamily<DecisionLabels>,
    pub settle_seconds: Histogram,
    pub settle_batch_size: Histogram,
    pub settled: Counter,
    pub settle_unknown: Counter,
    pub charged: Family<ChargeLabels, Counter>,
    pub holds_open: Gauge,
    pub holds_expired: Counter,
}

impl Metrics {
    /// A fresh registry holding every metric, the database's ledger metrics included.
    pub fn new(db: &crate::db::Db) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            http: Family::new_with_constructor(latency),
            authorize: Family::default(),
            authorize_seconds: Family::new_with_constructor(latency),
            settle_seconds: latency(),
            settle_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            settled: Counter::default(),
            settle_unknown: Counter::default(),
            charged: Family::default(),
            holds_open: Gauge::default(),
            holds_expired: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "opsgate_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            m.http.clone(),
        );
        r.register(
            "opsgate_authorize",
            "Authorize decisions for the filter",
            m.authorize.clone(),
        );
        r.register(
            "opsgate_authorize_duration_seconds",
            "Time to decide an authorize, by decision",
            m.authorize_seconds.clone(),
        );
        r.register(
            "opsgate_settle_duration_seconds",
            "Time to apply one settle request (a batch of settlements)",
            m.settle_seconds.clone(),
        );
        r.register(
            "opsgate_settle_batch_size",
            "Settlements per settle request from the filter",
            m.settle_batch_size.clone(),
        );
        r.register("opsgate_settled", "Settlements applied", m.settled.clone());
        r.register(
            "opsgate_settle_unknown_hold",
            "Settlements naming a hold this ledger does not have",
            m.settle_unknown.clone(),
        );
        r.register(
            "opsgate_charged_millicredits",
            "Milli-credits charged, by provider and model",
            m.charged.clone(),
        );
        r.register(
            "opsgate_holds_open",
            "Holds placed and not yet settled (read at scrape)",
            m.holds_open.clone(),
        );
        r.register(
            "opsgate_holds_expired",
            "Holds whose outcome never arrived, charged as held by the sweeper",
            m.holds_expired.clone(),
        );
        let l = &db.ledger_queue.metrics;
        r.register(
            "opsgate_ledger_batches",
            "Ledger group-commit batches run",
            l.batches.clone(),
        );
        r.register(
            "opsgate_ledger_jobs",
            "Authorizes, settlements and expiries the batches carried",
            l.jobs.clone(),
        );
        r.register(
            "opsgate_ledger_batch_size",
            "Jobs per ledger batch",
            l.batch_size.clone(),
        );
        r.register(
            "opsgate_ledger_transaction_duration_seconds",
            "Time of one ledger batch's database work, by backend",
            l.transaction_seconds.clone(),
        );
        r.register(
            "opsgate_ledger_retries",
            "Ledger batch attempts after the first (conflicts re-run on locked rows)",
            l.retries.clone(),
        );
        r.register(
            "opsgate_ledger_mirrored_batches",
            "SQLite: ledger batches decided on the writer's mirror of the rows (one trip, no reads)",
            l.mirrored.clone(),
        );
        r.register(
            "opsgate_ledger_mirror_stale",
            "SQLite: mirrored batches that found the database changed by another connection and ran again on rows read",
            l.mirror_stale.clone(),
        );
        r.register(
            "opsgate_callers_kept",
            "SQLite: authorizes that took their caller from the control plane's cache (no read)",
            db.callers.kept.clone(),
        );
        r.register(
            "opsgate_callers_stale",
            "SQLite: authorizes whose cached caller was read before the database last changed (read again, then decided)",
            db.callers.stale.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn route(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    pub fn authorized(&self, allowed: bool, took: Duration) {
        let decision = if allowed { "allow" } else { "deny" };
        let labels = DecisionLabels { decision };
        self.authorize.get_or_create(&labels).inc();
        self.authorize_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn charged(&self, provider: &str, model: &str, mc: i64) {
        self.charged
            .get_or_create(&ChargeLabels {
                provider: provider.to_string(),
                model: model.to_string(),
            })
            .inc_by(mc.max(0) as u64);
    }
}
