//! Scalar K-quants: dequantization of Q2_K..Q6_K and Q8_K, the Q8_K activation quantizer and the
//! `q*_K · q8_K` dot products, transcribed from ggml's `dequantize_row_*`,
//! `quantize_row_q8_K_ref` and `ggml_vec_dot_*_q8_K_generic`. The generic dot products keep
//! eight f32 partial sums (one per lane of an 8-wide group); we keep the same order so results
//! are bit-identical to ggml's generic path.

use crate::quant::blocks::*;
use dino_core::QK_K;

/// ggml's `nearest_int`: round to nearest, ties to even, for |x| < 2^22 (via the 1.5 * 2^23
/// trick). Out-of-range inputs give a meaningless but defined value, as in ggml.
#[inline(always)]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

// ---------------------------------------------------------------------------------------------
// Unpacking: the quant value of every element of a super-block, in element order.

/// Q2_K element `e = 128*n + 32*j + l` is bits `2j..2j+2` of `qs[32*n + l]`.
#[inline(always)]
fn q2k_values(b: &BlockQ2K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (e, v) in a.iter_mut().enumerate() {
        let (n, j, l) = (e / 128, (e / 32) % 4, e % 32);
        *v = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
    }
    a
}

/// Q3_K element `e = 128*n + 32*j + l`: low bits as Q2_K, minus 4 unless bit `4n + j` of
/// `hmask[l]` is set.
#[inline(always)]
fn q3k_values(b: &BlockQ3K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (e, v) in a.iter_mut().enumerate() {
        let (n, j, l) = (e / 128, (e / 32) % 4, e % 32);
        let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
        let high = (b.hmask[l] >> (4 * n + j)) & 1;
        *v = low - if high != 0 { 0 } else { 4 };
    }
    a
}

/// Q4_K element `e = 64*k + 32*h + l` is nibble `h` of `qs[32*k + l]`.
#[inline(always)]
fn q4k_values(qs: &[u8; QK_K / 2]) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (e, v) in a.iter_mut().enumerate() {
        let (k, h, l) = (e / 64, (e / 32) % 2, e % 32);
        *v = ((qs[32 * k + l] >> (4 * h)) & 0xF) as i8;
    }
    a
}

/// Q5_K: the Q4_K nibble plus 16 if bit `e / 32` of `qh[e % 32]` is set.
#[inline(always)]
fn q5k_values(b: &BlockQ5K) -> [i8; QK_K] {
    let mut a = q4k_values(&b.qs);
    for (e, v) in a.iter_mut().enumerate() {
        if (b.qh[e % 32] >> (e / 32)) & 1 != 0 {
            *v += 16;
        }
    }
    a
}

/// Q6_K element `e = 128*n + 32*k + l`: nibble `k / 2` of `ql[64*n + 32*(k % 2) + l]`, with
/// bits `2k..2k+2` of `qh[32*n + l]` on top, minus 32.
#[inline(always)]
fn q6k_values(b: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (e, v) in a.iter_mut().enumerate() {
        let (n, k, l) = (e / 128, (e / 32) % 4, e % 32);
        let low = (b.ql[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
        let high = (b.qh[32 * n + l] >> (2 * k)) & 3;
        *v = (low | (high << 4)) as i8 - 32;
    }
    a
}

/// The 8 scales and 8 mins of a Q4_K/Q5_K block.
#[inline(always)]
pub(crate) fn k4_scales_mins(scales: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, scales);
    }
    (sc, m)
}

// ---------------------------------------------------------------------------------------------
// Dequantization

pub fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ2K>(src);
    debug_assert_eq!(dst.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d(), b.dmin());
        let q = q2k_values(b);
        for (g, (yg, qg)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let sc = b.scales[g];
            let dl = d * (sc & 0xF) as f32;
            let ml = min * (sc >> 4) as f32;
            for (o, &v) in yg.iter_mut().zip(qg) {
                *o = dl * v as f32 - ml;
            }
        }
    }
}

