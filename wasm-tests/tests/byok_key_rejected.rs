//! A provider refusing the caller's own (BYOK) key: the client gets a clear 403 naming the
//! provider, in the error envelope, never the provider's body; nothing is charged and the
//! call is not retried on platform credits.

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_wasm_tests::Action;

const PROVIDER_401: &str = r#"{"error":{"message":"Incorrect API key provided: sk-or-v1-*****xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;

fn byok_grant() -> opsgate_core::contract::Grant {
    let mut g = grant();
    g.byok = true;
    g.hold_mc = MilliCredits(0);
    g.provider = "openrouter".into();
    g.upstream.api_key = "sk-or-v1-users-own-key-000000".into();
    g
}

#[test]
fn a_rejected_byok_key_is_reported_naming_the_provider() {
    for status in ["401", "403"] {
        let mut host = gateway();
        let id = forwarded_chat(&mut host, QUICKSTART, byok_grant());
        let a = host
            .response_headers(
                id,
                &[
                    (":status", status),
                    ("content-type", "application/json"),
                    ("content-length", "120"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            a,
            Action::Pause,
            "the provider's answer is held to be replaced"
        );
        host.response_body(id, PROVIDER_401.as_bytes(), true)
            .unwrap();
        assert_eq!(host.response_header(id, ":status").as_deref(), Some("403"));
        assert!(host.response_header(id, "content-length").is_none());
        let body = host.forwarded_response_body(id);
        let err = envelope(&body);
        assert_eq!(err["error"]["code"], "byok_key_rejected");
        assert_eq!(err["error"]["type"], "permission_error");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains("openrouter") && msg.contains(status), "{msg}");
        assert!(
            !String::from_utf8_lossy(&body).contains("sk-or-v1"),
            "no key in the reply"
        );
        host.done(id).unwrap();
        let settled = flush_settlements(&mut host);
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].outcome, Outcome::Failed);
    }
}

// Changed: this was `a_platform_key_refusal_passes_through_unchanged`. The provider's body
// may carry the masked platform key or org ids, and the refusal is the gateway's fault, not
// the caller's: it is replaced with a 502 envelope and settled Failed.
#[test]
fn a_platform_key_refusal_is_replaced_with_a_502() {
    const PLATFORM_401: &str = r#"{"error":{"message":"Incorrect API key provided: platform-*****123. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","code":"invalid_api_key","org":"org-9f8e7d"}}"#;
    for status in ["401", "403"] {
        let mut host = gateway();
        let id = forwarded_chat(&mut host, QUICKSTART, grant());
        let a = host
            .response_headers(
                id,
                &[
                    (":status", status),
                    ("content-type", "application/json"),
                    ("content-length", "190"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(a, Action::Pause, "held to be replaced");
        host.response_body(id, PLATFORM_401.as_bytes(), true)
            .unwrap();
        assert_eq!(host.response_header(id, ":status").as_deref(), Some("502"));
        assert_eq!(
            host.response_header(id, "content-type").as_deref(),
            Some("application/json")
        );
        assert!(host.response_header(id, "content-length").is_none());
        let body = host.forwarded_response_body(id);
        let text = String::from_utf8_lossy(&body).to_string();
        assert!(
            !text.contains("platform-") && !text.contains("org-9f8e7d"),
            "nothing of the provider's body: {text}"
        );
        let err = envelope(&body);
        assert_eq!(err["error"]["code"], "upstream_error");
        assert_eq!(err["error"]["type"], "service_unavailable");
        let msg = err["error"]["message"].as_str().unwrap();
        assert_eq!(
            msg,
            format!(
                "The provider openai refused the gateway's own credentials (HTTP {status}); this is on the gateway's side, not your key. Nothing was charged."
            )
        );
        assert!(host.response_header(id, "x-cost-incurred").is_none());
        host.done(id).unwrap();
        let settled = flush_settlements(&mut host);
        assert_eq!(settled.len(), 1, "{settled:?}");
        assert_eq!(settled[0].outcome, Outcome::Failed);
        assert_eq!(settled[0].usage, Default::default());
        assert_eq!(settled[0].upstream_status.to_string(), status);
    }
}

#[test]
fn a_refusal_ending_with_trailers_is_replaced_too() {
    for (g, status, code) in [
        (byok_grant(), "403", "byok_key_rejected"),
        (grant(), "502", "upstream_error"),
    ] {
        let mut host = gateway();
        let id = forwarded_chat(&mut host, QUICKSTART, g);
        host.response_headers(
            id,
            &[(":status", "401"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
        let a = host
            .response_body(id, PROVIDER_401.as_bytes(), false)
            .unwrap();
        assert_eq!(a, Action::Pause);
        let a = host.response_trailers(id, &[("x-trailer", "1")]).unwrap();
        assert_eq!(a, Action::Continue);
        assert_eq!(host.response_header(id, ":status").as_deref(), Some(status));
        let body = host.forwarded_response_body(id);
        assert!(
            !String::from_utf8_lossy(&body).contains("sk-or-v1"),
            "the provider's body never reaches the client"
        );
        assert_eq!(envelope(&body)["error"]["code"], code);
        host.done(id).unwrap();
        let settled = flush_settlements(&mut host);
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].outcome, Outcome::Failed);
    }
}
