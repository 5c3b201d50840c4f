// ferry serve through the official OpenAI Node client (package.json pins the version): a real
// client, not hand-written HTTP, against servers on 127.0.0.1 with a tiny chat model.
//   node client_test.mjs FERRY_BINARY MODEL_DIR
// Exits 0 when every check passes; prints each check.
import {spawn, spawnSync} from "node:child_process";
import assert from "node:assert/strict";
import OpenAI from "openai";

const [ferry, model] = process.argv.slice(2);
if (!ferry || !model) {
  console.error("usage: node client_test.mjs FERRY_BINARY MODEL_DIR");
  process.exit(2);
}
const MODEL_NAME = model.replace(/\/+$/, "").split("/").pop();
const t0 = performance.now();
const servers = [];

// Starts `ferry serve` on a free port (--port 0: the server prints the one it took) and waits
// until /health says ok, checking that it answered "loading" or ok before.
async function start_server(extra = [], {dir = model, ctx = 256} = {}) {
  const args = ["serve", "-m", dir, "--port", "0", "--ctx", String(ctx), ...extra];
  const proc = spawn(ferry, args, {stdio: ["ignore", "ignore", "pipe"]});
  let stderr = "";
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({code, signal})));
  const port = await new Promise((resolve, reject) => {
    proc.stderr.on("data", (d) => {
      stderr += d.toString();
      const m = stderr.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    proc.on("exit", () => reject(new Error(`ferry serve exited early:\n${stderr}`)));
    const timer = setTimeout(() => reject(new Error(`no port after 20 s:\n${stderr}`)), 20000);
    proc.stderr.on("data", () => { if (/listening on/.test(stderr)) clearTimeout(timer); });
  });
  const base = `http://127.0.0.1:${port}`;
  const server = {proc, port, base, exited, stderr: () => stderr};
  servers.push(server);
  for (let i = 0; ; ++i) {
    let r;
    try {
      r = await fetch(`${base}/health`);
    } catch (e) {
      r = null;  // not answering yet
    }
    if (r) {
      const body = await r.json();
      if (r.status === 200) {
        assert.equal(body.status, "ok");
        break;
      }
      assert.equal(r.status, 503);
      assert.equal(body.status, "loading");
    }
    if (i > 300) throw new Error(`not healthy after 30 s:\n${stderr}`);
    await new Promise((res) => setTimeout(res, 100));
  }
  return server;
}

function client(server, apiKey = "unused") {
  return new OpenAI({baseURL: `${server.base}/v1`, apiKey, maxRetries: 0, timeout: 30000});
}

async function metrics(server) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const values = {};
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/);
    assert.ok(m, `a metrics line that is not Prometheus text: ${JSON.stringify(line)}`);
    values[m[1]] = m[2] === "NaN" ? NaN : Number(m[2]);
    assert.ok(m[2] === "NaN" || Number.isFinite(values[m[1]]), `bad value in ${line}`);
  }
  return values;
}

// The API error a call is refused with.
async function refusal(promise) {
  try {
    await promise;
  } catch (e) {
    if (e instanceof OpenAI.APIError) return e;
    throw e;
  }
  assert.fail("the request was accepted");
}

async function collect_stream(stream, chat) {
  let text = "";
  let finish = null;
  let first_role = null;
  let chunks = 0;
  for await (const chunk of stream) {
    if (!chunk.choices.length) continue;  // the usage chunk
    const c = chunk.choices[0];
    if (chat) {
      if (chunks === 0) first_role = c.delta.role;
      text += c.delta.content ?? "";
    } else {
      text += c.text;
    }
    if (c.finish_reason) finish = c.finish_reason;
    ++chunks;
  }
  return {text, finish, first_role, chunks};
}

let passed = 0;
async function check(name, f) {
  const t = performance.now();
  try {
    await f();
  } catch (e) {
    console.error(`FAIL ${name}: ${e.stack ?? e}`);
    for (const s of servers) console.error(`--- server :${s.port} stderr ---\n${s.stderr()}`);
    for (const s of servers) s.proc.kill("SIGKILL");
    process.exit(1);
  }
  ++passed;
  console.log(`ok ${name} (${((performance.now() - t) / 1000).toFixed(2)} s)`);
}

const main = await start_server(["--max-seqs", "4"]);
const api = client(main);
const greedy = {model: MODEL_NAME, temperature: 0};

await check("GET /v1/models names the model", async () => {
  const list = await api.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [MODEL_NAME]);
});

