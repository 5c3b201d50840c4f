#!/usr/bin/env python3
"""ferry beside llama.cpp on one GGUF file: decode and prompt speed, all in RAM and under memory
cgroups, alternated, medians, the ratio printed last.

llama.cpp is the prebuilt one node-llama-cpp 3.21.1 ships (bench/llamacpp, installed with
`npm ci` on first use); it runs the file with mmap, as llama.cpp does by default, so under a
cgroup cap the page cache decides what stays. ferry runs the same file with --max-ram CAP minus
HEADROOM (its plan keeps what fits and streams the rest with O_DIRECT). Both use THREADS threads
and the same prompt ids; greedy tokens are compared.

Each run under a cap gets a fresh memory cgroup (v1 memory.limit_in_bytes + memsw; v2
memory.max, swap.max 0) and the file is evicted from the page cache before it, so the cap binds;
the kernel's peak for the cgroup is reported. "none" runs uncapped with the file warm in the page
cache (llama.cpp's resident case) and ferry's plan all resident.

  bench/llamacpp_compare.py MODEL.gguf [--caps "none 4GiB 2.5GiB"] [--rounds 3] [--n 16]
                            [--prompt-tokens 64] [--threads 2] [--headroom 256MiB]
                            [--ferry-model PACK]
  env: FERRY=build/tools/ferry; FERRY_GGUF_PRODUCTS=exact (passed on to ferry) times ferry's
       exact f32 products instead of llama.cpp's q8-activation arithmetic, its default

The models are usually written by `ferry make-model --preset llama3-8b --gguf q4_k_m -o F.gguf`.
--ferry-model runs ferry on another file of the same weights while llama.cpp runs MODEL.gguf:
ferry's own int4/int8 pack against llama.cpp's Q4_0/Q8_0, e.g.
  ferry make-model --preset gptj-6b --gguf q4_0 -o g.gguf  (or --preset llama3-8b)
  ferry convert -m g.gguf --quant int4 -o g-int4
  bench/llamacpp_compare.py g.gguf --ferry-model g-int4
(greedy tokens are then not compared: the two quantizations differ).
The last line of stdout is a JSON summary.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NODE_DIR = os.path.join(HERE, "llamacpp")


def parse_size(s):
    m = re.fullmatch(r"([0-9.]+)\s*([KMGT]?)(i?B)?", s.strip(), re.I)
    if not m:
        sys.exit(f"llamacpp_compare: bad size {s!r}")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def files_of(path):
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def evict(path):
    for p in files_of(path):
        fd = os.open(p, os.O_RDONLY)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def warm(path):
    for p in files_of(path):
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


class Cgroups:
    def __init__(self):
        if os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            self.v = 1
            own = ""
            for line in open("/proc/self/cgroup"):
                _, ctrl, path = line.strip().split(":", 2)
                if "memory" in ctrl.split(","):
                    own = path
            self.parent = "/sys/fs/cgroup/memory" + own.rstrip("/")
        elif os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            self.v = 2
            self.parent = "/sys/fs/cgroup"
            sub = os.path.join(self.parent, "cgroup.subtree_control")
            if "memory" not in open(sub).read():
                with open(sub, "w") as f:
                    f.write("+memory")
        else:
            sys.exit("llamacpp_compare: no memory cgroup controller")
        self.n = 0

    def create(self, cap):
        self.n += 1
        cg = os.path.join(self.parent, f"ferry-llamacpp-{os.getpid()}-{self.n}")
        os.mkdir(cg)

        def put(name, value):
            p = os.path.join(cg, name)
            if os.path.exists(p):
                try:
                    with open(p, "w") as f:
                        f.write(str(value))
                except OSError:
                    pass

        if self.v == 1:
            put("memory.limit_in_bytes", cap)
            put("memory.memsw.limit_in_bytes", cap)
            put("memory.swappiness", 0)
        else:
            put("memory.max", cap)
            put("memory.swap.max", 0)
        return cg

    def peak(self, cg):
        name = "memory.max_usage_in_bytes" if self.v == 1 else "memory.peak"
        p = os.path.join(cg, name)
        return int(open(p).read()) if os.path.exists(p) else None

    def ooms(self, cg):
        p = os.path.join(cg, "memory.oom_control" if self.v == 1 else "memory.events")
        for line in open(p):
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return 0

    def remove(self, cg):
        for _ in range(20):
            try:
                os.rmdir(cg)
                return
            except OSError:
                time.sleep(0.25)


def run(cmd, cg, timeout, env=None):
    def enter():
        if cg:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=enter, env=env)
        return p.returncode, p.stdout, p.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or "", e.stderr or "", time.time() - t0


def ferry_run(args, model, ids, cap, cg):
    env = dict(os.environ, FERRY_THREADS=str(args.threads))
    cmd = [args.ferry, "run", "-m", model, "--ids", " ".join(map(str, ids)), "-n", str(args.n),
           "--print-ids"]
    if cap is not None:
        cmd += ["--max-ram", str(max(cap // 2, cap - parse_size(args.headroom)))]
    rc, out, err, wall = run(cmd, cg, args.timeout, env)
    r = {"tool": "ferry", "rc": rc, "wall_s": wall}
    m = re.search(r"prompt (\d+) tokens in ([0-9.]+) s.*?generated (\d+) tokens, decode ([0-9.]+) tok/s", err)
    if rc == 0 and m:
        r["prompt_s"] = float(m.group(2))
        r["decode_s_per_token"] = 1.0 / float(m.group(4))
        r["tokens"] = json.loads(out.strip().splitlines()[-1])
    plan = re.search(r"ferry: plan: (.*)", err)
    r["plan"] = plan.group(1)[:160] if plan else None
    if rc != 0:
        r["error"] = (err.strip().splitlines() or ["?"])[-1][:300]
    return r


def llamacpp_run(args, model, ids, cg):
    cmd = ["node", os.path.join(NODE_DIR, "run.mjs"), model, "--ids", " ".join(map(str, ids)),
           "--n", str(args.n), "--threads", str(args.threads)]
    rc, out, err, wall = run(cmd, cg, args.timeout)
    r = {"tool": "llama.cpp", "rc": rc, "wall_s": wall}
    if rc == 0:
        try:
            r.update(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            r["rc"] = -1
            r["error"] = "no JSON from run.mjs"
    else:
        r["error"] = (err.strip().splitlines() or ["killed (rc %d)" % rc])[-1][:300]
    return r


def tree_bytes(path):
    return sum(os.path.getsize(p) for p in files_of(path))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--caps", default="none 4GiB 2.5GiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--headroom", default="256MiB")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--ferry", default=os.environ.get("FERRY", os.path.join(ROOT, "build/tools/ferry")))
    ap.add_argument("--ferry-model", default=None,
                    help="run ferry on this file or pack (the same weights in ferry's own format)")
    args = ap.parse_args()
    model = os.path.abspath(args.model)
    ferry_model = os.path.abspath(args.ferry_model) if args.ferry_model else model

    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "node-llama-cpp")):
        print("== installing node-llama-cpp (npm ci in bench/llamacpp)", file=sys.stderr)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    # A private copy of the binary: a rebuild during the runs cannot mix binaries.
    tmp = tempfile.mkdtemp(prefix="ferry-llamacpp-")
    shutil.copy(args.ferry, os.path.join(tmp, "ferry"))
    args.ferry = os.path.join(tmp, "ferry")

    # Prompt ids: spread over the vocabulary (GPT-2's ids are real tokens in every file
    # make-model writes).
    ids = [(1000 + 7919 * i) % 50000 for i in range(args.prompt_tokens)]
    cgroups = None
    caps = [None if c == "none" else parse_size(c) for c in args.caps.split()]
    results = []
    for rnd in range(args.rounds):
        for cap in caps:
            order = ["ferry", "llama.cpp"] if rnd % 2 == 0 else ["llama.cpp", "ferry"]
            for tool in order:
                cg = None
                if cap is not None:
                    cgroups = cgroups or Cgroups()
                    evict(ferry_model if tool == "ferry" else model)
                    cg = cgroups.create(cap)
                else:
                    warm(ferry_model if tool == "ferry" else model)
                r = ferry_run(args, ferry_model, ids, cap, cg) if tool == "ferry" else llamacpp_run(args, model, ids, cg)
                if cg:
                    r["peak_bytes"] = cgroups.peak(cg)
                    r["oom_kills"] = cgroups.ooms(cg)
                    cgroups.remove(cg)
                r["cap"] = "none" if cap is None else args.caps.split()[caps.index(cap)]
                r["round"] = rnd
                results.append(r)
                shown = {k: v for k, v in r.items() if k != "tokens"}
                print("== " + json.dumps(shown), file=sys.stderr, flush=True)

    rows = []
    if ferry_model != model:
        print(f"\nferry ran {ferry_model} ({tree_bytes(ferry_model) / 2**30:.2f} GiB)")
    print(f"\nmodel: {model} ({os.path.getsize(model) / 2**30:.2f} GiB), {args.threads} threads, "
          f"prompt {args.prompt_tokens} tokens, {args.n} generated, {args.rounds} rounds (medians)")
    print(f"{'cap':>8} {'tool':>10} {'decode s/tok':>13} {'tok/s':>8} {'prompt tok/s':>13} {'peak GiB':>9} {'ok':>5}")
    summary = {"model": model, "threads": args.threads, "rounds": args.rounds, "caps": {}}
    for cap_name in args.caps.split():
        per = {}
        for tool in ["ferry", "llama.cpp"]:
            rs = [r for r in results if r["cap"] == cap_name and r["tool"] == tool]
            ok = [r for r in rs if r["rc"] == 0 and r.get("decode_s_per_token")]
            d = median([r["decode_s_per_token"] for r in ok])
            p = median([args.prompt_tokens / r["prompt_s"] for r in ok if r.get("prompt_s")])
            peak = median([r.get("peak_bytes") for r in rs])
            per[tool] = {"decode_s_per_token": d, "prompt_tok_per_s": p, "peak_bytes": peak,
                         "ok": len(ok), "runs": len(rs),
                         "errors": sorted({r.get("error") for r in rs if r.get("error")})}
            print(f"{cap_name:>8} {tool:>10} {d if d else float('nan'):13.4f} "
                  f"{1 / d if d else float('nan'):8.2f} {p if p else float('nan'):13.2f} "
                  f"{peak / 2**30 if peak else float('nan'):9.2f} {len(ok):>2}/{len(rs)}")
        f, l = per["ferry"], per["llama.cpp"]
        ratio = l["decode_s_per_token"] / f["decode_s_per_token"] if f["decode_s_per_token"] and l["decode_s_per_token"] else None
        pratio = f["prompt_tok_per_s"] / l["prompt_tok_per_s"] if f["prompt_tok_per_s"] and l["prompt_tok_per_s"] else None
        ft = [r.get("tokens") for r in results if r["cap"] == cap_name and r["tool"] == "ferry" and r.get("tokens")]
        lt = [r.get("tokens") for r in results if r["cap"] == cap_name and r["tool"] == "llama.cpp" and r.get("tokens")]
        same = (bool(ft and lt) and ft[0] == lt[0]) if ferry_model == model else None
        if same is False:
            at = next((i for i, (a, b) in enumerate(zip(ft[0], lt[0])) if a != b),
                      min(len(ft[0]), len(lt[0])))
            print(f"cap {cap_name}: greedy tokens part at generated token {at} of {len(ft[0])}: "
                  f"ferry {ft[0][at:at + 4]}, llama.cpp {lt[0][at:at + 4]} (near-ties on random "
                  f"weights part them when the two round differently)", file=sys.stderr)
        summary["caps"][cap_name] = {"ferry": f, "llama.cpp": l, "decode_speed_ratio": ratio,
                                     "prompt_speed_ratio": pratio, "greedy_tokens_equal": same}
        rows.append((cap_name, ratio, pratio, same))
    print()
    for cap_name, ratio, pratio, same in rows:
        r = f"{ratio:.2f}x" if ratio else "n/a"
        p = f"{pratio:.2f}x" if pratio else "n/a"
        tokens = "n/a (other weights)" if same is None else same
        print(f"ferry / llama.cpp speed, cap {cap_name}: decode {r}, prompt {p}; greedy tokens equal: {tokens}")
    print(json.dumps(summary))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
