//! Scalar (de)quantization and dot products of the 32-element types: Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q8_1. Transcriptions of ggml's `quantize_row_*_ref`, the importance-weighted
//! `quantize_row_*_impl` (Q4_0, Q4_1, Q5_0, Q5_1), `dequantize_row_*` and
//! `ggml_vec_dot_*_generic`, including the order of float operations, so results are
//! bit-identical to ggml's.
//!
//! Rounding rule of the Q8 activation quantizers: `roundf` (half away from zero), as ggml's
//! reference quantizers. The AVX2 twins use the same rule (ggml's own AVX2 q8_0 uses
//! round-half-even; we do not), so scalar and SIMD activations are byte-identical.

use super::kquantize::{make_qkx3_quants, make_qx_quants};
use crate::quant::blocks::*;

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Absolute max of a block and the signed value that attains it first (ggml's loop).
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Min and max of a block, as ggml's `Q4_1`/`Q5_1` quantizers compute them.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization (reference, bit-exact with ggml)

pub fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ4_0>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let d = signed_absmax(x) / -8.0;
        let id = inv(d);
        b.d = f16_to_le(d);
        for j in 0..QK / 2 {
            // C: MIN(15, (int8_t)(x0 + 8.5f)); the conversion truncates.
            let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let xi1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

pub fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ4_1>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inv(d);
        b.d = f16_to_le(d);
        b.m = f16_to_le(min);
        for j in 0..QK / 2 {
            let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let xi1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

pub fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ5_0>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let d = signed_absmax(x) / -16.0;
        let id = inv(d);
        b.d = f16_to_le(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let xi0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let xi1 = ((x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 as u32 & 0x10) >> 4) << j;
            qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

pub fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ5_1>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inv(d);
        b.d = f16_to_le(d);
        b.m = f16_to_le(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // C: (uint8_t)(x0 + 0.5f), no clamp.
            let xi0 = ((x[j] - min) * id + 0.5) as u8;
            let xi1 = ((x[j + QK / 2] - min) * id + 0.5) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 as u32 & 0x10) >> 4) << j;
            qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

// ---------------------------------------------------------------------------------------------
// Importance-weighted quantization (ggml's `quantize_row_q{4,5}_{0,1}_impl` with non-NULL
// `quant_weights`). `src` is exactly one row of a tensor and `qw` its importance weights
// (`qw.len() == src.len()`); block `ib` uses `qw[32*ib..32*ib + 32]`. Unlike the K-quants, the
// `sigma2` of the error weights `qw · sqrt(sigma2 + x²)` is the mean square of the whole row,
// so quantizing two rows in one call would differ from quantizing them one by one.

/// The error weights of each block: `qw · sqrt(sigma2 + x²)` with `sigma2 = Σx² / n_per_row`,
/// summed in element order over the row as ggml does.
fn row_weights<'a>(src: &'a [f32], qw: &'a [f32]) -> impl Iterator<Item = (&'a [f32], [f32; QK])> {
    debug_assert_eq!(qw.len(), src.len());
    let mut sum_x2 = 0.0f32;
    for &v in src {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / src.len() as f32;
    src.chunks_exact(QK)
        .zip(qw.chunks_exact(QK))
        .map(move |(xb, qwb)| {
            let mut w = [0f32; QK];
            for j in 0..QK {
                w[j] = qwb[j] * (sigma2 + xb[j] * xb[j]).sqrt();
            }
            (xb, w)
        })
}

/// Packs 5-bit values (`0..32`) into a Q5 block's `qs` and `qh`.
fn pack_q5(l: &[u8; QK], qs: &mut [u8; QK / 2]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (xi0, xi1) = (l[j], l[j + QK / 2]);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 as u32 & 0x10) >> 4) << j;
        qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
    }
    qh.to_le_bytes()
}

/// ggml's `quantize_row_q4_0_impl`: the scale of each block by the weighted `make_qx_quants`.
pub fn quantize_q4_0_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ4_0>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for ((xb, w), b) in row_weights(src, qw).zip(y) {
        let mut l = [0i8; QK];
        let d = make_qx_quants(8, xb, &mut l, 1, Some(&w));
        b.d = f16_to_le(d);
        for j in 0..QK / 2 {
            b.qs[j] = l[j] as u8 | ((l[j + QK / 2] as u8) << 4);
        }
    }
}

