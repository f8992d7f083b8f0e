//! The snapshot carries the model catalogue: a model it does not know is refused at the
//! edge with 404, without asking the control plane; catalogue models and OpenRouter-style
//! `vendor/model` ids (for callers with their own OpenRouter key) go to authorize.

mod common;
use common::*;
use opsgate_core::contract::{ModelEntry, Snapshot};

fn with_catalogue() -> Snapshot {
    let mut s = snapshot();
    s.version = "v2".into();
    s.models = vec![ModelEntry {
        id: "gpt-4o-mini".into(),
        provider: "openai".into(),
        tier: "professional".into(),
        kind: "chat".into(),
        local: false,
    }];
    s
}

fn gateway_with_catalogue() -> opsgate_wasm_tests::Host {
    let mut host = gateway();
    host.advance(std::time::Duration::from_millis(5_000));
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("a poll");
    answer_snapshot(&mut host, &call, &with_catalogue());
    host
}

#[test]
fn an_unknown_model_is_404_at_the_edge() {
    let mut host = gateway_with_catalogue();
    let (id, _) = chat(
        &mut host,
        SERVICE_KEY,
        r#"{"model":"gpt-9-turbo","messages":[{"role":"user","content":"hi"}]}"#,
    );
    let reply = host.local_reply(id).expect("answered at the edge");
    assert_eq!(reply.status, 404);
    let err = envelope(&reply.body);
    assert_eq!(err["error"]["code"], "not_found");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-9-turbo"));
    assert_eq!(pending_to(&host, "/internal/v1/authorize"), 0, "no callout");
}

#[test]
fn known_and_vendor_models_are_authorized() {
    let mut host = gateway_with_catalogue();
    for model in ["gpt-4o-mini", "meta-llama/llama-3.1-405b-instruct", "auto"] {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let (id, _) = chat(&mut host, SERVICE_KEY, &body);
        assert!(host.local_reply(id).is_none(), "{model}");
        authorize_call(&mut host);
    }
}

#[test]
fn without_a_catalogue_nothing_is_refused_at_the_edge() {
    let mut host = gateway();
    let (id, _) = chat(
        &mut host,
        SERVICE_KEY,
        r#"{"model":"gpt-9-turbo","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert!(host.local_reply(id).is_none());
    authorize_call(&mut host);
}
