//! Credentials are checked at the edge: requests without a usable credential are answered
//! 401 locally (no callout, nothing forwarded), user API keys go to the control plane as
//! digests, and nothing is decided before the first snapshot has arrived.

mod common;
use common::*;
use opsgate_core::contract::{Endpoint, Principal};
use opsgate_core::credentials::digest;
use opsgate_wasm_tests::{Action, Host, StreamKind};

const CHAT: &str = "/api/v1/llm/chat/completions";

fn chat_with(host: &mut Host, headers: &[(&str, &str)]) -> opsgate_wasm_tests::StreamId {
    let (id, action) = send(host, CHAT, headers, Some(QUICKSTART));
    assert_eq!(action, Action::Pause);
    id
}

#[test]
fn no_credential_is_401_without_a_callout() {
    let mut host = gateway();
    let id = chat_with(&mut host, &[]);
    let (reply, env) = expect_reply(&host, id, 401, "invalid_api_key");
    assert_eq!(env["error"]["type"], "invalid_request_error");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Missing credentials"),
        "{env}"
    );
    assert!(reply.header("retry-after").is_none());
    assert_eq!(
        host.pending_calls().len(),
        0,
        "no callout for a rejected call"
    );
}

#[test]
fn unknown_service_key_is_401_invalid_service_key() {
    let mut host = gateway();
    let key = "sk-unknown-service-key-2025";
    let auth = bearer(key);
    let id = chat_with(&mut host, &[("authorization", &auth)]);
    let (reply, env) = expect_reply(&host, id, 401, "invalid_api_key");
    assert_eq!(env["error"]["message"], "Invalid service key");
    assert!(!reply.body_str().contains(key), "the key is never echoed");
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn malformed_bearer_and_basic_auth_are_401_and_never_echoed() {
    let mut host = gateway();
    let cases = [
        "Bearer not-a-real-secret-value-xyz",
        "Bearer sk-loopnet-service-key-25",
        "Bearer uc_0123",
        "Basic bG9vcG5ldDpzM2NyM3Q=",
        "sk-loopnet-service-key-2025",
        "Bearer",
        "",
    ];
    for auth in cases {
        let id = chat_with(&mut host, &[("authorization", auth)]);
        let (reply, _) = expect_reply(&host, id, 401, "invalid_api_key");
        let secret = auth.split_once(' ').map_or(auth, |(_, s)| s);
        if !secret.is_empty() {
            assert!(
                !reply.body_str().contains(secret),
                "reply echoes {secret:?}: {}",
                reply.body_str()
            );
        }
        host.done(id).unwrap();
    }
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn user_api_key_goes_to_the_control_plane_as_its_digest() {
    let mut host = gateway();
    let auth = bearer(USER_KEY);
    let (id, action) = send(
        &mut host,
        CHAT,
        &[("authorization", &auth)],
        Some(QUICKSTART),
    );
    assert_eq!(action, Action::Pause);
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(&mut host);
    let req = authorize_request(&call);
    assert_eq!(
        req.principal,
        Principal::ApiKey {
            digest: digest(USER_KEY)
        }
    );
    assert_eq!(req.endpoint, Endpoint::ChatCompletions);
    let raw = String::from_utf8_lossy(&call.body);
    assert!(
        !raw.contains(USER_KEY),
        "the key itself never leaves: {raw}"
    );
    assert!(call.headers.iter().all(|(_, v)| !v.contains(USER_KEY)));
    // Not forwarded until the control plane answers.
    assert_eq!(host.resumed(id, StreamKind::Request), 0);
}

#[test]
fn jwt_is_not_enabled_yet() {
    let mut host = gateway();
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl";
    let auth = bearer(jwt);
    let id = chat_with(&mut host, &[("authorization", &auth)]);
    let (reply, _) = expect_reply(&host, id, 401, "invalid_api_key");
    assert!(!reply.body_str().contains(jwt));
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn session_cookie_goes_to_the_control_plane_as_its_digest() {
    let mut host = gateway();
    let id = chat_with(&mut host, &[("cookie", "session_token=s3cr3t-session")]);
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(&mut host);
    assert_eq!(
        authorize_request(&call).principal,
        Principal::Session {
            digest: digest("s3cr3t-session")
        }
    );
    assert!(!String::from_utf8_lossy(&call.body).contains("s3cr3t-session"));
}

#[test]
fn before_the_first_snapshot_a_service_key_gets_503() {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host.configure("", &config()).unwrap());
    // No tick yet: no snapshot.
    let auth = bearer(SERVICE_KEY);
    let id = chat_with(&mut host, &[("authorization", &auth)]);
    let (reply, env) = expect_reply(&host, id, 503, "service_unavailable");
    assert_eq!(env["error"]["type"], "service_unavailable");
    assert!(!reply.body_str().contains(SERVICE_KEY));
    assert_eq!(pending_to(&host, AUTHORIZE), 0);

    // Nor are non-metered calls passed on unverified.
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Pause);
    expect_reply(&host, id, 503, "service_unavailable");

    // A failed first poll changes nothing.
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("a snapshot poll");
    host.fail_call(call.token).unwrap();
    let id = chat_with(&mut host, &[("authorization", &auth)]);
    expect_reply(&host, id, 503, "service_unavailable");

    // Once it arrives, the same key works.
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("the poll is retried on the next tick");
    answer_snapshot(&mut host, &call, &snapshot());
    let (id, _) = send(
        &mut host,
        CHAT,
        &[("authorization", &auth)],
        Some(QUICKSTART),
    );
    assert!(host.local_reply(id).is_none());
    authorize_call(&mut host);
}

#[test]
fn non_metered_calls_are_authenticated_then_passed_on() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Continue, "passed to the control plane");
    assert!(host.local_reply(id).is_none());
    assert_eq!(host.pending_calls().len(), 0, "no callout for non-metered");
    // The control plane checks the credential again itself: it must still be there.
    assert_eq!(host.header(id, "authorization"), Some(auth.clone()));

    // A user key is passed on too (the control plane looks it up).
    let uc = bearer(USER_KEY);
    let (_, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/models",
        &[("authorization", &uc)],
    );
    assert_eq!(action, Action::Continue);

    for bad in [
        bearer("sk-unknown-service-key-2025"),
        "Bearer garbage".to_string(),
        String::new(),
    ] {
        let headers: Vec<(&str, &str)> = if bad.is_empty() {
            vec![]
        } else {
            vec![("authorization", bad.as_str())]
        };
        let (id, action) = send_headers_only(&mut host, "GET", "/api/v1/llm/credits", &headers);
        assert_eq!(action, Action::Pause, "{bad:?}");
        expect_reply(&host, id, 401, "invalid_api_key");
    }
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn paths_outside_the_api_are_not_the_filters_business() {
    let mut host = gateway();
    let (id, action) = send_headers_only(&mut host, "GET", "/healthz", &[]);
    assert_eq!(action, Action::Continue);
    assert!(host.local_reply(id).is_none());
    // A prefix look-alike is not under the API either.
    let (_, action) = send_headers_only(&mut host, "GET", "/api/v1/llmx/credits", &[]);
    assert_eq!(action, Action::Continue);
}
