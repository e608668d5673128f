#!/usr/bin/env python3
"""Golden data for dino-kernels' quantization tests, produced by ggml's own Python port.

    pip install gguf numpy
    python3 make_golden.py            # writes golden.bin next to this script

Deterministic: fixed seeds, no timestamps. Re-running gives identical bytes for a given
gguf/numpy version (recorded in the header). Output layout (all little-endian):

    magic  b"DINOGQ01"
    u32    length of the version string, then the string (utf-8)
    u32    number of records
    record:
        u32  ggml type id
        u32  n (elements)
        u32  flags: bit 0 = has f32 input (the quantized bytes are the quantization of it),
                    bit 1 = quantization done by our numpy transcription of ggml's C reference
                            (Q8_1, Q8_K, which gguf.quants does not implement) instead of gguf
        [f32 * n]  input, if flag bit 0
        u32  byte count, then the quantized bytes
        [f32 * n]  dequantized values (gguf.quants.dequantize, or d * q for Q8_1/Q8_K)

Types gguf.quants can quantize (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) get random inputs with
special blocks (zeros, a constant, exact .5 ties, tiny and large magnitudes). K-quants, which
gguf.quants can only dequantize, get blocks of random bytes with finite random scales.
"""
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

QK_K = 256


def legacy_input(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    x = rng.standard_normal((n_blocks, 32)).astype(np.float32)
    x[0] = 0.0                                        # all zeros
    x[1] = 0.75                                       # constant
    x[2] = np.arange(32, dtype=np.float32) - 15.5     # ties for Q8 (amax 16 -> d = 16/127)
    x[3] = (np.arange(32, dtype=np.float32) % 9) - 4.0
    x[3, 7] = 127.0                                   # d = 1: x*id = x, exact .5 ties below
    x[3, 8:16] = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5], dtype=np.float32)
    x[4] *= np.float32(1e-4)                          # tiny scales (f16 subnormal d)
    x[5] *= np.float32(3e3)                           # large values
    x[6] = -x[6] ** 2                                 # all negative
    x[7] = np.abs(x[7])                               # all positive
    x[8, 5] = 40.0                                    # one outlier
    x[9, 0] = -40.0
    x[10] = np.where(np.arange(32) % 2 == 0, 3.0, -3.0)  # +-amax ties: first one wins
    return x.reshape(-1)


def q8_1_ref(x: np.ndarray) -> np.ndarray:
    """Transcription of ggml's quantize_row_q8_1_ref."""
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = quants.np_roundf(b * inv).astype(np.int8)
    s = (qs.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d).astype(np.float32)
    out = np.concatenate(
        [d.astype(np.float16).view(np.uint8), s.astype(np.float16).view(np.uint8), qs.view(np.uint8)], axis=1
    )
    deq = qs.astype(np.float32) * d.astype(np.float16).astype(np.float32)
    return out.reshape(-1), deq.reshape(-1)


def nearest_int(v: np.ndarray) -> np.ndarray:
    return np.rint(v).astype(np.int32)  # round half to even, as ggml's nearest_int


def q8_k_ref(x: np.ndarray):
    """Transcription of ggml's quantize_row_q8_K_ref."""
    out = []
    deq = []
    for b in x.reshape(-1, QK_K):
        a = np.abs(b)
        if a.max() == 0:
            d = np.float32(0)
            qs = np.zeros(QK_K, np.int8)
        else:
            mx = b[int(np.argmax(a))]                 # first index of the largest magnitude
            iscale = np.float32(-127.0) / mx
            qs = np.minimum(127, nearest_int((iscale * b).astype(np.float32))).astype(np.int8)
            d = np.float32(1) / iscale
        bsums = qs.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        out.append(np.frombuffer(struct.pack("<f", d), np.uint8))
        out.append(qs.view(np.uint8))
        out.append(bsums.view(np.uint8))
        deq.append(np.float32(d) * qs.astype(np.float32))
    return np.concatenate(out), np.concatenate(deq).astype(np.float32)