let base_text;
await check("completion: text, usage, finish_reason, id", async () => {
  const r = await api.completions.create({...greedy, prompt: "Once upon a time", max_tokens: 12});
  assert.match(r.id, /^cmpl-\d+$/);
  assert.equal(r.object, "text_completion");
  assert.equal(r.model, MODEL_NAME);
  assert.ok(Number.isInteger(r.created));
  assert.equal(r.choices.length, 1);
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 1);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  base_text = r.choices[0].text;
  assert.ok(base_text.length > 0);
});

await check("completion streamed: the deltas join to the same text, ending [DONE]", async () => {
  const s = await api.completions.create({...greedy, prompt: "Once upon a time", max_tokens: 12,
                                          stream: true});
  const got = await collect_stream(s, false);
  assert.equal(got.text, base_text);
  assert.ok(got.finish);
  // The raw stream: server-sent events, the last one [DONE].
  const raw = await fetch(`${main.base}/v1/completions`, {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({prompt: "Once upon a time", max_tokens: 4, temperature: 0, stream: true,
                          stream_options: {include_usage: true}})});
  assert.equal(raw.status, 200);
  assert.match(raw.headers.get("content-type"), /^text\/event-stream/);
  const body = await raw.text();
  assert.ok(body.endsWith("data: [DONE]\n\n"), body);
  const events = body.split("\n\n").filter((e) => e.length);
  for (const e of events) assert.ok(e.startsWith("data: "), e);
  const usage = JSON.parse(events[events.length - 2].slice(6));
  assert.deepEqual(usage.choices, []);
  assert.equal(usage.usage.completion_tokens, 4);
});

let chat_text;
await check("chat completion: the assistant's message", async () => {
  const r = await api.chat.completions.create({...greedy, max_tokens: 10,
      messages: [{role: "system", content: "Be brief."}, {role: "user", content: "Hello there"}]});
  assert.match(r.id, /^chatcmpl-\d+$/);
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(typeof r.choices[0].message.content, "string");
  assert.ok(r.usage.prompt_tokens > 5);  // the template's text, not only the words
  chat_text = r.choices[0].message.content;
});

await check("chat streamed: first delta carries the role, deltas join to the same text", async () => {
  const s = await api.chat.completions.create({...greedy, max_tokens: 10, stream: true,
      messages: [{role: "system", content: "Be brief."}, {role: "user", content: "Hello there"}]});
  const got = await collect_stream(s, true);
  assert.equal(got.first_role, "assistant");
  assert.equal(got.text, chat_text);
  assert.ok(["stop", "length"].includes(got.finish));
});

await check("chat: a role the template refuses is a 400 naming messages", async () => {
  const e = await refusal(api.chat.completions.create({...greedy,
      messages: [{role: "wizard", content: "hi"}]}));
  assert.equal(e.status, 400);
  assert.equal(e.param, "messages");
  assert.match(e.message, /Unknown role: wizard/);
});

await check("stop strings: the text ends before the stop, finish_reason stop", async () => {
  const long = (await api.completions.create({...greedy, prompt: "The river", max_tokens: 40}))
      .choices[0].text;
  assert.ok(long.length >= 12, `too short to cut: ${JSON.stringify(long)}`);
  const stop = long.slice(8, 11);
  const want = long.slice(0, long.indexOf(stop));
  for (const stream of [false, true]) {
    const req = {...greedy, prompt: "The river", max_tokens: 40, stop: [stop, "\u0000never"]};
    let text, finish;
    if (stream) {
      ({text, finish} = await collect_stream(await api.completions.create({...req, stream}), false));
    } else {
      const r = await api.completions.create(req);
      text = r.choices[0].text;
      finish = r.choices[0].finish_reason;
    }
    assert.equal(text, want, `stream=${stream}`);
    assert.equal(finish, "stop");
  }
});

await check("seeded sampling repeats; another seed differs", async () => {
  const req = {model: MODEL_NAME, prompt: "Seeds", max_tokens: 16, temperature: 1.0, top_p: 0.95};
  const a = (await api.completions.create({...req, seed: 42})).choices[0].text;
  const b = (await api.completions.create({...req, seed: 42})).choices[0].text;
  const c = (await api.completions.create({...req, seed: 43})).choices[0].text;
  assert.equal(a, b);
  assert.notEqual(a, c);
});