/// ggml's `quantize_row_q4_1_impl`: (scale, min) of each block by the weighted
/// `make_qkx3_quants`.
pub fn quantize_q4_1_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ4_1>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for ((xb, w), b) in row_weights(src, qw).zip(y) {
        let mut l = [0u8; QK];
        let (d, min) = make_qkx3_quants(15, xb, &w, &mut l);
        b.d = f16_to_le(d);
        b.m = f16_to_le(-min);
        for j in 0..QK / 2 {
            b.qs[j] = l[j] | (l[j + QK / 2] << 4);
        }
    }
}

/// ggml's `quantize_row_q5_0_impl`: the scale of each block by the weighted `make_qx_quants`.
pub fn quantize_q5_0_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ5_0>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for ((xb, w), b) in row_weights(src, qw).zip(y) {
        let mut l = [0i8; QK];
        let d = make_qx_quants(16, xb, &mut l, 1, Some(&w));
        b.d = f16_to_le(d);
        b.qh = pack_q5(&l.map(|v| v as u8), &mut b.qs);
    }
}

/// ggml's `quantize_row_q5_1_impl`: (scale, min) of each block by the weighted
/// `make_qkx3_quants`.
pub fn quantize_q5_1_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ5_1>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for ((xb, w), b) in row_weights(src, qw).zip(y) {
        let mut l = [0u8; QK];
        let (d, min) = make_qkx3_quants(31, xb, &w, &mut l);
        b.d = f16_to_le(d);
        b.m = f16_to_le(-min);
        b.qh = pack_q5(&l, &mut b.qs);
    }
}

/// How a block of 32 is quantized to 8 bits.
#[derive(Clone, Copy)]
enum Q8Rule {
    /// ggml's reference quantizer (used for weights): `d = amax/127`, `q = roundf(x · (1/d))`.
    Reference,
    /// ggml's x86 runtime quantizer (used for activations, `quantize_row_q8_0` in
    /// `ggml-cpu/arch/x86/quants.c`): `q = round_ties_even(x · (127/amax))`. `127/amax` and
    /// `1/(amax/127)` differ in the last bit for some `amax`, and ties round differently, so
    /// activations follow this rule to keep logits bit-identical with llama.cpp.
    X86Runtime,
}

/// Quantize one block: returns `d` and the sum of the quants (for Q8_1's `s`).
#[inline(always)]
fn q8_block(x: &[f32], qs: &mut [i8; QK], rule: Q8Rule) -> (f32, i32) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let mut sum = 0i32;
    match rule {
        Q8Rule::Reference => {
            let id = inv(d);
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
        }
        Q8Rule::X86Runtime => {
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = (v * id).round_ties_even() as i8;
                sum += *q as i32;
            }
        }
    }
    (d, sum)
}

fn quantize_q8_0_with(src: &[f32], dst: &mut [u8], rule: Q8Rule) {
    let y = as_blocks_mut::<BlockQ8_0>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let (d, _) = q8_block(x, &mut b.qs, rule);
        b.d = f16_to_le(d);
    }
}

fn quantize_q8_1_with(src: &[f32], dst: &mut [u8], rule: Q8Rule) {
    let y = as_blocks_mut::<BlockQ8_1>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let (d, sum) = q8_block(x, &mut b.qs, rule);
        b.d = f16_to_le(d);
        b.s = f16_to_le(sum as f32 * d);
    }
}

/// One Q8_0 block by ggml's reference quantizer: the quants into `qs`; returns `d` (before
/// its f16 rounding).
pub(crate) fn q8_0_reference_block(x: &[f32], qs: &mut [i8; QK]) -> f32 {
    q8_block(x, qs, Q8Rule::Reference).0
}

/// Q8_0 with ggml's reference quantizer (weights).
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    quantize_q8_0_with(src, dst, Q8Rule::Reference)
}

/// Q8_1 with ggml's reference quantizer.
pub fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    quantize_q8_1_with(src, dst, Q8Rule::Reference)
}

