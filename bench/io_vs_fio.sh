#!/usr/bin/env bash
# ferry's io_uring engine against fio on the same file, same disk, same run: fio's sequential
# O_DIRECT io_uring read (1 MiB blocks, iodepth 16) is the roofline `ferry bench-io` is judged
# against (target: ferry/fio >= 0.9). The two alternate, ROUNDS times each, because shared
# machines are noisy; the medians and their ratio are printed. Nothing here asserts a timing.
#
#   bench/io_vs_fio.sh [FILE]            FILE defaults to a 2 GiB file made (once) by fio
#   env: FERRY=path/to/ferry  SIZE=2GiB  ROUNDS=3  QD=16  CHUNK=1MiB  BENCH_DIR=/var/tmp
set -euo pipefail
cd "$(dirname "$0")/.."

FERRY=${FERRY:-}
if [ -z "$FERRY" ]; then
  for candidate in build/tools/ferry build-io/tools/ferry; do
    if [ -x "$candidate" ]; then FERRY=$candidate; break; fi
  done
fi
[ -n "$FERRY" ] && [ -x "$FERRY" ] || { echo "io_vs_fio: no ferry binary; build it or set FERRY=" >&2; exit 2; }
command -v fio >/dev/null || { echo "io_vs_fio: fio not found (apt-get install fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "io_vs_fio: python3 is needed to read the JSON" >&2; exit 2; }

SIZE=${SIZE:-2GiB}
ROUNDS=${ROUNDS:-3}
QD=${QD:-16}
CHUNK=${CHUNK:-1MiB}
size_bytes=$(python3 -c "
import re,sys
m=re.fullmatch(r'(\d+)\s*([KMGT]?)(i?)B?', sys.argv[1], re.I)
if not m: sys.exit('bad SIZE: ' + sys.argv[1])
n,u,i=int(m[1]),m[2].upper(),m[3]
print(n*(1024 if i else 1000)**'_KMGT'.index(u or '_'))" "$SIZE")
chunk_bytes=$(python3 -c "
import re,sys
m=re.fullmatch(r'(\d+)\s*([KMG]?)(i?)B?', sys.argv[1], re.I)
n,u,i=int(m[1]),m[2].upper(),m[3]
print(n*(1024 if i else 1000)**'_KMG'.index(u or '_'))" "$CHUNK")

FILE=${1:-}
if [ -z "$FILE" ]; then
  FILE=${BENCH_DIR:-/var/tmp}/ferry-io-bench-$size_bytes.bin
  if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -lt "$size_bytes" ]; then
    echo "== making $FILE ($SIZE) with fio"
    fio --name=make --filename="$FILE" --size="$size_bytes" --rw=write --bs=1M --direct=1 \
      --ioengine=io_uring --iodepth=16 --output=/dev/null
  fi
fi
[ -f "$FILE" ] || { echo "io_vs_fio: $FILE is not a file" >&2; exit 2; }
file_bytes=$(stat -c %s "$FILE")
read_bytes=$(( file_bytes < size_bytes ? file_bytes : size_bytes ))
echo "== $FILE: reading $read_bytes bytes, qd $QD, chunk $CHUNK, $ROUNDS rounds each"
echo "   device: $(df --output=source "$FILE" | tail -1), kernel $(uname -r), ferry $FERRY"

evict() {
  python3 -c "
import os,sys
fd=os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)" "$FILE"
}

fio_rates=()
ferry_rates=()
for round in $(seq 1 "$ROUNDS"); do
  evict
  fio_json=$(fio --name=seq --filename="$FILE" --rw=read --direct=1 --ioengine=io_uring \
    --bs="$chunk_bytes" --iodepth="$QD" --size="$read_bytes" --output-format=json)
  fio_rate=$(python3 -c "
import json,sys
print(json.load(sys.stdin)['jobs'][0]['read']['bw_bytes'])" <<<"$fio_json")
  # bench-io evicts the file from the page cache itself before it reads.
  ferry_json=$("$FERRY" bench-io "$FILE" --json --engine uring --size "$read_bytes" \
    --queue-depth "$QD" --chunk "$CHUNK" | tail -n 1)
  ferry_rate=$(python3 -c "
import json,sys
r=json.load(sys.stdin)['uring']
if r['bytes_per_s'] is None: sys.exit('ferry bench-io failed: ' + r.get('error',''))
print(int(r['bytes_per_s']))" <<<"$ferry_json")
  fio_rates+=("$fio_rate")
  ferry_rates+=("$ferry_rate")
  python3 -c "
import sys
f,g=int(sys.argv[2]),int(sys.argv[3])
print(f'round {sys.argv[1]}: fio {f/1e9:.3f} GB/s   ferry uring {g/1e9:.3f} GB/s   ratio {g/f:.3f}')" \
    "$round" "$fio_rate" "$ferry_rate"
done

python3 - "${fio_rates[*]}" "${ferry_rates[*]}" <<'PY'
import statistics, sys
fio = [int(x) for x in sys.argv[1].split()]
ferry = [int(x) for x in sys.argv[2].split()]
f, g = statistics.median(fio), statistics.median(ferry)
ratio = g / f
print(f"median: fio {f/1e9:.3f} GB/s, ferry uring {g/1e9:.3f} GB/s")
print(f"ratio ferry-uring/fio: {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'missed'})")
PY

echo "== every engine once, for context"
"$FERRY" bench-io "$FILE" --size "$read_bytes" --queue-depth "$QD" --chunk "$CHUNK"