pub fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ3K>(src);
    debug_assert_eq!(dst.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = b.d();
        let scales = q3k_scales(&b.scales);
        let q = q3k_values(b);
        for (g, (yg, qg)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d_all * scales[g] as f32;
            for (o, &v) in yg.iter_mut().zip(qg) {
                *o = dl * v as f32;
            }
        }
    }
}

pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ4K>(src);
    debug_assert_eq!(dst.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d(), b.dmin());
        let (sc, m) = k4_scales_mins(&b.scales);
        let q = q4k_values(&b.qs);
        for (g, (yg, qg)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let (d1, m1) = (d * sc[g] as f32, min * m[g] as f32);
            for (o, &v) in yg.iter_mut().zip(qg) {
                *o = d1 * v as f32 - m1;
            }
        }
    }
}

pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ5K>(src);
    debug_assert_eq!(dst.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d(), b.dmin());
        let (sc, m) = k4_scales_mins(&b.scales);
        let q = q5k_values(b);
        for (g, (yg, qg)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let (d1, m1) = (d * sc[g] as f32, min * m[g] as f32);
            for (o, &v) in yg.iter_mut().zip(qg) {
                *o = d1 * v as f32 - m1;
            }
        }
    }
}

pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ6K>(src);
    debug_assert_eq!(dst.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        let q = q6k_values(b);
        for (g, (yg, qg)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * b.scales[g] as f32;
            for (o, &v) in yg.iter_mut().zip(qg) {
                *o = dl * v as f32;
            }
        }
    }
}

pub fn dequantize_q8_k(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ8K>(src);
    debug_assert_eq!(dst.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = d * q as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_K activation quantizer (ggml's `quantize_row_q8_K_ref`): scale from the signed value of
// largest magnitude, `nearest_int` (round half to even), and the sums of each group of 16.

pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ8K>(dst);
    debug_assert_eq!(src.len(), y.len() * QK_K);
    for (x, b) in src.chunks_exact(QK_K).zip(y) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K {
                d: [0; 4],
                qs: [0; QK_K],
                bsums: [[0; 2]; QK_K / 16],
            };
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            let sum: i32 = g.iter().map(|&q| q as i32).sum();
            *s = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products with Q8_K activations.

/// `aux32[l] += scale(g) * q8 * a` over 8-wide groups `g`, as ggml's generic kernels.
#[inline(always)]
fn lane_sums(a: &[i8; QK_K], q8: &[i8; QK_K], scale: impl Fn(usize) -> i32) -> [i32; 8] {
    let mut aux32 = [0i32; 8];
    for (g, (ag, qg)) in a.chunks_exact(8).zip(q8.chunks_exact(8)).enumerate() {
        let s = scale(g);
        for l in 0..8 {
            aux32[l] += s * (qg[l] as i32 * ag[l] as i32);
        }
    }
    aux32
}

/// Q2_K · Q8_K with the 8-lane partition of ggml's AVX2 kernel: per super-block, lane `l`
/// first takes `-d_a·dmin_w · (min_{2l}·bsum_{2l} + min_{2l+1}·bsum_{2l+1})`, then
/// `d_a·d_w ·` the scaled products of the 2-bit values at offsets `4l..4l+4` of every
/// 32-element group, each with one FMA; lanes are reduced as `hsum_float_8` does. Same value as
/// the reference formula up to float rounding, and bit-identical to llama.cpp's AVX2 kernel.
pub fn vec_dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ2K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = [0.0f32; 8];
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let d = by.d() * bx.d();
        let dmin = -by.d() * bx.dmin();
        let m = |g: usize| (bx.scales[g] >> 4) as i32 * by.bsum(g) as i32;
        for (l, a) in acc.iter_mut().enumerate() {
            *a = dmin.mul_add((m(2 * l) + m(2 * l + 1)) as f32, *a);
        }
        let q = q2k_values(bx);
        let mut lanes = [0i32; 8];
        for (e, (&qv, &av)) in q.iter().zip(by.qs.iter()).enumerate() {
            lanes[(e % 32) / 4] += (bx.scales[e / 16] & 0xF) as i32 * qv as i32 * av as i32;
        }
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum_float_8(&acc)
}

/// Q3_K · Q8_K with the 8-lane partition of ggml's AVX2 kernel: lane `l` sums the scaled
/// products of the signed 3-bit values at offsets `4l..4l+4` of every 32-element group; lanes
/// are scaled by `d_a·d_w` with one FMA per super-block and reduced as `hsum_float_8` does.
/// Same value as the reference formula up to float rounding, and bit-identical to llama.cpp's
/// per-row kernel on x86.
pub fn vec_dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ3K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = [0.0f32; 8];
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let scales = q3k_scales(&bx.scales);
        let q = q3k_values(bx);
        let mut lanes = [0i32; 8];
        for (e, (&qv, &av)) in q.iter().zip(by.qs.iter()).enumerate() {
            lanes[(e % 32) / 4] += scales[e / 16] as i32 * qv as i32 * av as i32;
        }
        let d = by.d() * bx.d();
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum_float_8(&acc)
}

/// Q3_K · Q8_K in the float order of llama.cpp's tiled K-quant GEMM (as
/// [`vec_dot_q6_k_q8_k_tiled`]): the exact integer dot of each super-block is scaled by the
/// weight scale, then by the activation scale, and added to the running sum.
pub fn vec_dot_q3_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ3K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let scales = q3k_scales(&bx.scales);
        let q = q3k_values(bx);
        let mut sumi = 0i32;
        for (e, (&qv, &av)) in q.iter().zip(by.qs.iter()).enumerate() {
            sumi += scales[e / 16] as i32 * qv as i32 * av as i32;
        }
        let r = sumi as f32 * bx.d();
        acc = r.mul_add(by.d(), acc);
    }
    acc
}

