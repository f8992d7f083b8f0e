//! A bounded, seeded, reproducible run of random requests: random header names and bytes,
//! random paths, random bodies in random chunks, random callout answers and responses. The VM
//! must never trap, and every local reply must be a JSON error envelope.
//!
//! `OPSGATE_HOSTILE_CASES` sets the number of cases (default 2,000, what `scripts/test` runs);
//! `OPSGATE_HOSTILE_SEED` the seed (default fixed). A failure names the seed and case.

mod common;
use common::*;
use opsgate_wasm_tests::{HeaderMap, Host, StreamId};

/// xorshift64*: small, deterministic, good enough to pick inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const PATHS: [&str; 10] = [
    "/api/v1/llm/chat/completions",
    "/api/v1/llm/images/generations",
    "/api/v1/llm/embeddings",
    "/api/v1/llm/models",
    "/api/v1/llm/credits",
    "/api/v1/llm/",
    "/api/v1/llm",
    "/",
    "/api/v1/llm/chat/completions?x=\u{e9}",
    "/internal/v1/settle",
];

const NAMES: [&str; 12] = [
    "authorization",
    "cookie",
    "x-power-level",
    "origin",
    "sec-fetch-site",
    "content-type",
    "content-length",
    "access-control-request-method",
    "access-control-request-headers",
    "x-opsgate-cluster",
    "openai-organization",
    "x-random",
];

const STATUSES: [&[u8]; 4] = [b"200", b"503", b"401", b"2\xff"];
const CONTENT_TYPES: [&[u8]; 4] = [
    b"application/json",
    b"text/event-stream",
    b"text/plain",
    b"\xe9",
];

const METHODS: [&str; 5] = ["POST", "GET", "OPTIONS", "DELETE", "P\u{e9}ST"];

fn value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => bearer(SERVICE_KEY).into_bytes(),
        1 => format!("Bearer {USER_KEY}").into_bytes(),
        2 => b"session_token=abc; other=\xe9".to_vec(),
        3 => b"eco".to_vec(),
        4 => b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig".to_vec(),
        _ => rng.bytes(40),
    }
}

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => QUICKSTART.as_bytes().to_vec(),
        4 => br#"{"model":"text-embedding-3-small","input":["a",[1,2]],"dimensions":-1}"#.to_vec(),
        5 => br#"{"input":[[4294967296],[0]],"encoding_format":"base64"}"#.to_vec(),
        1 => {
            let mut b = QUICKSTART.as_bytes().to_vec();
            let cut = rng.below(b.len());
            b.truncate(cut);
            b
        }
        2 => br#"{"model":"gpt-4o","messages":[{"role":"user"}],"store":true,"service_tier":"priority"}"#.to_vec(),
        _ => rng.bytes(300),
    }
}

fn check_reply(host: &Host, id: StreamId, what: &str) {
    assert!(
        host.failed().is_none(),
        "{what}: the VM trapped: {:?}",
        host.failed()
    );
    if let Some(reply) = host.local_reply(id) {
        if reply.status == 204 {
            return; // an allowed CORS preflight
        }
        let env: serde_json::Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{what}: reply {} is not JSON ({e})", reply.status));
        assert!(env["error"]["message"].is_string(), "{what}: {env}");
        assert!(env["error"]["code"].is_string(), "{what}: {env}");
    }
}

/// What became of a case: replied locally, forwarded to a provider, or passed on.
#[derive(Debug, Default)]
struct Tally {
    replied: usize,
    forwarded: usize,
    passed: usize,
}