await check("8 concurrent requests equal the same requests one at a time", async () => {
  const reqs = [];
  for (let i = 0; i < 8; ++i) {
    const sampled = i % 2 === 1;
    const prompt = `Request number ${i} ${"and more ".repeat(i)}`;
    const common = {model: MODEL_NAME, max_tokens: 8 + 3 * i,
                    ...(sampled ? {temperature: 0.9, seed: 100 + i} : {temperature: 0})};
    reqs.push(i % 4 === 2
        ? () => api.chat.completions.create({...common, messages: [{role: "user", content: prompt}]})
              .then((r) => r.choices[0].message.content)
        : () => api.completions.create({...common, prompt}).then((r) => r.choices[0].text));
  }
  const one_by_one = [];
  for (const r of reqs) one_by_one.push(await r());
  const together = await Promise.all(reqs.map((r) => r()));
  assert.deepEqual(together, one_by_one);
  const m = await metrics(main);
  assert.ok(m["ferry_generated_tokens_total"] > 0);
});

// A model slow enough that a request is still generating when the test acts on it (a client
// going away, a full queue, SIGTERM): the tiny chat model writes 240 tokens in ~10 ms, before an
// abort can reach the server. This one (25 MB, 8192 positions) makes ~350 tokens/s on 2 cores.
const SLOW_DIR = "slow-model";
{
  const made = spawnSync(ferry, ["make-model", "--preset", "tiny-llama", "--n-embd", "256",
                                 "--n-layer", "4", "--vocab", "4000", "--n-positions", "8192",
                                 "--dtype", "f32", "--seed", "7", "-q", "-o", SLOW_DIR],
                         {encoding: "utf8"});
  assert.equal(made.status, 0, made.stderr);
}

await check("a client that disconnects mid-stream cancels its sequence and frees its KV", async () => {
  const slow = await start_server(["--max-seqs", "2"], {dir: SLOW_DIR, ctx: 8192});
  const slow_api = client(slow);
  const before = await metrics(slow);
  const s = await slow_api.completions.create({model: "slow-model", prompt: "A long story",
                                               max_tokens: 6000, temperature: 0, stream: true});
  let n = 0;
  for await (const chunk of s) {
    if (++n >= 3) {
      s.controller.abort();
      break;
    }
  }
  let m;
  for (let i = 0; i < 200; ++i) {
    m = await metrics(slow);
    if (m["ferry_active_sequences"] === 0 && m["ferry_kv_blocks_used"] === 0 &&
        m['ferry_sequences_total{reason="cancelled"}'] > before['ferry_sequences_total{reason="cancelled"}'])
      break;
    await new Promise((res) => setTimeout(res, 50));
  }
  assert.equal(m["ferry_active_sequences"], 0);
  assert.equal(m["ferry_kv_blocks_used"], 0);
  assert.equal(m['ferry_sequences_total{reason="cancelled"}'],
               before['ferry_sequences_total{reason="cancelled"}'] + 1);
  // It went because the client did, not because it had finished.
  assert.equal(m['ferry_sequences_total{reason="finished"}'],
               before['ferry_sequences_total{reason="finished"}']);
  slow.proc.kill("SIGTERM");
  await slow.exited;
  servers.splice(servers.indexOf(slow), 1);
});

await check("bad requests: 400 naming the field, in OpenAI's shape", async () => {
  let e = await refusal(api.completions.create({...greedy, prompt: "x", max_tokens: "5"}));
  assert.equal(e.status, 400);
  assert.equal(e.param, "max_tokens");
  assert.equal(e.type, "invalid_request_error");
  e = await refusal(api.completions.create({...greedy, prompt: "x", n: 2}));
  assert.equal(e.status, 400);
  assert.equal(e.param, "n");
  e = await refusal(api.chat.completions.create({...greedy, messages: "hi"}));
  assert.equal(e.status, 400);
  assert.equal(e.param, "messages");
  e = await refusal(api.completions.create({...greedy, prompt: "word ".repeat(400)}));
  assert.equal(e.status, 400);
  assert.equal(e.code, "context_length_exceeded");
  assert.match(e.message, /maximum context length is 256 tokens/);
  e = await refusal(api.completions.create({...greedy, prompt: [1, 5000]}));
  assert.equal(e.status, 400);
  assert.match(e.message, /outside the vocabulary/);

  const post = (path, body, headers = {}) => fetch(`${main.base}${path}`,
      {method: "POST", headers: {"Content-Type": "application/json", ...headers}, body});
  let r = await post("/v1/completions", "{\"prompt\": ");
  assert.equal(r.status, 400);
  assert.match((await r.json()).error.message, /not valid JSON/);
  r = await post("/v1/completions", JSON.stringify({prompt: "x".repeat(2 << 20)}));
  assert.equal(r.status, 413);
  assert.match((await r.json()).error.message, /--max-body/);
  r = await fetch(`${main.base}/v1/nothing`);
  assert.equal(r.status, 404);
  assert.equal((await r.json()).error.code, "unknown_url");
  r = await fetch(`${main.base}/v1/completions`);
  assert.equal(r.status, 405);
  assert.equal(r.headers.get("allow"), "POST");
  // The server still serves.
  const ok = await api.completions.create({...greedy, prompt: "still here", max_tokens: 3});
  assert.ok(ok.choices[0].text.length >= 0);
});

