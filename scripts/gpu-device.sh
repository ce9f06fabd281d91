#!/usr/bin/env bash
# dscoder's GPU checks and benchmarks, on a machine with an NVIDIA GPU, CUDA (nvcc), CMake and
# ninja but no Rust (scripts/gpu-prepare.sh makes the inputs on a machine with Rust).
#
#   scripts/gpu-device.sh build          CUDA build of the vendored llama.cpp (shared libraries)
#   scripts/gpu-device.sh check OUT      GPU vs CPU on the committed fixtures (KL, greedy text)
#   scripts/gpu-device.sh bench OUT      Lite-shaped Q4_K_M: all layers, --cpu-moe, auto at 6
#                                        and 2 GiB, the best whole-layer count, and CPU only
#   scripts/gpu-device.sh bench-cpu OUT  only the CPU-only setup (a CPU build of the same source)
#
# dscoder is built with `--features dynamic-link`, so it runs on whichever llama.cpp shared
# libraries LD_LIBRARY_PATH names: here, the CUDA build of the very source it was built from.
# A comparison llama-bench, when .vendor/llama-bench/build.sh exists, links the same libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${GPU_BUILD:-/tmp/llama-cuda}
G=${GPU_WORK:-/tmp/dscoder-gpu}
JOBS=${JOBS:-$(nproc)}
THREADS=${THREADS:-$(nproc)}
D=.gpu/bin/dscoder
mkdir -p "$G"
export LD_LIBRARY_PATH="$B/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

build() {
    if [[ -f "$B/.done" ]]; then
        echo "build: $B already built"
        return
    fi
    local src=/tmp/llama-src
    rm -rf "$src" && cp -a .vendor/llama.cpp "$src"
    local t0=$SECONDS
    cmake -S "$src" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_CUDA=ON -DGGML_CUDA_NCCL=OFF -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
        -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF >/dev/null
    cmake --build "$B" -j "$JOBS" --target llama llama-common
    echo "build: llama.cpp with CUDA in $((SECONDS - t0)) s"
    if [[ -x .vendor/llama-bench/build.sh ]]; then
        .vendor/llama-bench/build.sh "$B" "$B/bin/llama-bench"
    fi
    touch "$B/.done"
}

# A CPU-only build of the same source: with CUDA linked in, llama.cpp uses the GPU for large
# batches even at 0 layers, and hiding the device makes it abort, so "CPU only" needs its own.
build_cpu() {
    local C=${CPU_BUILD:-/tmp/llama-cpu}
    [[ -f "$C/.done" ]] && return
    local src=/tmp/llama-src-cpu
    rm -rf "$src" && cp -a .vendor/llama.cpp "$src"
    # Not GGML_NATIVE: on a CPU with AMX that also compiles ggml's AMX buffer type, and then
    # llama.cpp aborts on this model (GGML_ASSERT(*cur_backend_id != -1) in the scheduler).
    cmake -S "$src" -B "$C" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF >/dev/null
    cmake --build "$C" -j "$JOBS" --target llama llama-common
    if [[ -x .vendor/llama-bench/build.sh ]]; then
        .vendor/llama-bench/build.sh "$C" "$C/bin/llama-bench"
    fi
    touch "$C/.done"
}

convert() { # fixture type
    local out="$G/$1-$2.gguf"
    [[ -f "$out" ]] || "$D" convert "tests/fixtures/$1" -o "$out" -t "$2" >/dev/null
    echo "$out"
}

