#!/usr/bin/env python3
"""A plain, independent Llama-family forward pass (pure Python, double precision) for the CLI
tests: reads a checkpoint (safetensors, sharded or not, f32 / f16 / bf16, + config.json) and prints the last
position's logits as {"logits": [...]}. It follows transformers' LlamaForCausalLM /
Qwen2ForCausalLM / Qwen3ForCausalLM line by line: RMSNorm, q/k/v (+ biases: Qwen2, or
attention_bias), Qwen3's per-head q/k RMSNorm before rotate_half rotary (rope_theta; rope_scaling linear or
llama3),
grouped-query attention (query head h reads KV head h // (heads / kv_heads)), SwiGLU, sequential
residual, final norm, lm_head or the tied embedding. Slow, small models only.

  llama_reference.py MODEL_DIR ID [ID ...]
"""
import json
import math
import struct
import sys


def main():
    d, ids = sys.argv[1], [int(t) for t in sys.argv[2:]]
    cfg = json.load(open(d + "/config.json"))
    # One safetensors file, or shards named by model.safetensors.index.json.
    try:
        files = sorted(set(json.load(open(d + "/model.safetensors.index.json"))["weight_map"].values()))
    except FileNotFoundError:
        files = ["model.safetensors"]
    header = {}
    for name in files:
        f = open(d + "/" + name, "rb")
        n = struct.unpack("<Q", f.read(8))[0]
        for k, e in json.loads(f.read(n)).items():
            if k != "__metadata__":
                header[k] = (f, 8 + n, e)

    def tensor(name):
        f, base, e = header[name]
        a, b = e["data_offsets"]
        f.seek(base + a)
        raw = f.read(b - a)
        if e["dtype"] == "F32":
            vals = struct.unpack("<%df" % (len(raw) // 4), raw)
        elif e["dtype"] == "F16":
            vals = struct.unpack("<%de" % (len(raw) // 2), raw)
        elif e["dtype"] == "BF16":  # the upper half of an f32
            halves = struct.unpack("<%dH" % (len(raw) // 2), raw)
            vals = struct.unpack("<%df" % len(halves), struct.pack("<%dI" % len(halves),
                                                                   *(h << 16 for h in halves)))
        else:
            raise SystemExit(f"{name}: dtype {e['dtype']} is not f32, f16 or bf16")
        if len(e["shape"]) == 1:
            return list(vals)
        rows, cols = e["shape"]
        return [vals[i * cols:(i + 1) * cols] for i in range(rows)]

    def opt(name):
        return tensor(name) if name in header else None

    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    # Qwen2 always has q/k/v biases; they are read whenever the checkpoint has them.

    def rms(x, w):
        r = 1 / math.sqrt(sum(t * t for t in x) / len(x) + eps)
        return [wi * (xi * r) for xi, wi in zip(x, w)]

    def linear(w, x, b=None):
        y = [sum(p * q for p, q in zip(row, x)) for row in w]
        return [a + c for a, c in zip(y, b)] if b else y

    inv_freq = [1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)]
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv_freq = [fr / scaling["factor"] for fr in inv_freq]
    elif kind == "llama3":  # transformers' _compute_llama3_parameters
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        scaled = []
        for fr in inv_freq:
            wavelen = 2 * math.pi / fr
            if wavelen < old / high:
                scaled.append(fr)
            elif wavelen > old / low:
                scaled.append(fr / factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                scaled.append((1 - smooth) * fr / factor + smooth * fr)
        inv_freq = scaled
    elif kind != "default":
        raise SystemExit(f"rope_scaling {kind} is not in the reference")

    def rope(v, pos):
        half = head_dim // 2
        out = list(v)
        for i in range(half):
            c, s = math.cos(pos * inv_freq[i]), math.sin(pos * inv_freq[i])
            out[i] = v[i] * c - v[i + half] * s
            out[i + half] = v[i + half] * c + v[i] * s
        return out

    embed = tensor("model.embed_tokens.weight")
    xs = [list(embed[t]) for t in ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a = p + "self_attn."
        wq, wk, wv, wo = (tensor(a + m + "_proj.weight") for m in "qkvo")
        bq, bk, bv, bo = (opt(a + m + "_proj.bias") for m in "qkvo")
        qn, kn = opt(a + "q_norm.weight"), opt(a + "k_norm.weight")
        ln1 = tensor(p + "input_layernorm.weight")
        ln2 = tensor(p + "post_attention_layernorm.weight")
        wg, wu, wd = (tensor(p + f"mlp.{m}_proj.weight") for m in ("gate", "up", "down"))
        qs, ks, vs = [], [], []
        for pos, x in enumerate(xs):
            h = rms(x, ln1)
            q, k, v = linear(wq, h, bq), linear(wk, h, bk), linear(wv, h, bv)
            q = [q[i * head_dim:(i + 1) * head_dim] for i in range(heads)]
            k = [k[i * head_dim:(i + 1) * head_dim] for i in range(kv_heads)]
            if qn:
                q, k = [rms(t, qn) for t in q], [rms(t, kn) for t in k]
            qs.append([rope(t, pos) for t in q])
            ks.append([rope(t, pos) for t in k])
            vs.append([v[i * head_dim:(i + 1) * head_dim] for i in range(kv_heads)])
        new = []
        for t, x in enumerate(xs):
            att = []
            for i in range(heads):
                g = i // (heads // kv_heads)
                sc = [sum(p_ * q_ for p_, q_ in zip(qs[t][i], ks[j][g])) / math.sqrt(head_dim)
                      for j in range(t + 1)]
                m = max(sc)
                e = [math.exp(s - m) for s in sc]
                z = sum(e)
                att += [sum(e[j] / z * vs[j][g][c] for j in range(t + 1)) for c in range(head_dim)]
            x2 = [p_ + q_ for p_, q_ in zip(x, linear(wo, att, bo))]
            h2 = rms(x2, ln2)
            act = [(g_ / (1 + math.exp(-g_))) * u for g_, u in zip(linear(wg, h2), linear(wu, h2))]
            new.append([p_ + q_ for p_, q_ in zip(x2, linear(wd, act))])
        xs = new
    head = embed if cfg.get("tie_word_embeddings") else tensor("lm_head.weight")
    logits = linear(head, rms(xs[-1], tensor("model.norm.weight")))
    print(json.dumps({"logits": logits}))


if __name__ == "__main__":
    main()