await check("/metrics is Prometheus text with the server's figures", async () => {
  const m = await metrics(main);
  for (const name of ["ferry_queue_depth", "ferry_active_sequences", "ferry_generated_tokens_total",
                      "ferry_prompt_tokens_total", "ferry_tokens_per_second", "ferry_kv_blocks_used",
                      "ferry_kv_blocks_total", "ferry_bytes_streamed_total",
                      "ferry_time_to_first_token_seconds_count", "ferry_up"])
    assert.ok(name in m, `missing ${name}`);
  assert.ok(m['ferry_requests_total{status="200"}'] >= 10);
  assert.ok(m['ferry_requests_total{status="400"}'] >= 5);
  assert.ok(m["ferry_kv_blocks_total"] > 0);
  assert.equal(m["ferry_up"], 1);
});

// A second server: one slot, a queue of one, a key, the slow model.
const guarded = await start_server(["--max-seqs", "1", "--max-queue", "1", "--api-key", "s3cret"],
                                   {dir: SLOW_DIR, ctx: 1024});
const slow_greedy = {model: SLOW_DIR, temperature: 0};

await check("--api-key: 401 without the bearer token, 200 with it; /health stays open", async () => {
  const e = await refusal(client(guarded, "wrong").completions.create({...slow_greedy, prompt: "x"}));
  assert.equal(e.status, 401);
  assert.equal(e.code, "invalid_api_key");
  const r = await client(guarded, "s3cret").completions.create({...slow_greedy, prompt: "x", max_tokens: 2});
  assert.equal(r.choices.length, 1);
  assert.equal((await fetch(`${guarded.base}/health`)).status, 200);
});

await check("a full queue answers 429 with Retry-After, and the others still finish", async () => {
  const api2 = client(guarded, "s3cret");
  const results = await Promise.allSettled(Array.from({length: 6}, (_, i) =>
      api2.completions.create({...slow_greedy, prompt: `busy ${i}`, max_tokens: 200})));
  const refused = results.filter((r) => r.status === "rejected");
  const served = results.filter((r) => r.status === "fulfilled");
  assert.ok(refused.length >= 1, "nothing was refused");
  assert.ok(served.length >= 2, `fewer than slot + queue were served: ${refused.map((r) => r.reason.status + " " + r.reason.message).join("; ")}`);
  for (const r of refused) {
    assert.equal(r.reason.status, 429);
    assert.ok(Number(r.reason.headers["retry-after"]) >= 1);
  }
});

await check("SIGTERM: in-flight requests finish, /health says draining, exit 0", async () => {
  const api2 = client(guarded, "s3cret");
  const s = await api2.completions.create({...slow_greedy, prompt: "last words", max_tokens: 120,
                                           stream: true});
  const it = s[Symbol.asyncIterator]();
  await it.next();  // it is running
  guarded.proc.kill("SIGTERM");
  // The signal arrives asynchronously: /health may say ok for a moment, then draining until
  // the request is done (or the server may already be gone when the request was short).
  for (let i = 0; ; ++i) {
    const h = await fetch(`${guarded.base}/health`).catch(() => null);
    if (!h) break;
    if (h.status === 503) {
      assert.equal((await h.json()).status, "draining");
      break;
    }
    assert.equal(h.status, 200);
    assert.ok(i < 100, "/health still says ok 5 s after SIGTERM");
    await new Promise((res) => setTimeout(res, 50));
  }
  let finish = null;
  for (let r = await it.next(); !r.done; r = await it.next())
    if (r.value.choices[0]?.finish_reason) finish = r.value.choices[0].finish_reason;
  assert.ok(["stop", "length"].includes(finish));
  const {code, signal} = await guarded.exited;
  assert.equal(code, 0, `ended by ${signal}`);
});

main.proc.kill("SIGTERM");
const {code, signal} = await main.exited;
assert.equal(code, 0, `ended by ${signal}`);
console.log(`all ${passed} checks passed in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
process.exit(0);  // the client's pooled keep-alive sockets would hold the event loop open
