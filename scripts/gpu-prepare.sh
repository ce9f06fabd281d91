#!/usr/bin/env bash
# Prepares, on a machine with Rust, what scripts/gpu-device.sh needs on a GPU machine that has
# CUDA and CMake but no Rust:
#   .gpu/bin/{dscoder,synthetic_gguf}  built with `--features dynamic-link`: llama.cpp as shared
#                                      libraries, so the CUDA build of the same source can be
#                                      put under them at run time (LD_LIBRARY_PATH);
#   .vendor/llama.cpp                  the llama.cpp source llama-cpp-sys-2 builds (the runtime),
#                                      without the back-ends and files the GPU build never reads.
# Both folders are git-ignored (add them to .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR_DL:-target/dl}
CARGO_TARGET_DIR=$target cargo build --release --features dynamic-link --bin dscoder --example synthetic_gguf
mkdir -p .gpu/bin
cp "$target/release/dscoder" "$target/release/examples/synthetic_gguf" .gpu/bin/
strip .gpu/bin/dscoder .gpu/bin/synthetic_gguf

src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -1)
rm -rf .vendor/llama.cpp
mkdir -p .vendor
cp -a "$src" .vendor/llama.cpp
(
    cd .vendor/llama.cpp
    rm -rf docs media models tests gguf-py tools/mtmd
    for b in vulkan sycl metal opencl cann hexagon webgpu zdnn openvino musa zendnn virtgpu et; do
        rm -rf "ggml/src/ggml-$b"
    done
)
du -sh .gpu .vendor
