// A bounded load test of `ferry serve` on loopback: N concurrent streaming clients, each sending a
// fixed number of requests with bad ones mixed in. Reports failed valid requests (the goal is
// zero), time to first token and inter-token gaps (p50/p99, client side), the server's RSS after
// a warm-up and at the end, and whether /metrics is back to no active sequences and no KV blocks
// used. Exits 1 when a valid request failed, a bad one was not refused with a 4xx, or KV leaked.
// Plain fetch: nothing to install (Node 18+). The server keeps one HTTP thread per request it
// holds (--max-seqs + --max-queue + 8), and each thread's allocator cache grows the RSS until
// every thread has served; with a smaller --max-queue the RSS flattens sooner.
//
//   node bench/serve_load.mjs --ferry build/tools/ferry --model DIR [--clients 32] [--requests 4]
//        [--max-tokens 64] [--bad-every 5] [--max-seqs 8] [--max-queue 256] [--ctx 1024]
//        [--chat] [-- extra ferry serve flags such as --max-ram 4GiB]
//   node bench/serve_load.mjs --url http://127.0.0.1:8080 ...   # a server already running
import {spawn} from "node:child_process";
import {readFileSync} from "node:fs";

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
const args = dash >= 0 ? argv.slice(0, dash) : argv;
const extra = dash >= 0 ? argv.slice(dash + 1) : [];
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const clients = Number(opt("--clients", "32"));
const per_client = Number(opt("--requests", "4"));
const max_tokens = Number(opt("--max-tokens", "64"));
const bad_every = Number(opt("--bad-every", "5"));
const chat = args.includes("--chat");

let server = null;
let base = opt("--url", null);
if (!base) {
  const ferry = opt("--ferry", "build/tools/ferry");
  const model = opt("--model", null);
  if (!model) {
    console.error("give --model DIR (and --ferry BIN), or --url of a running server");
    process.exit(2);
  }
  const serve_args = ["serve", "-m", model, "--port", "0", "--max-seqs", opt("--max-seqs", "8"),
                      "--max-queue", opt("--max-queue", "256"), "--ctx", opt("--ctx", "1024"),
                      ...extra];
  server = spawn(ferry, serve_args, {stdio: ["ignore", "ignore", "pipe"]});
  let stderr = "";
  const port = await new Promise((resolve, reject) => {
    server.stderr.on("data", (d) => {
      stderr += d;
      const m = stderr.match(/listening on http:\/\/[^:]+:(\d+)/);
      if (m) resolve(m[1]);
    });
    server.on("exit", () => reject(new Error(`ferry serve exited:\n${stderr}`)));
  });
  base = `http://127.0.0.1:${port}`;
  for (;;) {
    const r = await fetch(`${base}/health`).catch(() => null);
    if (r && r.status === 200) break;
    await new Promise((res) => setTimeout(res, 200));
  }
}

