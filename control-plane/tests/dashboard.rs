//! The Grafana dashboard (`deploy/grafana/opsgate.json`) against the metrics that exist.
//!
//! Every metric name a panel's query (or a template variable's query) uses must be one the
//! control plane's `/metrics` really renders — checked by building the app in-process and
//! sending it an authorize and a settle, so the labelled families and histograms have
//! samples — or one of the filter's Envoy stats, as `plugin/src/metrics.rs` defines them.
//! And the other way round: every control-plane family and every filter stat is on the
//! dashboard, so a new metric shows up there or fails here. The dashboard's shape is checked
//! too: it imports (a Prometheus `__inputs` entry, every query on that data source), every
//! panel has a title, ids are unique, and panels neither overflow the grid nor overlap.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::db::Db;
use opsgate_control_plane::AppState;
use opsgate_core::contract::{AuthorizeRequest, Outcome, Principal, SettleBatch};
use opsgate_core::plan::Plan;
use opsgate_core::pricing::Usage;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const DASHBOARD: &str = include_str!("../../deploy/grafana/opsgate.json");
const FILTER_METRICS: &str = include_str!("../../plugin/src/metrics.rs");
/// The data source every query uses: an `__inputs` placeholder on import, and also the name
/// of the dashboard's data-source variable, so the file works provisioned as it is.
const DS: &str = "${DS_PROMETHEUS}";

/// Every panel, the panels of collapsed rows included (an expanded row's panels sit beside
/// it at the top level), depth first.
fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(nested) = p.get("panels").and_then(Value::as_array) {
            out.extend(all_panels(nested));
        }
    }
    out
}

/// The `opsgate_…` identifiers in a PromQL expression: `opsgate_` at the start of an
/// identifier, then `[a-z0-9_]*` (digits too: the filter's `opsgate_decisions_denied_400`),
/// outside string literals (a label value is not a metric). A name given as a string
/// (`{__name__="…"}`) would be missed, so the dashboard test refuses `__name__` outright.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' || b == b'`' {
            // Skip the string, escapes included.
            i += 1;
            while i < bytes.len() && bytes[i] != b {
                i += if bytes[i] == b'\\' && b != b'`' { 2 } else { 1 };
            }
            i += 1;
        } else if expr[i..].starts_with("opsgate_") && (i == 0 || !ident(bytes[i - 1])) {
            let mut end = i + "opsgate_".len();
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets and query variables.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in all_panels(panels) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((format!("panel {}", p["title"]), e.to_string()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if v["type"] != "query" {
            continue;
        }
        let name = format!("variable {}", v["name"]);
        for q in [&v["definition"], &v["query"], &v["query"]["query"]] {
            if let Some(e) = q.as_str() {
                out.push((name.clone(), e.to_string()));
            }
        }
    }
    out
}

/// The series names the filter's stats have in Envoy's `/stats/prometheus`.
///
/// The rule: the stat names are the `"opsgate.…"` string literals of `plugin/src/metrics.rs`
/// (its `name()` functions); those before `pub enum Histogram` are counters, those after it
/// histograms. Envoy defines them under its custom `wasmcustom.` namespace, which its
/// Prometheus output drops along with the `envoy_` prefix (checked against Envoy 1.40:
/// `wasmcustom.opsgate.decisions.allowed` is scraped as `opsgate_decisions_allowed`); dots
/// become underscores; a counter keeps its name (Envoy adds no `_total`), a histogram
/// becomes `_bucket`, `_sum` and `_count`. So the filter's names share the control plane's
/// `opsgate_` prefix, and a name is the filter's exactly when it is in this set — the test
/// refuses a name that both sides would claim.
///
/// Returns each stat (as Envoy's Prometheus output names it) with its series names.
fn filter_stats() -> BTreeMap<String, Vec<String>> {
    let (counters, histograms) = FILTER_METRICS
        .split_once("pub enum Histogram")
        .expect("plugin/src/metrics.rs declares `pub enum Histogram`");
    let literals = |text: &str| -> Vec<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("opsgate.") && s.len() > "opsgate.".len())
            .map(|s| s.replace('.', "_"))
            .collect()
    };
    let counters = literals(counters);
    let histograms = literals(histograms);
    assert!(
        counters.iter().any(|c| c == "opsgate_decisions_allowed") && !histograms.is_empty(),
        "no filter stats read from plugin/src/metrics.rs: counters {counters:?}, histograms {histograms:?}"
    );
    let mut stats = BTreeMap::new();
    for c in counters {
        stats.insert(c.clone(), vec![c]);
    }
    for h in histograms {
        let series = ["_bucket", "_sum", "_count"].map(|s| format!("{h}{s}"));
        assert!(stats.insert(h, series.to_vec()).is_none());
    }
    stats
}

