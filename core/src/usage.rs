//! Reading what a call consumed from provider responses: plain JSON bodies, and SSE streams
//! scanned chunk by chunk (with a hook to add the gateway's own event before `[DONE]`).

use crate::pricing::Usage;
use serde_json::Value;

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    if !u.is_object() {
        return None;
    }
    Some(Usage {
        prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        images: 0,
    })
}

/// Sets `v`'s `model` to `model` (the catalogue id the client can send back) when the
/// provider named it otherwise; whether it changed.
fn rename_model(v: &mut Value, model: &str) -> bool {
    match v.as_object_mut() {
        Some(obj) if matches!(obj.get("model"), Some(Value::String(m)) if m != model) => {
            obj.insert("model".into(), Value::String(model.into()));
            true
        }
        _ => false,
    }
}

/// A non-streamed chat completion body, read once: its usage, and the body as the client
/// gets it — with `model` set to `model` (the catalogue id the client can send back) when
/// the provider named it otherwise (`None`: forward it unchanged).
pub fn chat_response(body: &[u8], model: &str) -> (Option<Usage>, Option<Vec<u8>>) {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let usage = usage_of(&v);
    let renamed = rename_model(&mut v, model)
        .then(|| serde_json::to_vec(&v).ok())
        .flatten();
    (usage, renamed)
}

/// An embeddings body, read for what the call is charged: `usage.prompt_tokens` (or, without
/// it, `usage.total_tokens` — an embedding has no completion), and the body as the client gets
/// it, with `model` set to the catalogue id when the provider named it otherwise (`None`:
/// forward it unchanged). The vectors can be large: they are skipped, not parsed, unless the
/// model has to be renamed.
pub fn embeddings_response(body: &[u8], model: &str) -> (Option<Usage>, Option<Vec<u8>>) {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        model: Option<Value>,
        #[serde(default)]
        usage: Option<Value>,
    }
    let Ok(head) = serde_json::from_slice::<Head>(body) else {
        return (None, None);
    };
    let usage = head.usage.as_ref().and_then(|u| {
        let tokens = u
            .get("prompt_tokens")
            .and_then(Value::as_u64)
            .or_else(|| u.get("total_tokens").and_then(Value::as_u64))?;
        Some(Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        })
    });
    let renamed = match head.model {
        Some(Value::String(m)) if m != model => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|mut v| {
                rename_model(&mut v, model)
                    .then(|| serde_json::to_vec(&v).ok())
                    .flatten()
            }),
        _ => None,
    };
    (usage, renamed)
}

/// Images actually returned by an image generation body.
pub fn images_returned(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(v.get("data")?.as_array()?.len() as u64)
}

/// Scans an SSE stream as it passes. Complete lines are released for forwarding; an
/// incomplete trailing line is held back until its end arrives, so the gateway can insert
/// an event of its own right before `data: [DONE]`.
#[derive(Debug, Default)]
pub struct SseMeter {
    carry: Vec<u8>,
    /// The usage from the provider's final chunk, once seen.
    pub usage: Option<Usage>,
    /// `data: [DONE]` has been seen.
    pub done: bool,
    /// Bytes generated so far (content, tool-call arguments, reasoning… of every choice): a
    /// bound for the completion tokens of a cut-off stream.
    pub content_bytes: u64,
    /// Content chunks seen.
    pub content_chunks: u64,
    /// Drop the provider's usage-only chunk (`"choices": []`): the gateway asked for it, the
    /// client did not, and clients that did not ask do not expect a chunk without choices.
    pub drop_usage_chunk: bool,
    /// The catalogue id every chunk's `model` reports (the provider's id is replaced).
    pub model: Option<String>,
    skip_blank: bool,
}

impl SseMeter {
    /// Feeds one chunk of the stream; returns the bytes to forward now. `before_done` is
    /// called once, when the `[DONE]` line is reached, and its bytes are forwarded before it.
    /// At `end_of_stream` everything held back is released.
    pub fn process(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        before_done: impl FnMut(&SseMeter) -> Vec<u8>,
    ) -> Vec<u8> {
        self.process_annotated(chunk, end_of_stream, before_done, |_| None)
    }

