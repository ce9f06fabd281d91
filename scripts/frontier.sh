#!/usr/bin/env bash
# The speed/quality frontier (BENCHMARKS.md, "The low-bit frontier"): every file type and the
# expert-aware mixes, with and without an importance matrix, on the bundled nano model (quality
# and decode speed) and the Lite-shaped synthetic model (file size).
#
#   scripts/frontier.sh [DSCODER] [WORKDIR] [LITE.gguf] [LITE.imatrix]
#   SPEED=1 scripts/frontier.sh [DSCODER] [WORKDIR]   # then: decode speed of the files made above
#
# The speed pass is separate so that it can run on a quiet machine (nothing else compiling).
# Writes benchmarks/frontier-nano.csv; then `cargo run --release --example frontier_plot` draws
# docs/frontier.png from it. For each recipe: nano converted from its checkpoint (nano/model),
# perplexity and KL divergence against its BF16 conversion on the held-out text
# (`dscoder perplexity --kl-base`, chunks of 256), decode speed (`dscoder bench -p 0 -n 128 -r 3`,
# 2 threads), and the size the same recipe gives DeepSeek-Coder-V2-Lite (`dscoder quantize
# --dry-run` on the Lite-shaped synthetic file; with LITE.imatrix for the rules that depend on
# an importance matrix). The importance matrix of nano is `dscoder imatrix` over the shipped
# calibration code (never the held-out text).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-target/release/dscoder}
W=${2:-$(mktemp -d)}
LITE=${3:-.vendor/lite27-q4_k_m.gguf}
LITE_IMX=${4:-.vendor/lite27.imatrix}
OUT=benchmarks/frontier-nano.csv
text=nano/heldout.py.txt
mkdir -p "$W" benchmarks
file_of() { echo "$W/$(echo "$1-$2" | tr -c 'a-zA-Z0-9_\n-' '_').gguf"; }
if [[ ${SPEED:-0} == 1 ]]; then
    tmp=$(mktemp)
    head -1 "$OUT" >"$tmp"
    tail -n +2 "$OUT" | while IFS= read -r line; do
        label=$(python3 -c 'import csv,sys; print(next(csv.reader([sys.argv[1]]))[0])' "$line")
        im=$(python3 -c 'import csv,sys; print(next(csv.reader([sys.argv[1]]))[1])' "$line")
        tg=$("$D" bench "$(file_of "$label" "$im")" -p 0 -n 128 -r 3 --threads 2 --json 2>/dev/null |
            python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["tg"]["tokens_per_second"])')
        echo "${line%,*},$tg" | tee -a "$tmp"
    done
    mv "$tmp" "$OUT"
    exit 0
fi
[[ -f "$W/bf16.gguf" ]] || "$D" convert nano/model -o "$W/bf16.gguf" -t bf16 >/dev/null
[[ -f "$W/nano.imatrix" ]] || "$D" imatrix "$W/bf16.gguf" -o "$W/nano.imatrix" >/dev/null

echo "label,imatrix,lite_bytes,lite_bpw,nano_bpw,perplexity,kl_mean,kl_p99,top1,tg_tps" >"$OUT"
lite_size() { # imatrix(0/1) type-and-override args...
    local im=$1
    shift
    local extra=()
    [[ $im == 1 ]] && extra=(--imatrix "$LITE_IMX")
    "$D" quantize --dry-run "$LITE" "$W/lite.gguf" --allow-requantize "${extra[@]}" "$@" |
        awk '$1 == "total" { printf "%.0f,%.3f", $2 * $NF / 8, $NF }'
}
row() { # label imatrix(0/1) convert-args...
    local label=$1 im=$2
    shift 2
    local m
    m=$(file_of "$label" "$im")
    local extra=()
    [[ $im == 1 ]] && extra=(--imatrix "$W/nano.imatrix")
    [[ -f "$m" ]] || "$D" convert nano/model -o "$m" "$@" "${extra[@]}" >/dev/null
    local bpw quality tg size
    bpw=$("$D" info "$m" --json | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["total"]["bpw"])')
    quality=$("$D" perplexity "$m" -f "$text" --chunk-size 256 --kl-base "$W/bf16.gguf" --json |
        python3 -c 'import json,sys; j=json.load(sys.stdin); k=j["kl"]; print("%.4f,%.6f,%.6f,%.4f" % (j["perplexity"], k["mean"], k["p99"], k["top1_agreement"]))')
    tg=""
    size=$(lite_size "$im" "$@")
    echo "\"$label\",$im,$size,$bpw,$quality,$tg" | tee -a "$OUT"
}
for im in 0 1; do
    for t in q8_0 q6_k q5_k_m q4_k_m q4_k_s iq4_xs iq4_nl q4_0 q3_k_l q3_k_m q3_k_s iq3_m iq3_s q2_k; do
        row "$t" $im -t "$t"
    done
    row "q8_0, experts q4_k" $im -t q8_0 --experts q4_k
    row "q8_0, experts iq4_xs" $im -t q8_0 --experts iq4_xs
    row "q6_k, experts q3_k" $im -t q6_k --experts q3_k
    row "q6_k, experts iq3_s" $im -t q6_k --experts iq3_s
    row "q4_k_m, attn+shared q8_0" $im -t q4_k_m --attn q8_0 --shared q8_0
    row "q4_k_m, attn q8_0" $im -t q4_k_m --attn q8_0
done
# The types ggml cannot write without an importance matrix.
for t in iq3_xxs iq2_m iq2_s iq2_xs iq2_xxs q2_k_s iq1_m iq1_s; do
    row "$t" 1 -t "$t"
done
row "q6_k, experts iq3_xxs" 1 -t q6_k --experts iq3_xxs
row "q6_k, experts iq2_s" 1 -t q6_k --experts iq2_s
row "q8_0, experts iq3_xxs" 1 -t q8_0 --experts iq3_xxs
echo "wrote $OUT"