def random_k_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """Random bytes with the f16 scale fields replaced by finite random values."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    # offsets of f16 fields per type (see ggml-common.h)
    f16_offsets = {
        T.Q2_K: [16 + 64, 16 + 64 + 2],
        T.Q3_K: [32 + 64 + 12],
        T.Q4_K: [0, 2],
        T.Q5_K: [0, 2],
        T.Q6_K: [128 + 64 + 16],
    }[qtype]
    for off in f16_offsets:
        v = (rng.uniform(1e-3, 0.5, n_blocks) * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        raw[:, off:off + 2] = v.view(np.uint8).reshape(n_blocks, 2)
    raw[0, :] = 0  # an all-zero block
    return raw.reshape(-1)


def main() -> None:
    rng = np.random.default_rng(20240611)
    records = []

    def add(qtype: T, n: int, inp, qbytes: np.ndarray, deq: np.ndarray, ours: bool = False) -> None:
        flags = (1 if inp is not None else 0) | (2 if ours else 0)
        rec = struct.pack("<III", int(qtype), n, flags)
        if inp is not None:
            assert inp.dtype == np.float32 and inp.size == n
            rec += inp.tobytes()
        qbytes = np.ascontiguousarray(qbytes, dtype=np.uint8)
        rec += struct.pack("<I", qbytes.size) + qbytes.tobytes()
        deq = np.ascontiguousarray(deq, dtype=np.float32).reshape(-1)
        assert deq.size == n
        rec += deq.tobytes()
        records.append(rec)

    # Float types (block size 1): include specials.
    xf = legacy_input(rng, 16)
    xf[:8] = [0.0, -0.0, 1e-8, 65504.0, 65520.0, 1e5, -3.0e-5, 1.0 + 2.0**-11]
    for qtype in (T.F16, T.BF16):
        with np.errstate(over="ignore"):  # 1e5 overflows f16 to inf, on purpose
            q = quants.quantize(xf, qtype)
        add(qtype, xf.size, xf, q.view(np.uint8).reshape(-1), quants.dequantize(q.view(np.uint8), qtype)
            if qtype != T.F16 else q.astype(np.float32))
    # A quiet and a signalling NaN for bf16 (ggml quiets NaNs).
    xn = np.array([np.nan, -np.nan] + [0.5] * 6, dtype=np.float32)
    xn.view(np.uint32)[1] = 0xFF800001
    q = quants.quantize(xn, T.BF16)
    add(T.BF16, xn.size, xn, q.view(np.uint8).reshape(-1), quants.dequantize(q.view(np.uint8), T.BF16))

    # 32-element types quantized by gguf.quants (ggml's reference algorithms).
    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        x = legacy_input(rng, 32)
        q = quants.quantize(x, qtype).reshape(-1)
        add(qtype, x.size, x, q, quants.dequantize(q, qtype))

    # Q8_1 / Q8_K: our transcriptions of the C reference.
    x = legacy_input(rng, 32)
    q, deq = q8_1_ref(x)
    add(T.Q8_1, x.size, x, q, deq, ours=True)
    xk = rng.standard_normal(4 * QK_K).astype(np.float32)
    xk[QK_K:2 * QK_K] = 0.0
    xk[2 * QK_K + 3] = -9.0  # negative max
    xk[3 * QK_K:] *= np.float32(1e-3)
    q, deq = q8_k_ref(xk)
    add(T.Q8_K, xk.size, xk, q, deq, ours=True)

    # K-quants: dequantization of random blocks.
    for qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        raw = random_k_blocks(rng, qtype, 6)
        add(qtype, 6 * QK_K, None, raw, quants.dequantize(raw, qtype))

    version = f"gguf {getattr(gguf, '__version__', 'unknown')}, numpy {np.__version__}".encode()
    try:
        from importlib.metadata import version as pkg_version
        version = f"gguf {pkg_version('gguf')}, numpy {np.__version__}".encode()
    except Exception:
        pass
    blob = b"DINOGQ01" + struct.pack("<I", len(version)) + version + struct.pack("<I", len(records))
    blob += b"".join(records)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("golden.bin")
    out.write_bytes(blob)
    print(f"wrote {out} ({len(blob)} bytes, {len(records)} records, {version.decode()})")


if __name__ == "__main__":
    main()