const rss_mib = () => {
  if (!server) return null;
  const m = readFileSync(`/proc/${server.pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : null;
};

async function metrics() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const v = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^([^#\s][^\s]*) (\S+)$/);
    if (m) v[m[1]] = Number(m[2]);
  }
  return v;
}

// One streamed request: its time to first text and gaps between text events.
async function valid_request(k) {
  const prompt = `Client request ${k}: ${"tell me more ".repeat(k % 7)}`;
  const body = chat
      ? {messages: [{role: "user", content: prompt}], max_tokens, temperature: 0.7, seed: k, stream: true}
      : {prompt, max_tokens, temperature: 0.7, seed: k, stream: true};
  const t0 = performance.now();
  const r = await fetch(`${base}/v1/${chat ? "chat/completions" : "completions"}`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (r.status !== 200) return {ok: false, why: `HTTP ${r.status}: ${await r.text()}`};
  const decoder = new TextDecoder();
  let buf = "", last = null, ttft = null, finish = null, done = false;
  const gaps = [];
  for await (const piece of r.body) {
    buf += decoder.decode(piece, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") {
        done = true;
        continue;
      }
      const j = JSON.parse(data);
      if (j.error) return {ok: false, why: JSON.stringify(j.error)};
      const c = j.choices[0];
      if (!c) continue;
      const text = chat ? c.delta.content ?? "" : c.text;
      if (c.finish_reason) finish = c.finish_reason;
      if (!text) continue;
      const now = performance.now();
      if (ttft === null) ttft = now - t0;
      else gaps.push(now - last);
      last = now;
    }
  }
  if (!done || !finish) return {ok: false, why: `stream ended without ${done ? "finish_reason" : "[DONE]"}`};
  return {ok: true, ttft, gaps};
}

// A bad request of one of several kinds; it must be refused with a 4xx and an error object.
async function bad_request(k) {
  const kinds = [
    "{\"prompt\": ",
    JSON.stringify({prompt: "x", n: 2}),
    JSON.stringify({prompt: "x", max_tokens: "many"}),
    JSON.stringify({prompt: "word ".repeat(5000)}),
    JSON.stringify({prompt: "x", temperature: 9}),
  ];
  const r = await fetch(`${base}/v1/completions`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: kinds[k % kinds.length]});
  const j = await r.json().catch(() => null);
  return {ok: r.status >= 400 && r.status < 500 && j && j.error && j.error.message, status: r.status};
}

async function round(n_clients, n_requests, label) {
  const results = {valid: 0, failed: [], bad: 0, bad_not_refused: [], ttft: [], gaps: []};
  let counter = 0;
  await Promise.all(Array.from({length: n_clients}, async () => {
    for (let i = 0; i < n_requests; ++i) {
      const k = counter++;
      if (bad_every > 0 && k % bad_every === bad_every - 1) {
        const r = await bad_request(k);
        ++results.bad;
        if (!r.ok) results.bad_not_refused.push(r.status);
        continue;
      }
      const r = await valid_request(k).catch((e) => ({ok: false, why: String(e)}));
      ++results.valid;
      if (!r.ok) {
        results.failed.push(r.why);
        continue;
      }
      results.ttft.push(r.ttft);
      results.gaps.push(...r.gaps);
    }
  }));
  console.error(`${label}: ${results.valid} valid (${results.failed.length} failed), ${results.bad} bad`);
  return results;
}

const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
};

// The warm-up has the load's concurrency, so what it grows (threads' stacks, the allocator's
// caches, KV pages) is in the first RSS figure and "flat" means no growth per request.
await round(clients, 1, "warm-up");
const rss_before = rss_mib();
const tokens_before = (await metrics()).ferry_generated_tokens_total;
const t0 = performance.now();
const res = await round(clients, per_client, "load");
const wall_s = (performance.now() - t0) / 1000;
let m;
for (let i = 0; i < 50; ++i) {
  m = await metrics();
  if (m.ferry_active_sequences === 0 && m.ferry_kv_blocks_used === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}
const rss_after = rss_mib();
const summary = {
  clients, requests_per_client: per_client, max_tokens, chat, wall_s: +wall_s.toFixed(2),
  valid_requests: res.valid, failed_valid_requests: res.failed.length,
  bad_requests: res.bad, bad_not_refused: res.bad_not_refused.length,
  ttft_ms: {p50: +pct(res.ttft, 0.5).toFixed(1), p99: +pct(res.ttft, 0.99).toFixed(1)},
  inter_token_ms: {p50: +pct(res.gaps, 0.5).toFixed(2), p99: +pct(res.gaps, 0.99).toFixed(2)},
  generated_tokens_per_s: +((m.ferry_generated_tokens_total - tokens_before) / wall_s).toFixed(1),
  rss_mib: {after_warmup: rss_before && +rss_before.toFixed(1), end: rss_after && +rss_after.toFixed(1)},
  end_active_sequences: m.ferry_active_sequences, end_kv_blocks_used: m.ferry_kv_blocks_used,
  kv_blocks_total: m.ferry_kv_blocks_total,
};
console.log(JSON.stringify(summary, null, 1));
for (const why of res.failed.slice(0, 5)) console.error(`failed: ${why}`);
if (server) {
  server.kill("SIGTERM");
  await new Promise((r) => server.on("exit", r));
}
const ok = res.failed.length === 0 && res.bad_not_refused.length === 0 &&
           m.ferry_active_sequences === 0 && m.ferry_kv_blocks_used === 0;
process.exit(ok ? 0 : 1);
