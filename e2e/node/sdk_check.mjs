// Drives the official OpenAI Node SDK through the gateway, unchanged but for baseURL and
// apiKey; prints what it saw as one JSON object for e2e/test_node_sdk.py to check.
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const out = {};

const { data: chat, response } = await client.chat.completions
  .create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello from Node" }] })
  .withResponse();
out.chat = {
  content: chat.choices[0].message.content,
  model: chat.model,
  usage: chat.usage,
  cost: response.headers.get("x-cost-incurred"),
  requestId: response.headers.get("x-request-id"),
};

const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Stream from Node" }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks += 1;
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text, chunks, usage };

const model = await client.models.retrieve("gpt-4o-mini");
out.model = { id: model.id, object: model.object };

const emb = await client.embeddings.create({ model: "text-embedding-3-small", input: ["one", "two words"] });
out.embeddings = {
  count: emb.data.length,
  dims: emb.data[0].embedding.length,
  isNumbers: emb.data.every((d) => d.embedding.every((x) => typeof x === "number")),
  usage: emb.usage,
  model: emb.model,
};

try {
  await new OpenAI({ baseURL, apiKey: "sk-nobody-service-key-2025", maxRetries: 0 }).chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "x" }],
  });
  out.unauthorized = null;
} catch (e) {
  out.unauthorized = { status: e.status, code: e.code, name: e.constructor.name };
}

console.log(JSON.stringify(out));
