//! The OpenAPI document covers the control plane exactly: every routed path and method has
//! an entry, and every entry (but the gateway's, which Envoy serves) is routed. Methods are
//! found by asking the app: a method a path does not route answers 405.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use opsgate_control_plane::app;
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::http::{openapi, route_paths};
use serde_json::Value;
use std::collections::BTreeSet;
use tower::ServiceExt;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// A concrete path for a template: every `{param}` (and `{*rest}`) becomes `x`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// OpenAPI writes a catch-all `{*id}` as `{id}`.
fn spec_path(template: &str) -> String {
    template.replace("{*", "{")
}

#[tokio::test]
async fn every_route_has_a_spec_entry_and_every_entry_a_route() {
    let t = TestDb::sqlite().await;
    let state = state(&t.db, &ManualClock::at(1_800_000_000), catalogue());
    let get = |path: &str| {
        let app = app(state.clone());
        let req = Request::get(path).body(Body::empty()).expect("request");
        async move {
            let resp = app.oneshot(req).await.expect("response");
            let status = resp.status();
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, ctype, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, ctype, text) = get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");

    // What the app routes, by asking it.
    let mut routed = BTreeSet::new();
    for template in route_paths() {
        for method in METHODS {
            let req = Request::builder()
                .method(method.clone())
                .uri(concrete(template))
                .body(Body::empty())
                .expect("request");
            let resp = app(state.clone()).oneshot(req).await.expect("response");
            if resp.status() != StatusCode::METHOD_NOT_ALLOWED {
                routed.insert((spec_path(template), method.as_str().to_ascii_lowercase()));
            }
        }
    }
    assert!(routed.len() > 30, "{routed:?}");

    // What the document lists (the gateway's paths are Envoy's, not routed here).
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let gateway = op["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == openapi::GATEWAY_TAG));
            if !gateway {
                documented.insert((path.clone(), method.clone()));
            }
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}"
            );
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes without a spec entry: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "spec entries without a route: {unrouted:?}"
    );

    // Every admin route the CLI's counterpart needs is there.
    for (path, method) in [
        ("/admin/v1/orgs", "post"),
        ("/admin/v1/orgs/{id}/grants", "post"),
        ("/admin/v1/users/{id}/api-keys", "post"),
        ("/admin/v1/service-keys", "delete"),
        ("/admin/v1/provider-keys/{provider}", "put"),
    ] {
        assert!(
            documented.contains(&(path.to_string(), method.to_string())),
            "{method} {path}"
        );
    }

    // Every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema ref");
        assert!(schemas.contains_key(name), "dangling {r}");
    }
    // The admin API's Organization is what it serialises: credits and *_mc.
    let org = &schemas["Organization"]["properties"];
    for f in ["credits_total", "credits_total_mc", "plan"] {
        assert!(org.get(f).is_some(), "Organization.{f}: {org}");
    }
    for scheme in ["admin_token", "api_key", "jwt", "session", "internal_token"] {
        assert!(
            doc["components"]["securitySchemes"].get(scheme).is_some(),
            "{scheme}"
        );
    }

    // The page renders the same document.
    let (status, ctype, page) = get("/docs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    for needle in [
        "/admin/v1/orgs/{id}/grants",
        "/api/v1/llm/chat/completions",
        "admin_token",
    ] {
        assert!(page.contains(needle), "{needle}");
    }
    t.close().await;
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
