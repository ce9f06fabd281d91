#!/usr/bin/env bash
# Decode and prompt speed inside memory cgroups whose limits count the page cache (issue 15):
# for each limit and weight layout, the page cache is dropped, then `dscoder run -n 32` and
# `dscoder bench -p 128 -n 32` run inside a fresh cgroup; prints t/s, limit hits (v1 failcnt /
# v2 memory.events max), peak usage and whether the kernel killed it.
# usage (root): scripts/cgroup-bench.sh MODEL.gguf [GIB ...]   (default 8 12 16)
# env: DSCODER (binary), MODES (default "default --low-memory --repack"), THREADS
set -uo pipefail
model=$1; shift
limits=${*:-8 12 16}
bin=${DSCODER:-target/release/dscoder}
modes=${MODES:-default --low-memory --repack}
threads=${THREADS:-$(nproc)}
prompt="def quicksort(items):"
if [ -d /sys/fs/cgroup/memory ]; then v=1; root=/sys/fs/cgroup/memory; else v=2; root=/sys/fs/cgroup; fi
run_in() { # GIB CMD... : runs CMD in a new cgroup limited to GIB, prints its stats line
  local g=$1; shift
  local cg=$root/dscoder-bench-$$
  mkdir -p "$cg"
  if [ $v = 1 ]; then
    echo "${g}G" > "$cg/memory.limit_in_bytes"; echo 0 > "$cg/memory.swappiness" 2>/dev/null || true
  else
    echo "$((g << 30))" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
  fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$cg" "$@" > /tmp/cg.out 2> /tmp/cg.err
  local rc=$?
  local hits peak
  if [ $v = 1 ]; then hits=$(cat "$cg/memory.failcnt"); peak=$(cat "$cg/memory.max_usage_in_bytes")
  else hits=$(awk '/^max /{print $2}' "$cg/memory.events"); peak=$(cat "$cg/memory.peak" 2>/dev/null || echo 0); fi
  rmdir "$cg" 2>/dev/null
  echo "rc=$rc limit-hits=$hits peak=$(awk -v p="$peak" 'BEGIN{printf "%.2f GB", p/1e9}')$([ $rc = 137 ] && echo ' KILLED')"
}
for g in $limits; do
  for mode in $modes; do
    flag=$([ "$mode" = default ] && echo "" || echo "$mode")
    s=$(run_in "$g" "$bin" run "$model" --raw -p "$prompt" -n 32 --temp 0 --draft off --threads "$threads" $flag)
    gen=$(grep -o "[0-9]* generated ([0-9.]* t/s)" /tmp/cg.err | head -1)
    echo "${g} GiB $mode run -n 32: ${gen:-failed: $(tail -n 1 /tmp/cg.err)} $s"
    s=$(run_in "$g" "$bin" bench "$model" -p 128 -n 32 -r 1 --threads "$threads" $flag)
    res=$(grep -E 'pp128|tg32' /tmp/cg.out | awk '{print $4, $6}' | tr '\n' ' ')
    echo "${g} GiB $mode bench: ${res:-failed: $(tail -n 1 /tmp/cg.err)} $s"
  done
done
