#!/usr/bin/env bash
# Makes the llama.cpp peer available for benchmarks and reference data (not used by CI).
#
#   bench/llamacpp/build.sh            # idempotent; prints the bin dir on its last line
#   source bench/llamacpp/env.sh       # PATH, PYTHONPATH, LLAMA_CPP_LIB_PATH, LD_LIBRARY_PATH
#
# Layout under ${DINO_PEER_DIR:-$HOME/.cache/dino-peer}:
#   src/llama_cpp_python-0.3.36/     the PyPI sdist, unpacked (Python package llama_cpp/, vendor/llama.cpp)
#   build/                           CMake build dir of vendor/llama.cpp; tools and shared libs in build/bin
#   .complete                        written when everything above is done
#
# The Python module is the sdist's pure-Python llama_cpp/ package on PYTHONPATH, loading build/bin/libllama.so
# through LLAMA_CPP_LIB_PATH, so llama.cpp is compiled once (no `pip install llama-cpp-python`).
#
# Reuse an existing build instead of compiling (e.g. on a machine that already has one):
#   DINO_PEER_SRC=/path/to/llama_cpp_python-0.3.36 DINO_PEER_BUILD=/path/to/build bench/llamacpp/build.sh
# symlinks them into the layout above.
set -euo pipefail

VERSION="${DINO_PEER_VERSION:-0.3.36}"
PEER="${DINO_PEER_DIR:-$HOME/.cache/dino-peer}"
SRC="$PEER/src/llama_cpp_python-$VERSION"
BUILD="$PEER/build"
JOBS="${JOBS:-$(nproc)}"
TARGETS=(llama-perplexity llama-completion llama-bench llama-tokenize llama-quantize llama-server llama-imatrix)

log() { echo "[dino-peer] $*" >&2; }

mkdir -p "$PEER/src"

# Optional: adopt an existing source tree / build.
if [ -n "${DINO_PEER_SRC:-}" ] && [ ! -e "$SRC" ]; then
  log "linking $SRC -> $DINO_PEER_SRC"; ln -sfn "$(realpath "$DINO_PEER_SRC")" "$SRC"
fi
if [ -n "${DINO_PEER_BUILD:-}" ] && [ ! -e "$BUILD" ]; then
  log "linking $BUILD -> $DINO_PEER_BUILD"; ln -sfn "$(realpath "$DINO_PEER_BUILD")" "$BUILD"
fi

have_build() {
  [ -f "$BUILD/bin/libllama.so" ] || return 1
  local t; for t in "${TARGETS[@]}"; do [ -x "$BUILD/bin/$t" ] || return 1; done
}

python_ok() {
  LLAMA_CPP_LIB_PATH="$BUILD/bin" PYTHONPATH="$SRC" python3 -c \
    'import llama_cpp, numpy, typing_extensions, diskcache, jinja2; assert llama_cpp.__version__ == "'"$VERSION"'"' \
    >/dev/null 2>&1
}

if [ -f "$PEER/.complete" ] && have_build && python_ok; then
  log "already complete: $PEER"
  echo "$BUILD/bin"
  exit 0
fi

# 1. Source: the sdist (it vendors llama.cpp at commit 0c1e5709).
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  log "downloading llama-cpp-python==$VERSION sdist"
  tmp="$(mktemp -d)"
  # The sdist's address from PyPI's simple index (JSON form), fetched as a file: `pip download --no-binary`
  # would first build its build requirements (CMake) from source to read its metadata.
  tarball="$tmp/llama_cpp_python-$VERSION.tar.gz"
  python3 - "$VERSION" "$tarball" <<'PY'
import hashlib, json, sys, urllib.request
version, out = sys.argv[1], sys.argv[2]
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req))["files"]
sdist = next(f for f in files if f["filename"] == f"llama_cpp_python-{version}.tar.gz")
data = urllib.request.urlopen(sdist["url"]).read()
if hashlib.sha256(data).hexdigest() != sdist["hashes"]["sha256"]:
    sys.exit(f"{sdist['url']}: sha256 mismatch")
open(out, "wb").write(data)
PY
  tar -xzf "$tarball" -C "$PEER/src"
  rm -rf "$tmp"
  [ -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ] || { log "unexpected sdist layout"; exit 1; }
fi

# 2. Build tools.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
command -v c++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

# 3. Configure + build (CPU only). About 15 minutes on 2 cores.
if ! have_build; then
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    log "configuring $BUILD"
    cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
      -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF >&2
  fi
  log "building ${TARGETS[*]} with $JOBS jobs"
  cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >&2
  have_build || { log "build finished but $BUILD/bin is incomplete"; exit 1; }
fi

# 4. Python module: pure-Python deps only; the sdist's llama_cpp/ is used in place (see env.sh).
if ! python_ok; then
  log "installing Python deps"
  python3 -m pip install -q numpy typing-extensions diskcache jinja2 >&2
  python_ok || { log "llama_cpp does not import with LLAMA_CPP_LIB_PATH=$BUILD/bin PYTHONPATH=$SRC"; exit 1; }
fi

date -u +%FT%TZ > "$PEER/.complete"
log "ready: source bench/llamacpp/env.sh"
echo "$BUILD/bin"
