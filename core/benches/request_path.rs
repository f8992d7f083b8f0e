//! The filter's per-request pure work, against parsing the same body alone (the baseline
//! measured in the same run): validate and parse the chat request, rewrite it for the
//! provider, read the usage from the provider's answer, price it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use opsgate_core::plan::PowerLevel;
use opsgate_core::pricing::{Price, RateCard};
use opsgate_core::request::{parse_chat, rewrite_for_provider};
use opsgate_core::usage::chat_response;

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant specializing in company data extraction."},{"role":"user","content":"Extract the company name, industry, and location from this text: Acme Corp is a technology company headquartered in San Francisco, CA, building developer tools."}],"temperature":0.7,"max_tokens":500,"power_level":"eco","task_type":"rag"}"#;
const REPLY: &[u8] = br#"{"id":"chatcmpl-abc123","object":"chat.completion","created":1699564800,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Company Name: Acme Corp\nIndustry: Technology\nLocation: San Francisco, CA"},"finish_reason":"stop"}],"usage":{"prompt_tokens":45,"completion_tokens":23,"total_tokens":68}}"#;

fn bench(c: &mut Criterion) {
    let rate = RateCard {
        price: Price {
            input_per_million: 150_000,
            output_per_million: 600_000,
            per_image: 0,
        },
        power_level: PowerLevel::Eco,
        markup_percent: 10,
    };
    let mut g = c.benchmark_group("request_path");
    g.bench_function("baseline: parse the body as JSON", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(BODY)).ok())
    });
    g.bench_function("opsgate: parse, rewrite, meter, price", |b| {
        b.iter(|| {
            let (map, req) = parse_chat(black_box(BODY), Some("balanced")).ok()?;
            let out = rewrite_for_provider(
                map,
                "gpt-4o-mini-2024-07-18",
                req.max_tokens,
                req.stream,
                Default::default(),
                true,
            );
            // As the filter reads a plain answer: once, for its usage and its model.
            let (usage, _) = chat_response(black_box(REPLY), "gpt-4o-mini");
            let usage = usage?;
            Some((out.len(), rate.cost(&usage)))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
