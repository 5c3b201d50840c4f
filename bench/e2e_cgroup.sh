#!/usr/bin/env bash
# End to end under a memory cgroup: a GPT-J-6B-shaped random f16 checkpoint (12.1 GB, made once by
# `ferry make-model`; or any single-file safetensors model of GPT-J or the Llama family) generates under caps of 12 GiB and 4 GiB, and the same script shows what the
# usual approaches do under the same caps:
#   ferry    `ferry run --max-ram CAP-HEADROOM`: resident prefix + units streamed with O_DIRECT
#   mmap     `ferry run --mmap`: compute straight from a memory map, as llama.cpp does; the page
#            cache decides what stays, so under a cap it thrashes
#   load     read the whole checkpoint into anonymous memory first, as transformers does without
#            low_cpu_mem_usage (python3 `open(f,'rb').read()`); expected to be OOM-killed
# Each run gets a fresh memory cgroup (v1: memory.limit_in_bytes, + memsw so swap cannot hide
# usage; v2: memory.max, memory.swap.max=0), the checkpoint is evicted from the page cache before
# it (a child cgroup is not charged for pages its parent already cached, so a warm cache would
# silently bypass the cap), and the kernel's own peak for the cgroup is recorded
# (v1 memory.max_usage_in_bytes; v2 memory.peak, else memory.current polled).
# The variants run alternately (round-robin, ROUNDS rounds) and medians are quoted, because the
# machines are shared and noisy. Disk read bandwidth (the faster of `ferry bench-io --engine
# uring` and fio's sequential read, both O_DIRECT io_uring 1 MiB qd 16 on the checkpoint, cold)
# and memory read bandwidth (bench_kernels' AVX2 read loop on every thread) are measured in every
# round, and the ferry run is set against the bound
#   max(bytes read from disk per token / disk bw, bytes read from RAM per token / memory bw)
# where the disk bytes are the units the plan streams and the RAM bytes are all weight units
# (the embedding is a row lookup per token and is left out). Target: s/token / bound <= 1.15.
# s/token is (t_last - t_first) / (n - 1) over the arrival times of the generated tokens on
# stdout (ferry runs on a tokenizer-less view of the checkpoint so it prints and flushes "ID "
# per token); ferry's own "decode N tok/s" is kept in the JSON as a cross-check. A private copy
# of the ferry binary is run, so a rebuild during the run cannot mix binaries.
# The kernel enforces the cap, so "peak <= cap" is only meaningful together with "not OOM-killed";
# both are shown. The generated ids of the ferry and mmap runs are compared (greedy, same prompt).
#
#   bench/e2e_cgroup.sh [MODEL_DIR]                  (as root)
#   env: MODEL_DIR=/var/tmp/ferry-gptj-6b  CAPS="12GiB 4GiB"  ROUNDS=2  VARIANTS="ferry mmap load"
#        N_TOKENS=4  IDS="<8 ids>"  HEADROOM=256MiB  MMAP_TIMEOUT=900  FERRY_TIMEOUT=1800
#        LOAD_TIMEOUT=900  CGROUP_VERSION=auto|1|2  CGROUP_PARENT=<dir>  OUT_DIR=<dir>
#        FERRY=build/tools/ferry  BENCH_KERNELS=build/bench/bench_kernels
# The last line of stdout is a JSON summary; the table is printed above it.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "e2e_cgroup: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root (it creates memory cgroups)"
command -v python3 >/dev/null || die "python3 is needed"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"

FERRY=${FERRY:-build/tools/ferry}
BENCH_KERNELS=${BENCH_KERNELS:-build/bench/bench_kernels}
MODEL_DIR=${1:-${MODEL_DIR:-/var/tmp/ferry-gptj-6b}}
CAPS=${CAPS:-"12GiB 4GiB"}
ROUNDS=${ROUNDS:-2}
VARIANTS=${VARIANTS:-"ferry mmap load"}
N_TOKENS=${N_TOKENS:-4}
IDS=${IDS:-"15496 995 11 314 716 257 1332 13"}
HEADROOM=${HEADROOM:-256MiB}
MMAP_TIMEOUT=${MMAP_TIMEOUT:-900}
FERRY_TIMEOUT=${FERRY_TIMEOUT:-1800}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-900}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ferry-e2e-cgroup.XXXXXX)}
mkdir -p "$OUT_DIR"