check() {
    local out=$1 m
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$out/gpu.txt"
    for ty in f32 bf16 q8_0 q4_k_m; do
        m=$(convert lite-tiny "$ty")
        for mode in "--gpu-layers all" "--cpu-moe" "--gpu-layers auto --vram-budget 0.2625"; do
            echo "== check lite-tiny $ty $mode (base: the same file on the CPU)"
            # shellcheck disable=SC2086
            "$D" perplexity "$m" -f tests/fixtures/heldout.py.txt --chunk-size 64 \
                --kl-base "$m" --base-on-cpu $mode --json |
                tee "$out/check-$ty-${mode// /_}.json" | grep -E '"(mean|p99|top1_agreement|perplexity)"'
        done
    done
    m=$(convert lite-tiny f32)
    local prompt='def quicksort(items):'
    CUDA_VISIBLE_DEVICES= "$D" run "$m" --raw -p "$prompt" -n 32 --temp 0 >"$out/greedy-cpu.txt"
    "$D" run "$m" --raw -p "$prompt" -n 32 --temp 0 --gpu-layers all >"$out/greedy-gpu.txt"
    if cmp -s "$out/greedy-cpu.txt" "$out/greedy-gpu.txt"; then
        echo "greedy: GPU text == CPU text"
    else
        echo "greedy: GPU text DIFFERS from CPU text"
    fi
}

# One setup: dscoder bench, then llama-bench with the equivalent flags.
bench_one() { # out label "dscoder flags" "llama-bench flags" [env]
    local out=$1 label=$2 dflags=$3 lflags=$4 envs=${5:-}
    local m="$G/lite-q4_k_m.gguf"
    echo "== $label"
    # shellcheck disable=SC2086
    env $envs "$D" bench "$m" -p 512 -n 128 -r 3 --threads "$THREADS" $dflags \
        >"$out/bench-$label.md" 2>"$out/bench-$label.err" || true
    cat "$out/bench-$label.err" "$out/bench-$label.md"
    if [[ -n "$lflags" && -x "$B/bin/llama-bench" ]]; then
        # shellcheck disable=SC2086
        env $envs "$B/bin/llama-bench" -m "$m" -p 512 -n 128 -r 3 -t "$THREADS" -b 512 -ub 512 \
            $lflags -o md >"$out/llama-bench-$label.md" 2>"$out/llama-bench-$label.err" || true
        cat "$out/llama-bench-$label.md"
    fi
}

synthetic() {
    local m="$G/lite-q4_k_m.gguf"
    if [[ ! -f "$m" ]]; then
        local t0=$SECONDS
        .gpu/bin/synthetic_gguf "$m" --lite 27 --type q4_k_m
        echo "synthetic Lite Q4_K_M in $((SECONDS - t0)) s"
    fi
}

bench() {
    local out=$1
    mkdir -p "$out"
    local exps='\.ffn_(up|down|gate)_exps=CPU'
    bench_one "$out" gpu-all "--gpu-layers all" "-ngl 99"
    bench_one "$out" cpu-moe "--cpu-moe" "-ngl 99 -ot $exps"
    bench_one "$out" auto-6g "--gpu-layers auto --vram-budget 6" ""
    bench_one "$out" auto-2g "--gpu-layers auto --vram-budget 2" ""
    # The hand-picked alternative a user would try on a 6 GiB card: the most whole layers that
    # fit, as the planner's report names them.
    local n
    n=$(grep -o 'beats: *[0-9]* of' "$out/bench-auto-6g.err" | grep -o '[0-9]*' | head -1 || true)
    [[ -n "$n" ]] && bench_one "$out" "layers-$n" "--gpu-layers $n" "-ngl $n"
    bench_cpu "$out"
}

bench_cpu() {
    local out=$1 C=${CPU_BUILD:-/tmp/llama-cpu}
    mkdir -p "$out"
    B=$C LD_LIBRARY_PATH="$C/bin" bench_one "$out" cpu "" "-ngl 0"
}

case "${1:-}" in
build) build ;;
check)
    build
    check "${2:?OUT}"
    ;;
bench)
    synthetic &
    build
    wait
    bench "${2:?OUT}"
    ;;
prep-cpu)
    synthetic &
    build_cpu
    wait
    ;;
bench-cpu)
    synthetic &
    build_cpu
    wait
    bench_cpu "${2:?OUT}"
    ;;
*)
    echo "usage: $0 build | check OUT | bench OUT | bench-cpu OUT" >&2
    exit 2
    ;;
esac