/// The control plane's `/metrics`: each sample's series name mapped to its family's name
/// and type (from the `# TYPE` lines).
fn control_plane_series(text: &str) -> BTreeMap<String, (String, String)> {
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            types.insert(name.to_string(), kind.to_string());
        }
    }
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().expect("sample name");
        // The family: the longest TYPE name the sample's name starts with.
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE line"));
        out.insert(name.to_string(), (family.clone(), types[family].clone()));
    }
    out
}

/// The suffix a series of a family of `kind` carries (OpenMetrics, as rendered).
fn suffix_fits(series: &str, family: &str, kind: &str) -> bool {
    let suffix = &series[family.len()..];
    match kind {
        "counter" => suffix == "_total" || suffix == "_created",
        "histogram" => ["_bucket", "_sum", "_count", "_created"].contains(&suffix),
        "gauge" => suffix.is_empty(),
        _ => false,
    }
}

/// One request through the app; a request with a body is the filter's (internal token).
async fn send(
    state: &AppState,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req
            .header("authorization", format!("Bearer {INTERNAL_TOKEN}"))
            .header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let r = oneshot(state, req).await;
    (r.status, r.text)
}

#[test]
fn dashboard_is_well_formed() {
    let d: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));

    // It imports: one Prometheus input, and a data-source variable of the same name.
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no prometheus data-source variable"
    );

    let top = d["panels"].as_array().expect("panels");
    let panels = all_panels(top);
    assert!(panels.len() > 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: panel id {id} used twice");
        let g = &p["gridPos"];
        let [h, w, x, _y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k} missing"))
        });
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], DS, "{title}: panel data source");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DS, "{title}: query data source");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a query without an expression"
            );
            assert!(refs.insert(t["refId"].to_string()), "{title}: refId twice");
            let e = t["expr"].as_str().unwrap_or_default();
            if e.contains("histogram_quantile") {
                assert!(
                    metric_names(e).iter().all(|n| n.ends_with("_bucket")),
                    "{title}: histogram_quantile over something else than buckets: {e}"
                );
            }
        }
    }

    // No two panels overlap: the top level, and the panels of each collapsed row.
    let mut levels = vec![top.iter().collect::<Vec<_>>()];
    for p in top {
        if let Some(nested) = p["panels"].as_array().filter(|n| !n.is_empty()) {
            assert_eq!(
                p["collapsed"], true,
                "{}: only a collapsed row holds panels",
                p["title"]
            );
            levels.push(nested.iter().collect());
        }
    }
    for level in levels {
        let rects: Vec<(u64, u64, u64, u64, &Value)> = level
            .iter()
            .map(|p| {
                let g = &p["gridPos"];
                let n = |k: &str| g[k].as_u64().unwrap_or_default();
                (n("x"), n("y"), n("w"), n("h"), &p["title"])
            })
            .collect();
        for (i, a) in rects.iter().enumerate() {
            for b in &rects[i + 1..] {
                let apart =
                    a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
                assert!(apart, "panels {} and {} overlap", a.4, b.4);
            }
        }
    }
}

#[test]
fn metric_names_are_read_as_prometheus_does() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.5, sum by (le) (rate(opsgate_x_bucket{job=~\"opsgate_job\"}[5m]))) / my_opsgate_y + opsgate_decisions_denied_400"
        ),
        ["opsgate_x_bucket", "opsgate_decisions_denied_400"]
    );
    let series: BTreeSet<String> = filter_stats().into_values().flatten().collect();
    assert!(series.contains("opsgate_decisions_denied_429"));
    assert!(series.contains("opsgate_authorize_latency_ms_bucket"));
    assert!(!series.contains("opsgate_authorize_latency_ms"));
}

