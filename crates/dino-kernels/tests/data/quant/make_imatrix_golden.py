#!/usr/bin/env python3
"""Golden data for dino-kernels' importance-matrix (imatrix) quantizers, produced by ggml itself.

    python3 make_imatrix_golden.py [path/to/libggml-base.so] [out.bin]

Loads ggml's shared library with ctypes (default: ~/.cache/dino-peer/build/bin/libggml-base.so,
or $GGML_BASE_LIB) and calls `ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix)`,
the call llama-quantize makes, once with the imatrix (one weight per column, shared by every
row) and once with NULL, for Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (which ignores it).
Needs numpy only. Deterministic: a fixed seed, no timestamps; the ggml version and commit are
recorded in the header. Output layout (all little-endian):

    magic  b"DINOIQ01"
    u32    length of the version string, then the string (utf-8)
    u32    number of cases
    case:
        u32  length of the name, then the name (utf-8)
        u32  n_per_row
        u32  nrows
        [f32 * nrows * n_per_row]  input rows
        [f32 * n_per_row]          importance weights (the same for every row)
    u32    number of results
    result:
        u32  ggml type id
        u32  case index
        u32  flags: bit 0 = quantized with the case's weights (else with NULL)
        u32  byte count (nrows * row size), then ggml's bytes
"""
import ctypes
import os
import struct
import sys
from pathlib import Path

import numpy as np

QK_K = 256
# ggml type ids (ggml.h) and block sizes.
TYPES = {
    "Q4_0": (2, 32),
    "Q4_1": (3, 32),
    "Q5_0": (6, 32),
    "Q5_1": (7, 32),
    "Q8_0": (8, 32),
    "Q2_K": (10, QK_K),
    "Q3_K": (11, QK_K),
    "Q4_K": (12, QK_K),
    "Q5_K": (13, QK_K),
    "Q6_K": (14, QK_K),
}


def load_ggml(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    f32p = ctypes.POINTER(ctypes.c_float)
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, f32p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, f32p
    ]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_version.restype = ctypes.c_char_p
    lib.ggml_commit.restype = ctypes.c_char_p
    return lib


def quantize(lib, type_id: int, x: np.ndarray, w, n_per_row: int) -> bytes:
    nrows = x.size // n_per_row
    row_size = lib.ggml_row_size(type_id, n_per_row)
    dst = (ctypes.c_uint8 * (nrows * row_size))()
    f32p = ctypes.POINTER(ctypes.c_float)
    xw = np.ascontiguousarray(x, dtype=np.float32)
    ww = None if w is None else np.ascontiguousarray(w, dtype=np.float32)
    lib.ggml_quantize_init(type_id)
    got = lib.ggml_quantize_chunk(
        type_id, xw.ctypes.data_as(f32p), ctypes.cast(dst, ctypes.c_void_p), 0, nrows, n_per_row,
        None if ww is None else ww.ctypes.data_as(f32p),
    )
    assert got == nrows * row_size, (got, nrows, row_size)
    return bytes(dst)


def lognormal_weights(rng, n, sigma=1.5):
    return rng.lognormal(0.0, sigma, n).astype(np.float32)