    /// As [`SseMeter::process`]; besides, when the provider's usage chunk is passed on (the
    /// client asked for it), `annotate` may return a JSON value that is added to that chunk
    /// as its `opsgate` field — a data event SDKs parse like any usage chunk.
    pub fn process_annotated(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        mut before_done: impl FnMut(&SseMeter) -> Vec<u8>,
        mut annotate: impl FnMut(&Usage) -> Option<Value>,
    ) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let cut = if end_of_stream {
            self.carry.len()
        } else {
            match self.carry.iter().rposition(|b| *b == b'\n') {
                Some(i) => i.saturating_add(1),
                None => return Vec::new(),
            }
        };
        let ready: Vec<u8> = self.carry.drain(..cut).collect();
        let mut out = Vec::with_capacity(ready.len().saturating_add(64));
        for line in ready.split_inclusive(|b| *b == b'\n') {
            let text = trim_line(line);
            if self.skip_blank {
                self.skip_blank = false;
                if text.is_empty() {
                    continue;
                }
            }
            if let Some(data) = text.strip_prefix(b"data:") {
                let data = trim_ascii(data);
                if data == b"[DONE]" {
                    if !self.done {
                        self.done = true;
                        out.extend_from_slice(&before_done(self));
                    }
                } else if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
                    let renamed = self
                        .model
                        .as_deref()
                        .is_some_and(|model| rename_model(&mut v, model));
                    if let Some(u) = usage_of(&v) {
                        self.usage = Some(u);
                        let no_choices = v
                            .get("choices")
                            .and_then(Value::as_array)
                            .is_some_and(Vec::is_empty);
                        if self.drop_usage_chunk && no_choices {
                            self.skip_blank = true;
                            continue;
                        }
                        if let (Some(extra), Some(obj)) = (annotate(&u), v.as_object_mut()) {
                            obj.insert("opsgate".into(), extra);
                            out.extend_from_slice(b"data: ");
                            out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                            out.push(b'\n');
                            continue;
                        }
                    }
                    let generated = delta_bytes(&v);
                    if generated > 0 {
                        self.content_bytes = self.content_bytes.saturating_add(generated);
                        self.content_chunks = self.content_chunks.saturating_add(1);
                    }
                    if renamed {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                        out.push(b'\n');
                        continue;
                    }
                }
            }
            out.extend_from_slice(line);
        }
        out
    }

    /// What to charge when the stream ended without a usage chunk (client gone, provider
    /// cut off): the prompt bound and the content seen, each byte counted as a token at most.
    pub fn partial_usage(&self, prompt_bytes: u64) -> Usage {
        self.usage.unwrap_or(Usage {
            prompt_tokens: prompt_bytes,
            completion_tokens: self.content_bytes.max(self.content_chunks),
            images: 0,
        })
    }
}

