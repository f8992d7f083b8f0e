//! When the client gave no `max_tokens` and the balance could not cover the model's whole
//! output, the control plane chooses a bound (`max_tokens_chosen`): it is written into the
//! provider's request and told to the client in `X-Max-Tokens-Applied`. A bound the client
//! chose itself is never reported as applied.

mod common;
use common::*;

#[test]
fn a_chosen_bound_is_written_upstream_and_told_to_the_client() {
    let mut host = gateway();
    let mut g = grant();
    g.max_tokens = Some(1_416);
    g.max_tokens_chosen = true;
    let id = forwarded_chat(&mut host, QUICKSTART, g);
    assert_eq!(forwarded_json(&host, id)["max_tokens"], 1_416);
    provider_answers(&mut host, id, 5, 7);
    assert_eq!(
        host.response_header(id, "x-max-tokens-applied").as_deref(),
        Some("1416")
    );
}

#[test]
fn the_clients_own_bound_is_not_reported_as_applied() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    provider_answers(&mut host, id, 5, 7);
    assert!(host.response_header(id, "x-max-tokens-applied").is_none());
}