/// Shared by Q4_K and Q5_K, which differ only in how quants are unpacked.
#[inline(always)]
fn dot_k4_like(
    d: f32,
    dmin: f32,
    scales: &[u8; 12],
    q: &[i8; QK_K],
    by: &BlockQ8K,
    sums: &mut [f32; 8],
) -> f32 {
    let (sc, m) = k4_scales_mins(scales);
    let mut sumi = 0i32;
    for j in 0..QK_K / 16 {
        sumi += by.bsum(j) as i32 * m[j / 2] as i32;
    }
    let aux32 = lane_sums(q, &by.qs, |g| sc[g / 4] as i32);
    let d = d * by.d();
    for l in 0..8 {
        sums[l] += d * aux32[l] as f32;
    }
    let dmin = dmin * by.d();
    dmin * sumi as f32
}

/// Q4_K · Q8_K in the float order of llama.cpp's x86 kernels for Q4_K, which repack the
/// weights into 8×8 interleaved blocks (`ggml_gemv/gemm_q4_K_8x8_q8_K`): per super-block the
/// exact integer sums `Σ scale·q·a` and `Σ min·bsum` are folded into two f32 accumulators with
/// one FMA each (`d_w·d_a` and `dmin_w·d_a`), and the result is their difference. Following it
/// keeps logits bit-identical with llama.cpp on Q4_K models.
pub fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let q = q4k_values(&bx.qs);
        let (sc, m) = k4_scales_mins(&bx.scales);
        let mut sumi = 0i32;
        for (e, (&qv, &av)) in q.iter().zip(by.qs.iter()).enumerate() {
            sumi += sc[e / 32] as i32 * qv as i32 * av as i32;
        }
        let mut summ = 0i32;
        for j in 0..QK_K / 16 {
            summ += by.bsum(j) as i32 * m[j / 2] as i32;
        }
        let dy = by.d();
        acc = (sumi as f32).mul_add(bx.d() * dy, acc);
        acc_min = (summ as f32).mul_add(bx.dmin() * dy, acc_min);
    }
    acc - acc_min
}

