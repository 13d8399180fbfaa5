// The official `openai` Node SDK against a running Portico (started by tools/openai_sdk_check.py,
// which runs this when `node` can require('openai'), e.g. with NODE_PATH set): a tool-call round
// trip streamed and not (the built-in echo), models.list(), embeddings.create(), and the error
// classes. Usage: node tools/openai_node_check.cjs BASE_URL TOKEN LIMITED_TOKEN
const OpenAI = require("openai");
const assert = require("assert");

const [base, token, limitedToken] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: token, maxRetries: 0 });
const tools = [{ type: "function", function: { name: "weather",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];

async function roundTrip(stream) {
  const messages = [{ role: "user", content: "Oslo" }];
  let call;
  if (stream) {
    const calls = {};
    let finish = null;
    for await (const part of await client.chat.completions.create({ model: "echo", messages, tools, stream: true })) {
      for (const choice of part.choices) {
        finish = choice.finish_reason || finish;
        for (const delta of choice.delta.tool_calls || []) {
          const c = (calls[delta.index] ||= { id: null, type: "function", function: { name: "", arguments: "" } });
          c.id = delta.id || c.id;
          c.function.name += (delta.function && delta.function.name) || "";
          c.function.arguments += (delta.function && delta.function.arguments) || "";
        }
      }
    }
    assert.strictEqual(finish, "tool_calls");
    call = calls[0];
  } else {
    const asked = await client.chat.completions.create({ model: "echo", messages, tools });
    assert.strictEqual(asked.choices[0].finish_reason, "tool_calls");
    call = asked.choices[0].message.tool_calls[0];
  }
  assert.strictEqual(call.function.name, "weather");
  assert.deepStrictEqual(JSON.parse(call.function.arguments), { city: "Oslo" });
  messages.push({ role: "assistant", content: null, tool_calls: [call] },
    { role: "tool", tool_call_id: call.id, content: "rain, 12 C" });
  let text = "";
  if (stream) {
    for await (const part of await client.chat.completions.create({ model: "echo", messages, tools, stream: true })) {
      text += (part.choices[0] && part.choices[0].delta.content) || "";
    }
  } else {
    text = (await client.chat.completions.create({ model: "echo", messages, tools })).choices[0].message.content;
  }
  assert.strictEqual(text, "rain, 12 C");
}

async function raises(kind, status, call) {
  try {
    await call();
  } catch (error) {
    assert.ok(error instanceof kind, `${error.constructor.name} is not ${kind.name}`);
    assert.strictEqual(error.status, status);
    return `${kind.name} ${status}`;
  }
  throw new Error(`expected ${kind.name}`);
}

(async () => {
  const checked = [];
  for (const stream of [false, true]) {
    await roundTrip(stream);
    checked.push(`tool round trip (stream=${stream})`);
  }
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.ok(ids.includes("echo"), ids);
  checked.push("models.list");
  const vectors = await client.embeddings.create({ model: "echo", input: ["hello", "world"] });
  assert.strictEqual(vectors.data.length, 2);
  assert.strictEqual(vectors.data[0].embedding.length, 16);
  checked.push("embeddings.create");
  const hello = [{ role: "user", content: "hi" }];
  const stranger = new OpenAI({ baseURL: `${base}/v1`, apiKey: "not-a-token", maxRetries: 0 });
  const limited = new OpenAI({ baseURL: `${base}/v1`, apiKey: limitedToken, maxRetries: 0 });
  checked.push(await raises(OpenAI.BadRequestError, 400, () => client.chat.completions.create({ model: "echo", messages: hello, temperature: 5 })));
  checked.push(await raises(OpenAI.AuthenticationError, 401, () => stranger.chat.completions.create({ model: "echo", messages: hello })));
  checked.push(await raises(OpenAI.NotFoundError, 404, () => client.chat.completions.create({ model: "gpt-9", messages: hello })));
  checked.push(await raises(OpenAI.RateLimitError, 429, () => limited.chat.completions.create({ model: "echo", messages: hello })));
  checked.push(await raises(OpenAI.InternalServerError, 502, () => client.chat.completions.create({ model: "broken", messages: hello })));
  checked.push(await raises(OpenAI.InternalServerError, 504, () => client.chat.completions.create({ model: "stalled", messages: hello })));
  console.log(`openai Node SDK check: ok (${checked.join(", ")})`);
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