/// Q8_0 activations as llama.cpp quantizes them on x86 (see [`Q8Rule::X86Runtime`]).
pub fn quantize_q8_0_act(src: &[f32], dst: &mut [u8]) {
    quantize_q8_0_with(src, dst, Q8Rule::X86Runtime)
}

/// Q8_1 activations as llama.cpp quantizes them on x86 (see [`Q8Rule::X86Runtime`]).
pub fn quantize_q8_1_act(src: &[f32], dst: &mut [u8]) {
    quantize_q8_1_with(src, dst, Q8Rule::X86Runtime)
}

// ---------------------------------------------------------------------------------------------
// Dequantization

pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ4_0>(src);
    debug_assert_eq!(dst.len(), x.len() * QK);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d();
        for j in 0..QK / 2 {
            y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ4_1>(src);
    debug_assert_eq!(dst.len(), x.len() * QK);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (b.d(), b.m());
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// The 5-bit values of a Q5 block (without offset).
#[inline(always)]
fn q5_values(qs: &[u8; 16], qh: u32) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10) as u8;
        q[j + QK / 2] = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10) as u8;
    }
    q
}

pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ5_0>(src);
    debug_assert_eq!(dst.len(), x.len() * QK);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&q5_values(&b.qs, b.qh())) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ5_1>(src);
    debug_assert_eq!(dst.len(), x.len() * QK);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (b.d(), b.m());
        for (o, &q) in y.iter_mut().zip(&q5_values(&b.qs, b.qh())) {
            *o = q as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ8_0>(src);
    debug_assert_eq!(dst.len(), x.len() * QK);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn dequantize_q8_1(src: &[u8], dst: &mut [f32]) {
    let x = as_blocks::<BlockQ8_1>(src);
    debug_assert_eq!(dst.len(), x.len() * QK);
    for (b, y) in x.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products: integer sums in i32, scales in f32, in ggml's generic order.

pub fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ4_0>(w), as_blocks::<BlockQ8_0>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (bx.qs[j] & 0x0F) as i32 - 8;
            let v1 = (bx.qs[j] >> 4) as i32 - 8;
            sumi += v0 * by.qs[j] as i32 + v1 * by.qs[j + QK / 2] as i32;
        }
        sumf += sumi as f32 * bx.d() * by.d();
    }
    sumf
}

pub fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ4_1>(w), as_blocks::<BlockQ8_1>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (bx.qs[j] & 0x0F) as i32;
            let v1 = (bx.qs[j] >> 4) as i32;
            sumi += v0 * by.qs[j] as i32 + v1 * by.qs[j + QK / 2] as i32;
        }
        sumf += (bx.d() * by.d()) * sumi as f32 + bx.m() * by.s();
    }
    sumf
}

pub fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ5_0>(w), as_blocks::<BlockQ8_0>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let q = q5_values(&bx.qs, bx.qh());
        let mut sumi = 0i32;
        for (&qx, &qy) in q.iter().zip(&by.qs) {
            sumi += (qx as i32 - 16) * qy as i32;
        }
        sumf += (bx.d() * by.d()) * sumi as f32;
    }
    sumf
}

pub fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ5_1>(w), as_blocks::<BlockQ8_1>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let q = q5_values(&bx.qs, bx.qh());
        let mut sumi = 0i32;
        for (&qx, &qy) in q.iter().zip(&by.qs) {
            sumi += qx as i32 * qy as i32;
        }
        sumf += (bx.d() * by.d()) * sumi as f32 + bx.m() * by.s();
    }
    sumf
}

pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ8_0>(w), as_blocks::<BlockQ8_0>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for (&qx, &qy) in bx.qs.iter().zip(&by.qs) {
            sumi += qx as i32 * qy as i32;
        }
        sumf += sumi as f32 * (bx.d() * by.d());
    }
    sumf
}

/// Q8_1 weights against Q8_1 activations (ggml defines no such kernel; provided so every
/// supported type has a dot product). Same formula as Q8_0; `s` is unused.
pub fn vec_dot_q8_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ8_1>(w), as_blocks::<BlockQ8_1>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for (&qx, &qy) in bx.qs.iter().zip(&by.qs) {
            sumi += qx as i32 * qy as i32;
        }
        sumf += sumi as f32 * (bx.d() * by.d());
    }
    sumf
}