fn json(v: &impl serde::Serialize) -> Option<String> {
    Some(serde_json::to_string(v).expect("json"))
}

/// An authorize (allowed), one denied, and a settle of the allowed call's hold with usage:
/// every labelled family and histogram of the control plane then has a sample.
async fn traffic(db: &Db, state: &AppState) {
    seed(
        db,
        "org_dash",
        "svc_dash",
        Plan::Enterprise,
        5_000_000,
        None,
        T0,
    )
    .await;
    let authorize = |user: &str, model: &str| AuthorizeRequest {
        principal: Principal::Service {
            user_id: user.to_string(),
        },
        ..chat("", model, 400, Some(200))
    };
    let (status, text) = send(
        state,
        Method::POST,
        "/internal/v1/authorize",
        json(&authorize("svc_dash", "gpt-4o-mini")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let grant: Value = serde_json::from_str(&text).expect("authorize answer");
    assert_eq!(grant["decision"], "allow", "{text}");
    let hold = grant["hold_id"].as_str().expect("hold_id");
    let (status, text) = send(
        state,
        Method::POST,
        "/internal/v1/authorize",
        json(&authorize("svc_dash", "no-such-model")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("\"deny\""), "{text}");
    let batch = SettleBatch {
        with_balances: false,
        settlements: vec![opsgate_core::contract::Settlement {
            usage: Usage {
                prompt_tokens: 120,
                completion_tokens: 80,
                images: 0,
            },
            ..settlement(hold, Outcome::Success, 0, 0)
        }],
    };
    let (status, text) = send(state, Method::POST, "/internal/v1/settle", json(&batch)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("charged_mc"), "{text}");
}

#[tokio::test]
async fn every_metric_on_the_dashboard_exists_and_every_metric_is_on_it() {
    let d: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    // (series name, where the dashboard uses it)
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (place, expr) in expressions(&d) {
        assert!(
            !expr.contains("__name__"),
            "{place}: a metric named by __name__ escapes this check: {expr}"
        );
        for name in metric_names(&expr) {
            used.entry(name).or_insert_with(|| place.clone());
        }
    }
    assert!(used.len() > 20, "{used:?}");
    let filter_stats = filter_stats();
    let filter: BTreeSet<String> = filter_stats.values().flatten().cloned().collect();

    for_each_backend("dashboard_metrics", |db| {
        let used = used.clone();
        let filter = filter.clone();
        let filter_stats = filter_stats.clone();
        async move {
            let state = state(&db, &ManualClock::at(T0), catalogue());
            traffic(&db, &state).await;
            let (status, text) = send(&state, Method::GET, "/metrics", None).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let cp = control_plane_series(&text);

            let mut cp_families = BTreeSet::new();
            let mut filter_used = BTreeSet::new();
            for (name, place) in &used {
                match (cp.get(name), filter.contains(name)) {
                    (Some(_), true) => {
                        panic!("{place}: {name} is both a control-plane series and a filter stat")
                    }
                    (Some((family, kind)), false) => {
                        assert!(
                            suffix_fits(name, family, kind),
                            "{place}: {name} is not a series of the {kind} {family}"
                        );
                        cp_families.insert(family.clone());
                    }
                    (None, true) => {
                        filter_used.insert(name.clone());
                    }
                    (None, false) => panic!(
                        "{place}: {name} is neither in the control plane's /metrics nor a \
                         filter stat (plugin/src/metrics.rs)\n{text}"
                    ),
                }
            }

            // Every control-plane family is on the dashboard.
            let families: BTreeSet<String> = cp.values().map(|(f, _)| f.clone()).collect();
            let missing: Vec<_> = families.difference(&cp_families).collect();
            assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
            // So is every filter stat (a histogram through any of its series).
            let missing: Vec<_> = filter_stats
                .iter()
                .filter(|(_, series)| !series.iter().any(|s| filter_used.contains(s)))
                .map(|(stat, _)| stat)
                .collect();
            assert!(
                missing.is_empty(),
                "filter stats not on the dashboard: {missing:?}"
            );
        }
    })
    .await;
}
