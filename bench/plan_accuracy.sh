#!/usr/bin/env bash
# How well the planner predicts: three make-model sizes × three RAM budgets on the CPU backend
# (everything resident, so compute-bound; and two that stream, so disk-bound).
# Each run is `ferry run --max-ram B` inside a memory cgroup capped at B (v1 or v2; needs root),
# and ferry prints its plan's prediction next to what it measured (decode s/token; peak RSS as
# the kernel's VmHWM). The table compares them; the targets are peak RSS within 10% and s/token
# within 25%. Every case runs twice: the first plans with the disk and CPU figures probed just
# before it (`ferry plan --reprobe`: a 2×256 MiB O_DIRECT read and a 128 MiB mat-vec), the
# second with what the first run achieved fed back into the probe cache (as every `ferry run`
# and `ferry profile` does). The table shows each run's prediction against its measure; the
# disk rate the run achieved is shown beside the one the probe measured, since this VM's
# virtual disk drifts by 2× over minutes, and "run disk" is the cost model alone: the plan's
# prediction given the disk rate the run achieved (`ferry plan --disk-bw`).
#
#   bench/plan_accuracy.sh            # env: FERRY, WORK (models, default /tmp/ferry-plan-accuracy),
#                                     #      N_TOKENS (decode steps, default 8), KEEP=1 keeps models
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${FERRY:-build/tools/ferry}
WORK=${WORK:-/tmp/ferry-plan-accuracy}
N_TOKENS=${N_TOKENS:-8}
[ -x "$FERRY" ] || { echo "plan_accuracy: build ferry first (scripts/setup.sh)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "plan_accuracy: needs root for memory cgroups" >&2; exit 1; }
mkdir -p "$WORK"

# name: make-model flags (f16, GPT-2 vocabulary)
declare -A MODELS=(
  [small]="--n-layer 8 --n-embd 1024 --n-inner 4096 --n-head 8 --rotary-dim 64"
  [medium]="--n-layer 12 --n-embd 2048 --n-inner 8192 --n-head 16 --rotary-dim 64"
  [large]="--n-layer 6 --n-embd 4096 --n-inner 16384 --n-head 16 --rotary-dim 64"
)
for name in small medium large; do
  if [ ! -f "$WORK/$name/config.json" ]; then
    # shellcheck disable=SC2086
    "$FERRY" make-model --preset gptj-6b ${MODELS[$name]} --dtype f16 --seed 7 -o "$WORK/$name" >&2
  fi
done

FERRY="$FERRY" WORK="$WORK" N_TOKENS="$N_TOKENS" python3 - <<'PY'
import json, os, re, subprocess, sys, time

ferry, work, n = os.environ["FERRY"], os.environ["WORK"], int(os.environ["N_TOKENS"])
prompt = "464 2068 7586 21831 18045 625 262 16931"
n_prompt = len(prompt.split())

def cgroup_root():
    if os.path.isdir("/sys/fs/cgroup/memory"):
        return 1, "/sys/fs/cgroup/memory"
    return 2, "/sys/fs/cgroup"

def run_capped(cap, args):
    v, root = cgroup_root()
    cg = f"{root}/ferry-plan-acc-{os.getpid()}"
    os.mkdir(cg)
    try:
        if v == 1:
            open(f"{cg}/memory.limit_in_bytes", "w").write(str(cap))
        else:
            open(f"{cg}/memory.max", "w").write(str(cap))
        def enter():
            open(f"{cg}/cgroup.procs", "w").write(str(os.getpid()))
        p = subprocess.run(args, preexec_fn=enter, capture_output=True, text=True)
        peak_file = "memory.max_usage_in_bytes" if v == 1 else "memory.peak"
        try:
            peak = int(open(f"{cg}/{peak_file}").read())
        except OSError:
            peak = 0
        return p, peak
    finally:
        os.rmdir(cg)

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
def size(s):
    num, unit = s.split()
    return float(num) * UNITS[unit]

rows = []
for name in ["small", "medium", "large"]:
    model = f"{work}/{name}"
    ctx = n_prompt + n
    plan = json.loads(subprocess.run([ferry, "plan", "-m", model, "--json", "--max-ram", "64GiB",
                                      "--ctx", str(ctx), "--no-measure"],
                                     check=True, capture_output=True, text=True).stdout)
    weights = sum(l["bytes"] for l in plan["layers"])
    other = plan["peak_ram_bytes"] - weights
    # Between the least that streams (two slots of the largest unit) and everything resident.
    lo = other + 2 * max(l["bytes"] for l in plan["layers"])
    # Everything resident (compute-bound), then two streamed budgets (disk-bound).
    for frac in (1.05, 0.6, 0.2):
        budget = int(lo + frac * (other + weights - lo)) + (16 << 20)
        subprocess.run([ferry, "plan", "-m", model, "--reprobe", "--max-ram", str(budget),
                        "--ctx", str(ctx)],
                       check=True, capture_output=True)
        args = [ferry, "run", "-m", model, "--ids", prompt, "-n", str(n), "--ignore-eos",
                "--max-ram", str(budget)]
        runs = []
        for attempt in range(2):
            p, cg_peak = run_capped(budget, args)
            if p.returncode != 0:
                print(f"{name} budget {budget}: exit {p.returncode}\n{p.stderr}", file=sys.stderr)
                break
            m = re.search(r"predicted ([\d.]+) s/token, peak RAM ([\d.]+ \w+); measured "
                          r"([\d.]+) s/token, peak RSS ([\d.]+ \w+)", p.stderr)
            d = re.search(r"disk → host achieved ([\d.]+) GB/s .*planned with ([\d.]+)\)",
                          p.stderr)
            c = re.search(r"compute achieved ([\d.]+) GB/s", p.stderr)
            plan_line = re.search(r"^ferry: plan: (.*)$", p.stderr, re.M).group(1)
            runs.append(dict(pred_s=float(m.group(1)), pred_rss=size(m.group(2)),
                             s=float(m.group(3)), rss=size(m.group(4)), cg_peak=cg_peak,
                             disk=float(d.group(1)) if d else None,
                             cpu=float(c.group(1)) if c else None,
                             planned_disk=float(d.group(2)) if d else None, plan=plan_line))
        if len(runs) < 2:
            continue
        first, second = runs
        # The cost model alone: the same plan predicted with the disk and CPU rates the run
        # achieved.
        given = second["pred_s"]
        if second["disk"] or second["cpu"]:
            extra = []
            if second["disk"]:
                extra += ["--disk-bw", f"{second['disk']}GB/s"]
            if second["cpu"]:
                extra += ["--cpu-bw", f"{second['cpu']}GB/s"]
            j = json.loads(subprocess.run(
                [ferry, "plan", "-m", model, "--json", "--max-ram", str(budget), "--ctx", str(ctx)] + extra,
                check=True, capture_output=True, text=True).stdout)
            given = j["s_per_token"]
        rows.append(dict(model=name, weights=weights, budget=budget, pred_rss=second["pred_rss"],
                         rss=second["rss"], cg_peak=second["cg_peak"], probe_s=first["pred_s"],
                         probe_disk=first["planned_disk"], probe_run_s=first["s"],
                         pred_s=second["pred_s"], given_s=given,
                         s=second["s"], disk=second["disk"], plan=second["plan"]))

gib = 2**30
print(f"{'model':<7} {'weights':>8} {'budget':>8} {'pred RSS':>9} {'VmHWM':>8} {'err':>6} "
      f"{'cg peak':>8} {'s/t 1':>7} {'probed':>7} {'err':>6} {'s/t 2':>7} {'learned':>8} {'err':>6} "
      f"{'run disk':>8} {'err':>6} {'disk GB/s: probe':>16} {'run':>5}")
n_rss = n_probe = n_learned = n_given = 0
fmt_disk = lambda v: f"{v:.2f}" if v is not None else "-"
for r in rows:
    e_rss = (r["pred_rss"] - r["rss"]) / r["rss"]
    e_s = (r["pred_s"] - r["s"]) / r["s"]
    e_p = (r["probe_s"] - r["probe_run_s"]) / r["probe_run_s"]
    e_g = (r["given_s"] - r["s"]) / r["s"]
    n_rss += abs(e_rss) <= 0.10
    n_probe += abs(e_p) <= 0.25
    n_learned += abs(e_s) <= 0.25
    n_given += abs(e_g) <= 0.25
    print(f"{r['model']:<7} {r['weights']/gib:>7.2f}G {r['budget']/gib:>7.2f}G "
          f"{r['pred_rss']/gib:>8.3f}G {r['rss']/gib:>7.3f}G {e_rss:>+6.1%} "
          f"{r['cg_peak']/gib:>7.3f}G {r['probe_run_s']:>7.3f} {r['probe_s']:>7.3f} {e_p:>+6.1%} "
          f"{r['s']:>7.3f} {r['pred_s']:>8.3f} {e_s:>+6.1%} {r['given_s']:>8.3f} {e_g:>+6.1%} "
          f"{fmt_disk(r['probe_disk']):>16} "
          f"{fmt_disk(r['disk']):>5}")
for r in rows:
    print(f"  {r['model']} @ {r['budget']/gib:.2f} GiB: {r['plan']}")
k = len(rows)
print(f"peak RSS within 10%: {n_rss}/{k}; s/token within 25%: probed just before {n_probe}/{k}, "
      f"learned from the previous run {n_learned}/{k}, given the run's own rates {n_given}/{k}")
PY
[ "${KEEP:-1}" = 1 ] || rm -rf "$WORK"