/// The bytes a chunk generated: every string in every choice's `delta` except its `role`
/// (content, refusal, reasoning, tool-call names and arguments).
fn delta_bytes(chunk: &Value) -> u64 {
    fn strings(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(a) => a.iter().map(strings).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "role" | "type" | "id"))
                .map(|(_, v)| strings(v))
                .sum(),
            _ => 0,
        }
    }
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, |choices| {
            choices
                .iter()
                .filter_map(|c| c.get("delta"))
                .map(strings)
                .sum()
        })
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let Some((last, rest)) = l.split_last() {
        if *last == b'\n' || *last == b'\r' {
            l = rest;
        } else {
            break;
        }
    }
    l
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e.saturating_add(1));
    s.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_usage() {
        let u = chat_response(
            br#"{"usage":{"prompt_tokens":45,"completion_tokens":23,"total_tokens":68}}"#,
            "m",
        )
        .0
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (45, 23));
        assert_eq!(chat_response(b"{}", "m").0, None);
        assert_eq!(chat_response(b"garbage", "m").0, None);
        assert_eq!(images_returned(br#"{"data":[{},{}]}"#), Some(2));
    }

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn embeddings_are_charged_their_input_tokens_under_the_catalogue_id() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small-2024","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let (usage, renamed) = embeddings_response(body, "text-embedding-3-small");
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 8,
                completion_tokens: 0,
                images: 0
            })
        );
        let v: Value = serde_json::from_slice(&renamed.unwrap()).unwrap();
        assert_eq!(v["model"], "text-embedding-3-small");
        assert_eq!(v["data"][0]["embedding"], serde_json::json!([0.1, -0.2]));
        assert_eq!(v["usage"]["prompt_tokens"], 8);
        // Already the catalogue id: forwarded byte for byte.
        let same = br#"{"data":[],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        let (usage, renamed) = embeddings_response(same, "m");
        assert_eq!(usage.map(|u| u.prompt_tokens), Some(3));
        assert!(renamed.is_none());
        // A completion count a provider might add is not an embedding's: never charged.
        let odd = br#"{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":50}}"#;
        assert_eq!(
            embeddings_response(odd, "m").0.map(|u| u.completion_tokens),
            Some(0)
        );
        // Only total_tokens: that is the input.
        let total = br#"{"model":"m","usage":{"total_tokens":5}}"#;
        assert_eq!(
            embeddings_response(total, "m").0.map(|u| u.prompt_tokens),
            Some(5)
        );
        // No readable usage: None (the caller charges the bound held for).
        for body in [
            &br#"{"model":"m","data":[]}"#[..],
            br#"{"model":"m","usage":{}}"#,
            br#"{"model":"m","usage":{"prompt_tokens":-1}}"#,
            br#"{"model":"m","usage":"lots"}"#,
            br#"{"model":"m","data":[{"embedding":[0.1"#,
            b"not json",
            b"[1,2]",
        ] {
            assert_eq!(embeddings_response(body, "m").0, None, "{body:?}");
        }
    }

    #[test]
    fn stream_usage_and_injection_before_done_across_any_split() {
        for split in 1..STREAM.len() {
            let mut m = SseMeter::default();
            let (a, b) = STREAM.as_bytes().split_at(split);
            let mut out = m.process(a, false, |_| b"data: {\"opsgate\":1}\n\n".to_vec());
            out.extend(m.process(b, true, |s| {
                assert!(s.usage.is_some());
                b"data: {\"opsgate\":1}\n\n".to_vec()
            }));
            let text = String::from_utf8(out).unwrap();
            let expected = STREAM.replace("data: [DONE]", "data: {\"opsgate\":1}\n\ndata: [DONE]");
            assert_eq!(text, expected, "split at {split}");
            assert_eq!(m.usage.map(|u| u.completion_tokens), Some(2));
            assert!(m.done);
            assert_eq!(m.content_bytes, 8);
        }
    }

    #[test]
    fn the_client_sees_the_catalogue_id_as_the_model() {
        let body = br#"{"id":"c1","model":"openai/gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let (usage, out) = chat_response(body, "gpt-4o-mini");
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 4))
        );
        let out = out.expect("renamed");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["id"].as_str()),
            (Some("gpt-4o-mini"), Some("c1"))
        );
        assert_eq!(
            chat_response(&out, "gpt-4o-mini").1,
            None,
            "already the catalogue id"
        );
        assert_eq!(chat_response(b"[1]", "x"), (None, None));
        assert_eq!(chat_response(b"garbage", "x"), (None, None));
        assert_eq!(
            chat_response(br#"{"data":[]}"#, "x").1,
            None,
            "no model field"
        );

        // In a stream, every chunk, wherever the stream is split.
        let stream = "data: {\"model\":\"qwen2.5:32b\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"model\":\"qwen2.5:32b\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
data: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut m = SseMeter {
                model: Some("qwen-32b-local".into()),
                ..SseMeter::default()
            };
            let (a, b) = stream.as_bytes().split_at(split);
            let mut out = m.process(a, false, |_| Vec::new());
            out.extend(m.process(b, true, |_| Vec::new()));
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("qwen2.5:32b"), "{text}");
            assert_eq!(
                text.matches("\"model\":\"qwen-32b-local\"").count(),
                2,
                "{text}"
            );
            assert_eq!(m.usage.map(|u| u.completion_tokens), Some(1));
            assert_eq!(m.content_bytes, 2);
        }
    }

    #[test]
    fn usage_chunk_is_dropped_when_the_client_did_not_ask() {
        let mut m = SseMeter {
            drop_usage_chunk: true,
            ..SseMeter::default()
        };
        let out = m.process(STREAM.as_bytes(), true, |_| b": cost\n\n".to_vec());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("usage"), "{text}");
        assert!(text.ends_with(": cost\n\ndata: [DONE]\n\n"), "{text}");
        assert_eq!(m.usage.map(|u| u.prompt_tokens), Some(9));
    }

    #[test]
    fn the_usage_chunk_can_carry_the_cost() {
        let mut m = SseMeter::default();
        let out = m.process_annotated(
            STREAM.as_bytes(),
            true,
            |_| Vec::new(),
            |u| Some(serde_json::json!({"cost": u.prompt_tokens + u.completion_tokens})),
        );
        let text = String::from_utf8(out).unwrap();
        let usage_line = text.lines().find(|l| l.contains("\"usage\"")).unwrap();
        let v: Value = serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
        assert_eq!(v["opsgate"]["cost"], 11);
        assert_eq!(v["usage"]["completion_tokens"], 2);
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        // Event framing is intact: every data line is followed by a blank line.
        assert_eq!(text.matches("data: ").count(), text.matches("\n\n").count());
    }

    #[test]
    fn tool_calls_and_every_choice_count_towards_a_cut_off_stream() {
        let mut m = SseMeter::default();
        let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]}},{\"index\":1,\"delta\":{\"content\":\"xyz\"}}]}\n\n";
        m.process(chunk.as_bytes(), false, |_| Vec::new());
        // "f" + "{\"a\":1}" (7 bytes) + "xyz"
        assert_eq!(m.content_bytes, 1 + 7 + 3);
        assert_eq!(m.partial_usage(10).completion_tokens, 11);
    }

    #[test]
    fn cut_off_stream_is_bounded_by_content_seen() {
        let mut m = SseMeter::default();
        let first = STREAM.split("\n\n").next().unwrap();
        m.process(format!("{first}\n\n").as_bytes(), false, |_| Vec::new());
        let u = m.partial_usage(120);
        assert_eq!(u.prompt_tokens, 120);
        assert_eq!(u.completion_tokens, 2);
        assert!(!m.done);
    }
}
