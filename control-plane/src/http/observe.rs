//! One log line and one latency observation per request.
//!
//! The line carries the method, the route's template (never the raw path: it may hold a
//! key id or anything a client typed), the status, the latency, the request id the filter
//! generated (`x-request-id`, also on the provider's request and in Envoy's access log), and
//! who called: the caller's kind and id and their organisation, which the identity
//! extractors and the internal handlers note in [`Who`] as they learn them. Never a
//! credential, a key or a body.

use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Who the request turned out to be from; filled in by whoever learns it.
#[derive(Clone, Default)]
pub struct Who(Arc<Mutex<Caller>>);

#[derive(Default)]
struct Caller {
    kind: &'static str,
    id: String,
    org: String,
    /// The calls a request acted on when it carries no one call's `x-request-id`.
    calls: Option<Calls>,
}

/// The call ids of a settlement batch, as the request line writes them.
struct Calls {
    ids: String,
    count: usize,
}

impl Who {
    /// Notes the caller (kind: `service`, `user`, `admin`, `filter`, …).
    pub fn note(&self, kind: &'static str, id: &str, org: &str) {
        if let Ok(mut c) = self.0.lock() {
            c.kind = kind;
            c.id = id.to_string();
            c.org = org.to_string();
        }
    }

    /// Notes the calls a request acts on when it carries no one call's `x-request-id` (a
    /// batch of settlements, each hold id its call's id): the request line names them all in
    /// `request_ids` (comma separated; an id that is not loggable is written `-`) and their
    /// number in `settlements`, so a search for a call's id finds its settlement.
    pub fn calls<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let ids: Vec<&str> = ids
            .map(|id| if loggable_id(id.as_bytes()) { id } else { "-" })
            .collect();
        if let Ok(mut c) = self.0.lock() {
            c.calls = Some(Calls {
                ids: ids.join(","),
                count: ids.len(),
            });
        }
    }

    /// Notes the caller's kind only (the filter, an admin token).
    pub fn kind(&self, kind: &'static str) {
        if let Ok(mut c) = self.0.lock() {
            c.kind = kind;
        }
    }

    /// The `Who` of a request (a fresh one outside the middleware, e.g. in unit tests).
    pub fn of(extensions: &axum::http::Extensions) -> Who {
        extensions.get::<Who>().cloned().unwrap_or_default()
    }
}

/// A request id is logged only when it looks like one: short, and printable ASCII.
fn request_id(req: &Request) -> Option<String> {
    let v = req.headers().get("x-request-id")?.as_bytes();
    loggable_id(v).then(|| String::from_utf8_lossy(v).into_owned())
}

/// Whether an id may go into a log line as it is: short, and printable ASCII (no spaces, no
/// line breaks, nothing a text log could be forged with).
fn loggable_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

pub(super) async fn observe(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let request_id = request_id(&req);
    let who = Who::default();
    req.extensions_mut().insert(who.clone());
    let response = next.run(req).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.route(&method, &route, status, took);
    let caller = who.0.lock().map(|mut c| {
        let calls = c.calls.take();
        (c.kind, c.id.clone(), c.org.clone(), calls)
    });
    let (caller_kind, caller_id, org, calls) = caller.unwrap_or_default();
    // Written only when noted (`Who::calls`).
    let request_ids = calls.as_ref().map(|c| c.ids.as_str());
    let settlements = calls.as_ref().map(|c| c.count);
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "opsgate::request",
                $level,
                method = %method,
                route = %route,
                status,
                latency_ms = took.as_secs_f64() * 1000.0,
                request_id = request_id.as_deref().unwrap_or(""),
                caller_kind,
                caller_id = %caller_id,
                org = %org,
                request_ids,
                settlements,
                "request"
            )
        };
    }
    // Probes and scrapes (Envoy's health check every second, Prometheus) only at debug.
    if QUIET_ROUTES.contains(&route.as_str()) && status < 500 {
        line!(tracing::Level::DEBUG);
    } else {
        line!(tracing::Level::INFO);
    }
    response
}

/// Routes whose successful requests are logged at debug level only.
const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
