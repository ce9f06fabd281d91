#!/usr/bin/env bash
# The RPC benchmark of BENCHMARKS.md: pp/tg of a model split over two loopback rpc-servers
# against one process, and the bytes each generated token sends over the links.
#
#   scripts/rpc-bench.sh MODEL.gguf [PP] [TG]
#
# Needs target/release/dscoder. A layer split is a pipeline with one token in flight, so only one
# server computes at a time: each gets all the cores (THREADS overrides). A counting proxy
# (scripts/rpc-traffic.py) sits in front of each, and traffic per token is the difference between
# a run generating 1 token and one generating 1+N, over N. SKIP_SPEED=1 measures traffic only.
set -euo pipefail
model=${1:?usage: scripts/rpc-bench.sh MODEL.gguf [PP] [TG]}
pp=${2:-512}
tg=${3:-128}
bin=${DSCODER:-target/release/dscoder}
threads=${THREADS:-$(nproc)}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# Speed is measured straight to the servers; traffic through a counting proxy in front of each.
direct=""
proxied=""
for i in 1 2; do
    s=$(port); p=$(port)
    "$bin" rpc-server --port "$s" --threads "$threads" >"$work/server$i.log" 2>&1 & pids+=($!)
    wait_port "$s"
    python3 "$(dirname "$0")/rpc-traffic.py" "$p" "127.0.0.1:$s" "$work/counts$i" & pids+=($!)
    wait_port "$p"
    direct+="${direct:+,}127.0.0.1:$s"
    proxied+="${proxied:+,}127.0.0.1:$p"
done

total() { cat "$work/counts1" "$work/counts2" | awk '{ up += $1; down += $2 } END { printf "%.0f %.0f\n", up, down }'; }

if [[ -z "${SKIP_SPEED:-}" ]]; then
    echo "== one process: $bin bench $model -p $pp -n $tg -r 2"
    "$bin" bench "$model" -p "$pp" -n "$tg" -r 2
    echo "== two loopback rpc-servers ($threads threads each): --rpc $direct"
    "$bin" bench "$model" -p "$pp" -n "$tg" -r 2 --rpc "$direct" 2>"$work/bench.err"
    grep -E "placement|RPC|CPU" "$work/bench.err" || true
fi

prompt="def quicksort(items):"
n=64
read -r up0 down0 < <(total)
"$bin" run "$model" "$prompt" --raw --temp 0 -n 1 --draft off --rpc "$proxied" >/dev/null 2>&1
read -r up1 down1 < <(total)
"$bin" run "$model" "$prompt" --raw --temp 0 -n $((n + 1)) --draft off --rpc "$proxied" >/dev/null 2>&1
read -r up2 down2 < <(total)
load=$(( (up1 - up0) + (down1 - down0) ))
per_token_up=$(( ((up2 - up1) - (up1 - up0)) / n ))
per_token_down=$(( ((down2 - down1) - (down1 - down0)) / n ))
echo "== traffic (both servers together)"
echo "load + 1 token: $load bytes"
echo "per generated token: $per_token_up bytes client->servers, $per_token_down bytes servers->client"
