#!/usr/bin/env bash
# Weight layouts side by side (issue 15): pp512/tg128 and peak RSS of dscoder with its default,
# --low-memory and --repack, and of llama.cpp b11434 (../shared/scripts/build-peer-llama.sh)
# with --repack 1 and 0, interleaved in rounds on one model.
# usage: scripts/laptop-bench.sh MODEL.gguf [ROUNDS] [DSCODER]   (nothing else should run meanwhile)
set -euo pipefail
model=$1
rounds=${2:-2}
bin=${3:-target/release/dscoder}
peer=${PEER:-.vendor/peer/build/bin}
threads=${THREADS:-$(nproc)}
rss() { grep "Maximum resident" "$1" | awk '{printf "%.2f GB", $NF/1e6}'; }
for r in $(seq "$rounds"); do
  for mode in default --low-memory --repack; do
    flag=$([ "$mode" = default ] && echo "" || echo "$mode")
    /usr/bin/time -v -o /tmp/lb.time "$bin" bench "$model" -p 512 -n 128 -r 1 --threads "$threads" $flag \
      > /tmp/lb.out 2>/tmp/lb.err || { cat /tmp/lb.err >&2; exit 1; }
    echo "round $r dscoder $mode: $(grep -E 'pp512|tg128' /tmp/lb.out | awk '{print $4, $6}' | tr '\n' ' ') peak RSS $(rss /tmp/lb.time)"
  done
  if [ -x "$peer/llama-bench" ]; then
    for rp in 1 0; do
      LD_LIBRARY_PATH=$peer /usr/bin/time -v -o /tmp/lb.time "$peer/llama-bench" -m "$model" -p 512 -n 128 -r 1 \
        -t "$threads" --repack "$rp" -o csv > /tmp/lb.out 2>/tmp/lb.err || { tail /tmp/lb.err >&2; exit 1; }
      echo "round $r llama.cpp b11434 --repack $rp: $(tail -n 2 /tmp/lb.out | awk -F, '{print $(NF-1)}' | tr -d '"' | tr '\n' ' ') peak RSS $(rss /tmp/lb.time)"
    done
  fi
done