fn one_case(host: &mut Host, rng: &mut Rng, what: &str, tally: &mut Tally) {
    let id = host.new_stream().unwrap();
    // Half the cases start from a good metered call and add hostile headers to it; the
    // rest are random throughout.
    let valid = rng.chance(50);
    let (method, path) = if valid {
        ("POST", PATHS[0])
    } else {
        (*rng.pick(&METHODS), *rng.pick(&PATHS))
    };
    let mut h = HeaderMap::from_pairs(&[
        (":method", method),
        (":path", path),
        (":authority", "gateway"),
    ]);
    if valid {
        h.add(b"authorization", bearer(SERVICE_KEY).as_bytes());
    }
    for _ in 0..rng.below(if valid { 4 } else { 8 }) {
        let v = value(rng);
        if rng.chance(80) {
            h.add(rng.pick(&NAMES).as_bytes(), &v);
        } else {
            h.add(&rng.bytes(12), &v);
        }
    }
    let with_body = valid || rng.chance(80);
    host.request_headers_map(id, h, !with_body).unwrap();
    check_reply(host, id, what);
    if with_body && host.local_reply(id).is_none() {
        let b = if valid && rng.chance(60) {
            QUICKSTART.as_bytes().to_vec()
        } else {
            body(rng)
        };
        let mut chunks = b.chunks(1 + rng.below(64)).peekable();
        if chunks.peek().is_none() {
            host.request_body(id, b"", true).unwrap();
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            if last && rng.chance(20) {
                host.request_body(id, c, false).unwrap();
                let mut t = HeaderMap::new();
                t.add(b"x-t", &rng.bytes(5));
                host.request_trailers_map(id, t).unwrap();
            } else {
                host.request_body(id, c, last).unwrap();
            }
            if host.local_reply(id).is_some() {
                break;
            }
        }
        check_reply(host, id, what);
    }
    // Answer whatever the filter asked the control plane, in a random way.
    while let Some(call) = host.take_call(|c| header(&c.headers, ":path") == Some(AUTHORIZE)) {
        match rng.below(4) {
            0 => allow(host, &call, grant()),
            1 => host.fail_call(call.token).unwrap(),
            2 => {
                let mut h = HeaderMap::new();
                h.add(b":status", &rng.bytes(4));
                host.respond_map(call.token, h, &rng.bytes(50)).unwrap();
            }
            _ => deny_with(host, &call, opsgate_core::ErrorKind::QuotaExceeded, "no"),
        }
        check_reply(host, id, what);
    }
    if host.local_reply(id).is_some() {
        tally.replied += 1;
    } else if host.header(id, "x-opsgate-cluster").is_some() {
        tally.forwarded += 1;
    } else {
        tally.passed += 1;
    }
    // A provider answer, when the call was forwarded.
    if host.local_reply(id).is_none() && host.header(id, "x-opsgate-cluster").is_some() {
        let mut h = HeaderMap::new();
        let status = STATUSES[rng.below(STATUSES.len())];
        h.add(b":status", status);
        let content_type = CONTENT_TYPES[rng.below(CONTENT_TYPES.len())];
        h.add(b"content-type", content_type);
        let eos = rng.chance(10);
        if host.response_headers_map(id, h, eos).is_ok() && !eos {
            let b = match rng.below(3) {
                0 => br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#.to_vec(),
                1 => b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n".to_vec(),
                _ => rng.bytes(200),
            };
            host.response_body(id, &b, true).unwrap();
        }
        check_reply(host, id, what);
    }
    host.done(id).unwrap();
    assert!(host.failed().is_none(), "{what}: trapped at done");
}

#[test]
fn random_requests_never_trap_and_every_reply_is_an_envelope() {
    let cases: usize = std::env::var("OPSGATE_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("OPSGATE_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0b5_6a7e_2026);
    let mut rng = Rng(seed | 1);
    let mut host = gateway();
    let mut tally = Tally::default();
    for case in 0..cases {
        let what = format!("seed {seed} case {case}");
        one_case(&mut host, &mut rng, &what, &mut tally);
        if case % 50 == 49 {
            // Settle batches and polls go out and are answered, as in a live worker.
            host.advance(std::time::Duration::from_millis(300));
            host.tick().unwrap();
            while let Some(call) = settle_call(&mut host) {
                ack_settle(&mut host, &call);
            }
            while let Some(call) = snapshot_call(&mut host) {
                answer_snapshot(&mut host, &call, &snapshot());
            }
        }
    }
    // The run reached every outcome, not just early refusals.
    eprintln!("{cases} cases: {tally:?}");
    if cases >= 1_000 {
        for (n, what) in [
            (tally.replied, "replied"),
            (tally.forwarded, "forwarded"),
            (tally.passed, "passed"),
        ] {
            assert!(n >= cases / 50, "only {n} cases {what}: {tally:?}");
        }
    }
    // Still serving.
    forwarded_chat(&mut host, QUICKSTART, grant());
}
