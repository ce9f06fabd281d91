#!/usr/bin/env bash
# Perplexity and KL divergence of quantized conversions of the bundled nano model against its BF16
# conversion, on held-out code (BENCHMARKS.md, "Quantization quality on the nano model").
#   scripts/quality-table.sh [DSCODER] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-target/release/dscoder}
W=${2:-$(mktemp -d)}
mkdir -p "$W"
text=nano/heldout.py.txt
"$D" convert nano/model -o "$W/bf16.gguf" -t bf16 >/dev/null
echo "| model | file size | bits/weight | perplexity | mean KL vs bf16 | 99th pct KL | same top-1 |"
echo "|---|---:|---:|---:|---:|---:|---:|"
row() { # label convert-args...
    local label=$1
    shift
    local m="$W/$label.gguf"
    [[ -f "$m" ]] || "$D" convert nano/model -o "$m" "$@" >/dev/null
    local bpw
    bpw=$("$D" info "$m" --json | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["total"]["bpw"])')
    "$D" perplexity "$m" -f "$text" --chunk-size 256 --kl-base "$W/bf16.gguf" --json |
        python3 -c '
import json, os, sys
j = json.load(sys.stdin)
size = os.path.getsize(sys.argv[2]) / 1e6
k = j["kl"]
ppl, err = j["perplexity"], j["perplexity_error"]
print("| %s | %.2f MB | %s | %.4f ± %.4f | %.5f | %.5f | %.2f%% |" % (sys.argv[1], size, sys.argv[3], ppl, err, k["mean"], k["p99"], 100 * k["top1_agreement"]))
' "$label" "$m" "$bpw"
}
row bf16 -t bf16
row q8_0 -t q8_0
row q6_k -t q6_k
row q5_k_m -t q5_k_m
row q4_k_m -t q4_k_m
row q4_0 -t q4_0
row "q8_0, experts q4_k" -t q8_0 --experts q4_k
row "q4_k_m, attn+shared q8_0" -t q4_k_m --attn q8_0 --shared q8_0
row "q8_0, experts q4_0" -t q8_0 --experts q4_0
