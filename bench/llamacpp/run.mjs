// One llama.cpp run for bench/llamacpp_compare.py: loads a GGUF file with node-llama-cpp's
// prebuilt llama.cpp (CPU, mmap, as llama.cpp runs by default), evaluates a prompt of token ids
// and decodes greedily, and prints one JSON line: load, prompt and per-token decode times and the
// generated ids.
//   node run.mjs MODEL.gguf --ids "1 2 3" --n 16 --threads 2 [--ctx 512]
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const model_path = args[0];
const ids = opt("--ids", "").trim().split(/[\s,]+/).filter((s) => s.length).map(Number);
const n = Number(opt("--n", "16"));
const threads = Number(opt("--threads", "2"));
const ctx_size = Number(opt("--ctx", String(Math.max(256, ids.length + n + 16))));

const t_start = performance.now();
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: model_path, useMmap: true, gpuLayers: 0});
const ctx = await model.createContext({contextSize: ctx_size, threads, batchSize: Math.max(ids.length, 1)});
const seq = ctx.getSequence();
const t_loaded = performance.now();
const times = [];
const out = [];
for await (const tok of seq.evaluate(ids, {temperature: 0})) {
  times.push(performance.now());
  out.push(tok);
  if (out.length >= n) break;
}
const prompt_s = (times[0] - t_loaded) / 1000;
const decode_s = times.length > 1 ? (times[times.length - 1] - times[0]) / 1000 / (times.length - 1) : null;
console.log(JSON.stringify({
  tool: "llama.cpp",
  build: llama.buildType,
  load_s: (t_loaded - t_start) / 1000,
  prompt_tokens: ids.length,
  prompt_s,
  decode_s_per_token: decode_s,
  tokens: out,
}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