def make_cases(rng: np.random.Generator):
    """(name, n_per_row, x [nrows, n_per_row], w [n_per_row])"""
    cases = []

    def add(name, x, w):
        x = np.asarray(x, dtype=np.float32)
        w = np.asarray(w, dtype=np.float32)
        assert x.ndim == 2 and w.shape == (x.shape[1],) and np.all(np.isfinite(x))
        assert np.all(w >= 0) and np.all(np.isfinite(w))
        cases.append((name, x.shape[1], x, w))

    # Gaussian rows, log-normal weights spanning a few orders of magnitude.
    add("gauss256", rng.standard_normal((4, 256)), lognormal_weights(rng, 256))
    add("gauss512-small", 0.02 * rng.standard_normal((3, 512)), lognormal_weights(rng, 512))

    # Heavy tails (Student t, df 2), clipped so every f16 scale stays finite.
    t = np.clip(0.05 * rng.standard_t(2.0, (2, 512)), -50.0, 50.0)
    add("student-t512", t, lognormal_weights(rng, 512, 2.0))

    # Zeros and special groups.
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[0, :256] = 0.0                   # a whole zero super-block
    x[1, 16:32] = 0.0                  # a zero group of 16
    x[1, 64:96] = 0.0                  # a zero group of 32
    x[1, 128:160] = 0.75               # constant, positive
    x[1, 160:192] = -0.5               # constant, negative
    x[1, 192:224] = np.abs(x[1, 192:224])   # all positive
    x[1, 224:256] = -np.abs(x[1, 224:256])  # all negative
    x[1, 256:288] = np.where(np.arange(32) % 2 == 0, 3.0, -3.0)  # +-amax ties
    x[1, 288:320] = (np.arange(32) % 9) - 4.0                     # integers, .5 ties after scaling
    x[1, 320:336] = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5] * 2
    x[1, 400] = 1e-30                  # one tiny non-zero in a group
    x[2, :] = 0.0                      # an all-zero row
    add("zeros512", x, lognormal_weights(rng, 512))

    # Weights with zeros: scattered, a zero group of 16, a zero group of 32, a zero super-block.
    w = lognormal_weights(rng, 512)
    w[rng.random(512) < 0.3] = 0.0
    w[32:48] = 0.0
    w[96:128] = 0.0
    w[256:512] = 0.0
    add("wzero512", rng.standard_normal((2, 512)), w)

    # All-equal weights.
    add("equal256", rng.standard_normal((3, 256)), np.ones(256))
    add("equal512-half", rng.standard_normal((1, 512)), np.full(512, 0.5))

    # A few big outliers per row.
    x = 0.05 * rng.standard_normal((2, 768)).astype(np.float32)
    for r in range(2):
        idx = rng.choice(768, 6, replace=False)
        x[r, idx] = rng.choice([-1, 1], 6) * rng.uniform(2.0, 20.0, 6)
    add("outliers768", x, lognormal_weights(rng, 768))

    # Tiny and large magnitudes (f16-subnormal and large scales).
    add("tiny256", 1e-5 * rng.standard_normal((2, 256)), 1e-3 * lognormal_weights(rng, 256))
    x = 300.0 * rng.standard_normal((2, 256))
    x[0, 7] = 2.0e4
    add("big256", x, 1e4 * lognormal_weights(rng, 256))

    # Imatrix-like weights (mean squared activations) with a few massive channels.
    w = (rng.standard_normal((64, 512)) ** 2).mean(axis=0)
    w[rng.choice(512, 4, replace=False)] *= 1000.0
    add("massive-channels512", 0.03 * rng.standard_normal((2, 512)), w)

    # Rows of whole 32-blocks that are not whole super-blocks (legacy types only).
    add("legacy32", rng.standard_normal((3, 32)), lognormal_weights(rng, 32))
    add("legacy96", rng.standard_normal((2, 96)), lognormal_weights(rng, 96))
    x = rng.standard_normal((2, 160)).astype(np.float32)
    x[0, 32:64] = 0.0
    x[1, 100] = -40.0
    w = lognormal_weights(rng, 160)
    w[64:96] = 0.0
    add("legacy160", x, w)
    add("legacy288", rng.standard_normal((2, 288)), np.ones(288))
    return cases


def main() -> None:
    default_lib = os.environ.get(
        "GGML_BASE_LIB", str(Path.home() / ".cache/dino-peer/build/bin/libggml-base.so")
    )
    lib_path = sys.argv[1] if len(sys.argv) > 1 else default_lib
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("imatrix_golden.bin")
    lib = load_ggml(lib_path)

    rng = np.random.default_rng(20251124)
    cases = make_cases(rng)
    blob_cases = b""
    for name, n_per_row, x, w in cases:
        nb = name.encode()
        blob_cases += struct.pack("<I", len(nb)) + nb
        blob_cases += struct.pack("<II", n_per_row, x.shape[0]) + x.tobytes() + w.tobytes()

    results = []
    for tname, (type_id, bs) in TYPES.items():
        for ci, (name, n_per_row, x, w) in enumerate(cases):
            if n_per_row % bs != 0:
                continue
            for flags, weights in ((1, w), (0, None)):
                q = quantize(lib, type_id, x.reshape(-1), weights, n_per_row)
                results.append(struct.pack("<IIII", type_id, ci, flags, len(q)) + q)

    version = (
        f"ggml {lib.ggml_version().decode()} (commit {lib.ggml_commit().decode()}), "
        f"numpy {np.__version__}"
    ).encode()
    blob = b"DINOIQ01" + struct.pack("<I", len(version)) + version
    blob += struct.pack("<I", len(cases)) + blob_cases
    blob += struct.pack("<I", len(results)) + b"".join(results)
    out.write_bytes(blob)
    print(f"wrote {out} ({len(blob)} bytes, {len(cases)} cases, {len(results)} results, "
          f"{version.decode()})")


if __name__ == "__main__":
    main()