[ -x "$FERRY" ] || die "no ferry binary at $FERRY; build it: ninja -C build -j2 ferry (or set FERRY=)"
# Run a private copy: a rebuild of build/tools/ferry during the run would otherwise mix binaries.
cp "$FERRY" "$OUT_DIR/ferry"
FERRY_SRC=$FERRY
FERRY=$OUT_DIR/ferry
FERRY_SHA=$(sha256sum "$FERRY" | cut -c1-16)
GIT_HEAD=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ ! -x "$BENCH_KERNELS" ]; then
  log "building bench_kernels (ninja -C build -j2 bench_kernels)"
  ninja -C build -j2 bench_kernels >&2 || die "cannot build bench_kernels; set BENCH_KERNELS="
fi

to_bytes() {
  python3 -c "
import re,sys
m=re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*', sys.argv[1], re.I)
if not m: sys.exit('e2e_cgroup: bad size: ' + sys.argv[1])
n,u,i=float(m[1]),m[2].upper(),m[3]
print(int(n*(1024 if i or not u else 1000)**'_KMGT'.index(u or '_')))" "$1"
}
headroom_bytes=$(to_bytes "$HEADROOM")

# ---- the checkpoint --------------------------------------------------------------------------
# Complete when config.json exists and the safetensors file is as long as its header says.
checkpoint_complete() {
  [ -f "$MODEL_DIR/config.json" ] && [ -f "$MODEL_DIR/model.safetensors" ] || return 1
  python3 - "$MODEL_DIR/model.safetensors" <<'PY'
import json, os, struct, sys
p = sys.argv[1]
with open(p, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
sys.exit(0 if os.path.getsize(p) == 8 + n + end else 1)
PY
}
if ! checkpoint_complete; then
  parent=$(dirname "$MODEL_DIR")
  mkdir -p "$parent"
  free_bytes=$(df --output=avail -B1 "$parent" | tail -1 | tr -d ' ')
  need=$((14 * 1000 * 1000 * 1000))
  [ "$free_bytes" -ge "$need" ] ||
    die "$parent has $((free_bytes / 1000000)) MB free; the checkpoint needs 12.1 GB (refusing below 14 GB). Free space or pass another MODEL_DIR"
  log "making $MODEL_DIR (GPT-J-6B shape, f16, seed 1: 12.1 GB; a few minutes)"
  "$FERRY" make-model --preset gptj-6b --dtype f16 --seed 1 -o "$MODEL_DIR" >&2
  checkpoint_complete || die "make-model finished but $MODEL_DIR is not a complete checkpoint"
fi
WEIGHTS=$MODEL_DIR/model.safetensors
weights_bytes=$(stat -c %s "$WEIGHTS")

# Per-unit bytes in the order ferry streams them (layer 0..L-1, then lm_head), from the header:
# a layer's matrices (2-D tensors; norms and biases are kept apart), GPT-J or Llama-family names.
python3 - "$WEIGHTS" >"$OUT_DIR/units.json" <<'PY'
import json, re, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
h.pop("__metadata__", None)
size = lambda k: h[k]["data_offsets"][1] - h[k]["data_offsets"][0]
llama = "model.embed_tokens.weight" in h
prefix = r"model\.layers\.(\d+)\." if llama else r"transformer\.h\.(\d+)\."
embed = "model.embed_tokens.weight" if llama else "transformer.wte.weight"
layers = {}
for k in h:
    m = re.match(prefix, k)
    if m and len(h[k]["shape"]) == 2:
        layers[int(m[1])] = layers.get(int(m[1]), 0) + size(k)
units = [layers[l] for l in sorted(layers)]
units.append(size("lm_head.weight") if "lm_head.weight" in h else size(embed))
print(json.dumps({"units": units, "embedding": size(embed),
                  "total_tensor_bytes": sum(size(k) for k in h)}))
PY

# A view of the checkpoint without the tokenizer files: `ferry run --ids` then prints each token
# as "ID " and flushes, so the arrival time of every token on stdout can be stamped (ferry's own
# "decode N tok/s" has one decimal: 0.1 tok/s could be 7 to 20 s/token).
VIEW=$OUT_DIR/model-ids
mkdir -p "$VIEW"
for f in "$MODEL_DIR"/config.json "$MODEL_DIR"/*.safetensors "$MODEL_DIR"/*.safetensors.index.json; do
  [ -e "$f" ] && ln -sf "$(readlink -f "$f")" "$VIEW/"
done
cat >"$OUT_DIR/stamp.py" <<'PY'
# stdin -> argv[1] unchanged; argv[2]: JSON with the monotonic arrival time of each "ID " token
# of the first line, and of EOF.
import json, os, re, sys, time
out, buf, times, count = open(sys.argv[1], "wb"), b"", [], 0
t0 = time.monotonic()
while True:
    b = os.read(0, 65536)
    t = time.monotonic() - t0
    if not b:
        break
    out.write(b); out.flush()
    buf += b
    now = len(re.findall(rb"\d+ ", buf.split(b"\n", 1)[0]))
    times += [t] * (now - count)
    count = now
json.dump({"token_times": times, "eof": time.monotonic() - t0}, open(sys.argv[2], "w"))
PY

evict() {
  sync "$WEIGHTS" 2>/dev/null || sync
  python3 -c "
import os,sys
fd=os.open(sys.argv[1], os.O_RDONLY)
os.fdatasync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)" "$WEIGHTS"
}
cached_bytes() {  # page-cache bytes of the checkpoint (fincore), or "" when unknown
  if command -v fincore >/dev/null; then fincore -b -n -o RES "$WEIGHTS" 2>/dev/null | tr -d ' ' || true; fi
}

# ---- cgroups -----------------------------------------------------------------------------------
CGV=${CGROUP_VERSION:-auto}
if [ "$CGV" = auto ]; then
  if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then CGV=1
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then CGV=2
  else die "no memory cgroup controller: neither /sys/fs/cgroup/memory (v1) nor memory in /sys/fs/cgroup/cgroup.controllers (v2)"
  fi
fi
if [ "$CGV" = 1 ]; then
  # Nest under this shell's own memory cgroup, so whatever limits already bind it still bind.
  own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
  CG_PARENT=${CGROUP_PARENT:-/sys/fs/cgroup/memory${own%/}}
  [ -f "$CG_PARENT/memory.limit_in_bytes" ] || die "$CG_PARENT is not a cgroup v1 memory cgroup"
else
  # v2: a cgroup holding processes cannot delegate controllers (no internal processes), so
  # the default parent is the root, whose subtree_control must have +memory.
  CG_PARENT=${CGROUP_PARENT:-/sys/fs/cgroup}
  grep -qw memory "$CG_PARENT/cgroup.subtree_control" ||
    echo +memory >"$CG_PARENT/cgroup.subtree_control" ||
    die "cannot enable the memory controller in $CG_PARENT/cgroup.subtree_control"
fi
CG_PREFIX=ferry-e2e-$$
CG_CURRENT=""
POLL_PID=""

cg_remove() {  # $1 = cgroup dir; kills what is left in it (only this script's children can be)
  local cg=$1 pid tries
  [ -d "$cg" ] || return 0
  for tries in 1 2 3 4 5 6 7 8 9 10; do
    [ -s "$cg/cgroup.procs" ] || break
    while read -r pid; do
      # Back to the parent first if it is this shell; anything else in it is our child.
      if [ "$pid" = "$$" ]; then echo "$$" >"$CG_PARENT/cgroup.procs" || true
      else kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$cg/cgroup.procs"
    sleep 0.5
  done
  rmdir "$cg" 2>/dev/null || { sleep 1; rmdir "$cg"; } || echo "e2e_cgroup: warning: could not remove $cg" >&2
}
cleanup() {
  local rc=$?
  [ -n "$POLL_PID" ] && kill "$POLL_PID" 2>/dev/null || true
  [ -n "$CG_CURRENT" ] && cg_remove "$CG_CURRENT"
  local d
  for d in "$CG_PARENT/$CG_PREFIX"-*; do [ -d "$d" ] && cg_remove "$d"; done
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cg_create() {  # $1 = cgroup dir, $2 = cap in bytes
  local cg=$1
  mkdir "$cg"
  if [ "$CGV" = 1 ]; then
    echo "$2" >"$cg/memory.limit_in_bytes"
    if [ -f "$cg/memory.memsw.limit_in_bytes" ]; then echo "$2" >"$cg/memory.memsw.limit_in_bytes"; fi
    { echo 0 >"$cg/memory.swappiness"; } 2>/dev/null || true
  else
    echo "$2" >"$cg/memory.max"
    if [ -f "$cg/memory.swap.max" ]; then echo 0 >"$cg/memory.swap.max"; fi
  fi
}
cg_peak() {
  local cg=$1
  if [ "$CGV" = 1 ]; then cat "$cg/memory.max_usage_in_bytes"
  elif [ -f "$cg/memory.peak" ]; then cat "$cg/memory.peak"
  else sort -n "$OUT_DIR/poll.txt" 2>/dev/null | tail -1; fi
}
cg_oom_kills() {
  local cg=$1
  if [ "$CGV" = 1 ]; then
    # oom_kill is in memory.oom_control on 4.13+; failcnt of the limit is a weaker hint.
    awk '$1 == "oom_kill" {print $2; f=1} END {if (!f) print "?"}' "$cg/memory.oom_control"
  else
    awk '$1 == "oom_kill" {print $2}' "$cg/memory.events"
  fi
}

# run_capped NAME CAP_BYTES TIMEOUT_S LOG -- CMD...: runs CMD inside a fresh cgroup (stdout to
# LOG.out, stderr to LOG); sets RUN_RC, RUN_PEAK, RUN_OOMS, RUN_WALL.
run_capped() {
  local name=$1 cap=$2 tmo=$3 logf=$4; shift 5
  local cg t0 t1
  cg=$CG_PARENT/$CG_PREFIX-$name
  CG_CURRENT=$cg
  cg_create "$cg" "$cap"
  if [ "$CGV" = 2 ] && [ ! -f "$cg/memory.peak" ]; then
    : >"$OUT_DIR/poll.txt"
    (while :; do cat "$cg/memory.current" >>"$OUT_DIR/poll.txt" 2>/dev/null || exit 0; sleep 0.05; done) &
    POLL_PID=$!
  fi
  t0=$(date +%s.%N)
  set +e
  (
    echo "$BASHPID" >"$cg/cgroup.procs" || exit 125
    exec timeout -k 30 "$tmo" "$@"
  ) 2>"$logf" | python3 "$OUT_DIR/stamp.py" "$logf.out" "$logf.tokens"
  RUN_RC=${PIPESTATUS[0]}
  set -e
  t1=$(date +%s.%N)
  if [ -n "$POLL_PID" ]; then kill "$POLL_PID" 2>/dev/null || true; wait "$POLL_PID" 2>/dev/null || true; POLL_PID=""; fi
  [ "$RUN_RC" -ne 125 ] || die "could not move a process into $cg (cgroup.procs)"
  RUN_PEAK=$(cg_peak "$cg"); RUN_PEAK=${RUN_PEAK:-0}
  RUN_OOMS=$(cg_oom_kills "$cg"); RUN_OOMS=${RUN_OOMS:-?}
  RUN_WALL=$(python3 -c "print(f'{$t1-$t0:.1f}')")
  cg_remove "$cg"
  CG_CURRENT=""
}

# ---- bandwidths ----------------------------------------------------------------------------------
disk_bw() {  # bytes/s of a cold O_DIRECT io_uring read of the whole checkpoint
  local out
  evict
  out=$("$FERRY" bench-io "$WEIGHTS" --json --engine uring 2>>"$OUT_DIR/bench-io.err") ||
    die "ferry bench-io failed: $(tail -3 "$OUT_DIR/bench-io.err")"
  echo "$out" >>"$OUT_DIR/bench-io.txt"
  echo "$out" | tail -1 | python3 -c "import json,sys; print(json.load(sys.stdin)['uring']['bytes_per_s'])"
}
fio_bw() {  # bytes/s of fio's sequential O_DIRECT io_uring read of the file (1 MiB, qd 16)
  command -v fio >/dev/null || { echo ""; return; }
  evict
  fio --name=seq --filename="$WEIGHTS" --readonly --rw=read --direct=1 --ioengine=io_uring \
    --bs=1M --iodepth=16 --output-format=json 2>>"$OUT_DIR/fio.err" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['read']['bw_bytes'])" || echo ""
}
mem_bw() {  # bytes/s of bench_kernels' AVX2 read loop on every pool thread
  "$BENCH_KERNELS" --benchmark_filter='MemoryRead|ReadLoop' --benchmark_format=json 2>/dev/null |
    python3 -c "
import json,sys
b=[x for x in json.load(sys.stdin)['benchmarks'] if 'bytes_per_second' in x]
if not b: sys.exit('e2e_cgroup: bench_kernels ran no read-loop benchmark')
print(max(x['bytes_per_second'] for x in b))"
}

# ---- the runs --------------------------------------------------------------------------------
results=$OUT_DIR/results.tsv
: >"$results"
cached_before=""
log "checkpoint $WEIGHTS ($weights_bytes bytes); cgroup v$CGV under $CG_PARENT; logs in $OUT_DIR"
log "ferry: copy of $FERRY_SRC (sha256 $FERRY_SHA, built $(stat -c %y "$FERRY_SRC" | cut -d. -f1)), git HEAD $GIT_HEAD"
log "caps: $CAPS; variants: $VARIANTS; $ROUNDS rounds; -n $N_TOKENS; ids \"$IDS\""
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"

for round in $(seq 1 "$ROUNDS"); do
  d=$(disk_bw); fb=$(fio_bw); m=$(mem_bw)
  printf 'bw\t%s\t%s\t%s\t%s\n' "$round" "$d" "$m" "$fb" >>"$results"
  log "round $round: disk $(python3 -c "print(f'{$d/1e9:.2f}')") GB/s (ferry bench-io uring), ${fb:+$(python3 -c "print(f'{$fb/1e9:.2f}')") GB/s (fio), }memory $(python3 -c "print(f'{$m/1e9:.2f}')") GB/s"
  for cap in $CAPS; do
    cap_bytes=$(to_bytes "$cap")
    for v in $VARIANTS; do
      logf=$OUT_DIR/r$round-$cap-$v.log
      case $v in
        ferry)
          max_ram=$((cap_bytes - headroom_bytes))
          cmd=("$FERRY" run -m "$VIEW" --ids "$IDS" -n "$N_TOKENS" --ignore-eos --print-ids --max-ram "$max_ram")
          tmo=$FERRY_TIMEOUT ;;
        mmap)
          cmd=("$FERRY" run -m "$VIEW" --ids "$IDS" -n "$N_TOKENS" --ignore-eos --print-ids --mmap)
          tmo=$MMAP_TIMEOUT ;;
        load)
          cmd=(python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); print(len(d))' "$WEIGHTS")
          tmo=$LOAD_TIMEOUT ;;
        *) die "unknown variant $v (ferry, mmap, load)" ;;
      esac
      evict
      cached_before=$(cached_bytes)
      log "round $round, cap $cap, $v: ${cmd[*]}  (checkpoint cached before: ${cached_before:-?} bytes)"
      run_capped "$v-$round" "$cap_bytes" "$tmo" "$logf" -- "${cmd[@]}"
      rc=$RUN_RC peak=$RUN_PEAK ooms=$RUN_OOMS wall=$RUN_WALL
      printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cap" "$cap_bytes" "$v" "$rc" \
        "$peak" "$ooms" "$wall" "$logf" >>"$results"
      log "  exit $rc, peak $peak bytes ($(python3 -c "print(f'{$peak/2**30:.2f}')") GiB), oom kills $ooms, wall ${wall}s; $(grep -h '^ferry: prompt' "$logf" | sed 's/^ferry: //' || true)"
      if [ "$v" != load ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
        log "  $v failed; stderr tail:"; tail -5 "$logf" >&2
      fi
    done
  done
done

# ---- the table and the summary ---------------------------------------------------------------
python3 - "$results" "$OUT_DIR/units.json" "$weights_bytes" "$N_TOKENS" "$CGV" "$FERRY_SHA" "$GIT_HEAD" "$OUT_DIR" <<'PY'
import json, re, statistics, sys
results, units_json, weights_bytes, n_tokens, cgv = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ferry_sha, git_head, out_dir = sys.argv[6:9]
u = json.load(open(units_json))
units = u["units"]
bws, runs = [], []
for line in open(results):
    f = line.rstrip("\n").split("\t")
    if f[0] == "bw":
        bws.append((float(f[2]), float(f[3]), float(f[4]) if len(f) > 4 and f[4] else None))
    else:
        runs.append(dict(round=int(f[1]), cap=f[2], cap_bytes=int(f[3]), variant=f[4], exit=int(f[5]),
                         peak=int(f[6]) if f[6].isdigit() else None, oom_kills=f[7], wall_s=float(f[8]), log=f[9]))
# The disk's roofline: the faster of ferry bench-io's and fio's medians (same file, same rounds).
bench_io_bw = statistics.median(b[0] for b in bws)
fios = [b[2] for b in bws if b[2]]
fio_bw = statistics.median(fios) if fios else None
disk_bw = max(bench_io_bw, fio_bw or 0)
mem_bw = statistics.median(b[1] for b in bws)

def parse(run):
    err = open(run["log"], errors="replace").read()
    try:
        out = open(run["log"] + ".out", errors="replace").read()
    except OSError:
        out = ""
    m = re.search(r"decode ([0-9.]+) tok/s", err)
    run["decode_tok_s"] = float(m[1]) if m else None
    # s/token from the arrival times of the tokens on stdout: the first comes after the prompt
    # pass, each later one after one decode step.
    try:
        tt = json.load(open(run["log"] + ".tokens"))["token_times"]
    except (OSError, ValueError):
        tt = []
    run["token_times"] = tt
    run["s_per_token"] = (tt[-1] - tt[0]) / (len(tt) - 1) if len(tt) >= 2 and tt[-1] > tt[0] else None
    run["s_per_token_source"] = "token arrival times"
    if run["s_per_token"] is None and run["decode_tok_s"]:  # tokens coalesced (too fast to stamp)
        run["s_per_token"], run["s_per_token_source"] = 1.0 / run["decode_tok_s"], "ferry decode tok/s"
    m = re.search(r"^ferry: plan: (.*)$", err, re.M)
    run["plan"] = m[1] if m else None
    m = re.search(r"^ferry: (\d+ of \d+ units resident.*)$", err, re.M)
    run["streamer"] = m[1] if m else None
    m = re.search(r"(\d+) of (\d+) units resident", run["streamer"] or run["plan"] or "")
    run["resident_units"] = int(m[1]) if m else None
    # What the streamer read over the run (every pass reads the same streamed units): ferry's own
    # count, so the bound holds whichever units the plan streamed (prefix or spread).
    m = re.search(r"disk → host achieved [0-9.]+ GB/s over ([0-9.]+) (GiB|MiB)", err)
    run["streamed_bytes"] = float(m[1]) * (2**30 if m[2] == "GiB" else 2**20) if m else None
    m = re.search(r"^\[([0-9, ]*)\]\s*$", out, re.M)
    run["ids"] = [int(x) for x in m[1].split(",") if x.strip()] if m else None
    errs = [l for l in err.splitlines() if "error" in l or "warning" in l]
    run["errors"] = errs[-3:]
    return run

for r in runs:
    parse(r)

def killed(r):
    return r["exit"] in (137, -9) or (r["oom_kills"] not in ("0", "?", ""))

def status(r):
    if r["exit"] == 124: return "timeout"
    if killed(r): return "OOM-killed" if r["oom_kills"] not in ("0", "?", "") else "killed"
    return "ok" if r["exit"] == 0 else f"exit {r['exit']}"

ram_bytes = sum(units)  # every weight unit is read from RAM once per token
rows, summary = [], {"ferry_sha256_16": ferry_sha, "git_head": git_head, "logs": out_dir, "cgroup_version": int(cgv), "disk_bw_bytes_per_s": disk_bw, "mem_bw_bytes_per_s": mem_bw,
                     "bench_io_bw_bytes_per_s": bench_io_bw, "fio_bw_bytes_per_s": fio_bw,
                     "bandwidths_per_round": [{"bench_io": d, "fio": f, "mem": m} for d, m, f in bws],
                     "weights_bytes": weights_bytes, "unit_bytes_block": units[0], "unit_bytes_lm_head": units[-1],
                     "n_tokens": n_tokens, "caps": {}}
for cap in dict.fromkeys(r["cap"] for r in runs):
    cs = {}
    cap_bytes = next(r["cap_bytes"] for r in runs if r["cap"] == cap)
    bound = None
    for v in dict.fromkeys(r["variant"] for r in runs if r["cap"] == cap):
        rs = [r for r in runs if r["cap"] == cap and r["variant"] == v]
        sts = [status(r) for r in rs]
        peaks = [r["peak"] for r in rs if r["peak"] is not None]
        spt = [r["s_per_token"] for r in rs if r["exit"] == 0 and r["s_per_token"]]
        e = {"status": sts, "exit": [r["exit"] for r in rs], "oom_kills": [r["oom_kills"] for r in rs],
             "peak_bytes": peaks, "peak_max_bytes": max(peaks) if peaks else None,
             "peak_under_cap": all(p <= cap_bytes for p in peaks),
             "s_per_token": spt, "s_per_token_median": statistics.median(spt) if spt else None,
             "wall_s": [r["wall_s"] for r in rs],
             "ferry_decode_tok_s": [r["decode_tok_s"] for r in rs],
             "token_times_s": [[round(t, 3) for t in r["token_times"]] for r in rs]}
        if v == "ferry":
            res = [r["resident_units"] for r in rs if r["resident_units"] is not None]
            resident = res[0] if res else None
            e["plan"] = rs[0]["plan"]
            e["streamer"] = rs[0]["streamer"]
            streamed = [r["streamed_bytes"] for r in rs if r.get("streamed_bytes")]
            if resident is not None:
                # Passes: the prompt and n - 1 decode steps each read the streamed units once.
                disk_bytes = (streamed[0] / n_tokens if streamed and resident < len(units)
                              else sum(units[resident:]))
                bound = max(disk_bytes / disk_bw, ram_bytes / mem_bw)
                e.update(resident_units=resident, disk_bytes_per_token=disk_bytes, ram_bytes_per_token=ram_bytes,
                         bound_s_per_token=bound,
                         bound_by="disk" if disk_bytes / disk_bw >= ram_bytes / mem_bw else "memory")
                if e["s_per_token_median"]:
                    e["ratio"] = e["s_per_token_median"] / bound
                    e["ratio_per_run"] = [s / bound for s in spt]
        if v in ("ferry", "mmap"):
            ids = [r["ids"] for r in rs if r["ids"] is not None]
            e["ids"] = ids[0] if ids else None
            e["ids_consistent"] = all(i == ids[0] for i in ids) if ids else None
        errs = sorted({x for r in rs for x in r["errors"]})
        if errs: e["messages"] = errs
        cs[v] = e
    if "ferry" in cs and "mmap" in cs and cs["ferry"].get("ids") and cs["mmap"].get("ids"):
        cs["ids_ferry_equal_mmap"] = cs["ferry"]["ids"] == cs["mmap"]["ids"]
    if "ferry" in cs and "mmap" in cs and cs["ferry"]["s_per_token_median"] and cs["mmap"]["s_per_token_median"]:
        cs["mmap_over_ferry"] = cs["mmap"]["s_per_token_median"] / cs["ferry"]["s_per_token_median"]
    summary["caps"][cap] = cs
    for v, e in cs.items():
        if not isinstance(e, dict): continue
        gib = lambda b: f"{b / 2**30:.2f} GiB" if b is not None else "-"
        st = ",".join(sorted(set(e["status"])))
        rows.append((cap, v, f"{st} ({'/'.join(map(str, e['exit']))})", gib(e["peak_max_bytes"]),
                     f"{e['s_per_token_median']:.3f}" if e["s_per_token_median"] else ("timeout" if "timeout" in e["status"] else "-"),
                     f"{e['bound_s_per_token']:.3f} ({e['bound_by']})" if e.get("bound_s_per_token") else "-",
                     f"{e['ratio']:.2f}" if e.get("ratio") else "-"))

hdr = ("cap", "variant", "exit", "peak (max)", "s/token (median)", "bound s/token", "ratio")
w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
print(f"disk {disk_bw / 1e9:.2f} GB/s (faster of: ferry bench-io uring {bench_io_bw / 1e9:.2f}, "
      f"fio {fio_bw / 1e9 if fio_bw else float('nan'):.2f}; O_DIRECT, cold), memory {mem_bw / 1e9:.2f} GB/s "
      f"(bench_kernels read loop); medians of {len(bws)} rounds; s/token from token arrival times")
for x in [hdr] + rows:
    print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(x)))
for cap, cs in summary["caps"].items():
    if "ferry" in cs and cs["ferry"].get("plan"):
        print(f"{cap} ferry plan: {cs['ferry']['plan']}")
        print(f"{cap} ferry streamer: {cs['ferry']['streamer']}")
    if "ids_ferry_equal_mmap" in cs:
        print(f"{cap} generated ids ferry == mmap: {cs['ids_ferry_equal_mmap']}")
print(json.dumps(summary))
PY