/// Q4_K · Q8_K in the float order of llama.cpp's repacked x86 GEMM (`ggml_gemm_q4_K_8x8_q8_K`,
/// used for whole groups of 4 tokens in a batch): the integer sums of each 64-element pair of
/// sub-blocks are folded into the accumulators with one FMA each.
pub fn vec_dot_q4_k_q8_k_gemm(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let q = q4k_values(&bx.qs);
        let (sc, m) = k4_scales_mins(&bx.scales);
        let dy = by.d();
        let (d, dmin) = (bx.d() * dy, bx.dmin() * dy);
        for j in 0..QK_K / 64 {
            let mut sumi = 0i32;
            for e in 64 * j..64 * (j + 1) {
                sumi += sc[e / 32] as i32 * q[e] as i32 * by.qs[e] as i32;
            }
            let mut summ = 0i32;
            for g in 4 * j..4 * (j + 1) {
                summ += by.bsum(g) as i32 * m[g / 2] as i32;
            }
            acc = (sumi as f32).mul_add(d, acc);
            acc_min = (summ as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

pub fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ5K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let q = q5k_values(bx);
        sumf -= dot_k4_like(bx.d(), bx.dmin(), &bx.scales, &q, by, &mut sums);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q6_K · Q8_K with the 8-lane partition of ggml's x86 kernel: lane `l` sums the scaled
/// products of the unsigned 6-bit values at offsets `4l..4l+4` of every 32-element group, minus
/// `32·Σ bsum·scale` over the 16-element groups `2l, 2l+1`; lanes are scaled by `d` with one FMA
/// per super-block and reduced as `hsum_float_8` does. Same value as the reference formula up
/// to float rounding, and bit-identical to llama.cpp on x86.
pub fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = [0.0f32; 8];
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        // q6k_values gives q - 32; the lanes use the unsigned value.
        let q = q6k_values(bx);
        let mut lanes = [0i32; 8];
        for (e, (&qv, &av)) in q.iter().zip(by.qs.iter()).enumerate() {
            let l = (e % 32) / 4;
            lanes[l] += bx.scales[e / 16] as i32 * (qv as i32 + 32) * av as i32;
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane -= 32
                * (by.bsum(2 * l) as i32 * bx.scales[2 * l] as i32
                    + by.bsum(2 * l + 1) as i32 * bx.scales[2 * l + 1] as i32);
        }
        let d = by.d() * bx.d();
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum_float_8(&acc)
}

/// Q6_K · Q8_K in the float order of llama.cpp's tiled K-quant GEMM (`ggml-cpu/tiled`, used on
/// x86 for batches of 8 or more tokens): the exact integer dot of each super-block is scaled by
/// the weight scale, then by the activation scale, and added to the running sum.
pub fn vec_dot_q6_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let q = q6k_values(bx);
        let mut sumi = 0i32;
        for (e, (&qv, &av)) in q.iter().zip(by.qs.iter()).enumerate() {
            sumi += bx.scales[e / 16] as i32 * qv as i32 * av as i32;
        }
        let r = sumi as f32 * bx.d();
        acc = r.mul_add(by.d(), acc);
    }
    acc
}

/// ggml's `hsum_float_8`: ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)).
fn hsum_float_8(a: &[f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| a[i + 4] + a[i]);
    let r0 = r[0] + r[2];
    let r1 = r[1] + r[3];
    r0 + r1
}

/// Q8_K weights against Q8_K activations (ggml defines no such kernel; provided so every
/// supported type has a dot product).
pub fn vec_dot_q8_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ8K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let sumi: i32 = bx
            .qs
            .iter()
            .zip(&by.qs)
            .map(|(&u, &v)| u as i32 * v as i32)
            .sum();
        sumf += sumi as f32 * (bx.d() * by.d());
    }
    sumf
}
