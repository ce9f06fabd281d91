#!/usr/bin/env bash
# The editor session of scripts/editor-bench.py against dscoder serve and llama-server, one after
# another on the same model, file and cursor, 2 threads each, one sequence, 4096 tokens of context.
# usage: scripts/editor-bench-compare.sh MODEL.gguf FILE.py CURSOR_LINE OUTDIR [LLAMA_SERVER...]
# Each LLAMA_SERVER is a path to a llama-server binary (e.g. .vendor/llama-server-build/bin/llama-server).
# REQUESTS (default 30) sets the steps; DSCODER_LAST=1 runs dscoder after the llama-servers.
set -euo pipefail
model=$1 file=$2 line=$3 out=$4; shift 4
mkdir -p "$out"
port=8731
wait_up() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.2; done; return 1; }
run() { # name, command...
  local name=$1; shift
  if curl -s "http://127.0.0.1:$port/health" >/dev/null; then echo "port $port is taken" >&2; exit 1; fi
  "$@" > "$out/$name.server.log" 2>&1 &
  local pid=$!
  wait_up
  kill -0 $pid  # it is our server that answers
  python3 "$(dirname "$0")/editor-bench.py" "http://127.0.0.1:$port" --file "$file" --cursor-line "$line" \
    --requests "${REQUESTS:-30}" --n-predict 16 --json "$out/$name.json" 2> "$out/$name.requests.log"
  kill -TERM $pid || true; wait $pid || true
}
ours() { run dscoder target/release/dscoder serve "$model" --port $port -c 4096 --threads 2; }
[ -n "${DSCODER_LAST:-}" ] || ours
i=0
for server in "$@"; do
  i=$((i + 1))
  run "llama-server-$i" env LD_LIBRARY_PATH="$(dirname "$server")" "$server" -m "$model" --host 127.0.0.1 \
    --port $port -c 4096 -np 1 -t 2 -b 4096 -ub 512
done
[ -z "${DSCODER_LAST:-}" ] || ours
