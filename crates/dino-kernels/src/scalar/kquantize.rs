//! ggml's K-quant weight quantizers: the reference (non-imatrix) `quantize_row_q{2..6}_K_ref`,
//! with their helpers `make_qx_quants`, `make_q3_quants` and `make_qkx2_quants`, and the
//! importance-weighted `quantize_row_q{2..6}_K_impl` (what `quantize_q*_K` runs when given an
//! imatrix), with `make_qkx3_quants` and `make_qp_quants`. The order of float operations follows
//! the C code (no fused multiply-adds), so a compiler that does not contract ggml's code gives
//! the same bytes.

// Index loops mirror the C reference line by line, which keeps the transcription checkable.
#![allow(clippy::needless_range_loop)]

use super::kquants::nearest_int;
use crate::quant::blocks::*;
use dino_core::QK_K;

const GROUP_MAX_EPS: f32 = 1e-15;

/// `make_qx_quants` (`rmse_type >= 0`). With `qw`, the error weights are `qw` (one per element
/// of `x`); without, they follow `rmse_type`. Returns the scale; `l` receives values in
/// `0..2*nmax`.
pub(crate) fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l_out: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for i in 0..n {
            l_out[i] = (nmax + clamp(nearest_int(iscale * x[i]))) as i8;
        }
        return 1.0 / iscale;
    }
    let weight = |i: usize| match (qw, rmse_type) {
        (Some(qw), _) => qw[i],
        (None, 1) => x[i] * x[i],
        (None, 2) => 1.0,
        (None, 3) => x[i].abs(),
        (None, _) => x[i].abs().sqrt(),
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = clamp(nearest_int(iscale * x[i]));
            let w = weight(i);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l_out[i] = (nmax + clamp(nearest_int(iscale * x[i]))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse == true`. `l_out` receives values in `0..2*nmax`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants`: an asymmetric (scale, min) fit by a small search. Returns the scale and
/// `-min` (positive); `l_out` receives values in `0..=nmax`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qkx3_quants` with weights and ggml's fixed search of every weighted caller
/// (`rmin = -0.9`, `rdelta = 0.05`, `nstep = 36`, squared error): an asymmetric (scale, min) fit
/// of `x` weighing element `i` by `weights[i]`. Returns the scale and `-min` (so `0.0` or
/// positive, `-0.0` for a block whose minimum is `0.0`); `l_out` receives values in `0..=nmax`.
pub(crate) fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
) -> (f32, f32) {
    debug_assert!(x.len() <= 32 && weights.len() == x.len() && l_out.len() >= x.len());
    // The C function is `make_qkx2_quants`' search with these constants; its early exit tests
    // `max <= min` where make_qkx2_quants tests `max == min`, the same since `min <= max`.
    make_qkx2_quants(nmax, x, weights, l_out, -0.9, 0.05, 36, false)
}

/// `make_qp_quants`: a positive scale for the (non-negative) values `x`, quantized to
/// `0..=nmax` and weighted by `qw`; a small search around `nmax / max`, then up to five rounds
/// of coordinate descent. Used for the super-block scales and mins of Q2_K, Q4_K and Q5_K.
///
/// `l_out` is ggml's `uint8_t` array: a negative quant (only possible for a negative `x`) wraps
/// modulo 256 when stored and is read back wrapped, as in C.
fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        // C: MAX(max, x[i]) = max > x[i] ? max : x[i]
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs 2-bit values of 256 elements as Q2_K/Q3_K `qs`.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

pub fn quantize_q2_k(src: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ2K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    const Q4SCALE: f32 = 15.0;
    for (x, y) in src.chunks_exact(QK_K).zip(yb) {
        let mut l = [0u8; QK_K];
        let mut weights = [0f32; 16];
        let mut mins = [0f32; QK_K / 16];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let xg = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xg) {
                *w = v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(
                3,
                xg,
                &weights,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                y.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            y.d = f16_to_le(max_scale / Q4SCALE);
        } else {
            y.scales = [0; QK_K / 16];
            y.d = f16_to_le(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                let lm = nearest_int(iscale * mins[j]);
                y.scales[j] |= (lm << 4) as u8;
            }
            y.dmin = f16_to_le(max_min / Q4SCALE);
        } else {
            y.dmin = f16_to_le(0.0);
        }
        for j in 0..QK_K / 16 {
            let d = y.d() * (y.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = y.dmin() * (y.scales[j] >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        pack_2bit(&l, &mut y.qs);
    }
}

pub fn quantize_q3_k(src: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ3K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(yb) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        y.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                // C: int8_t l = nearest_int(...); l = MAX(-32, MIN(31, l)) + 32;
                let lq = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    y.scales[j] = lq as u8 & 0xF;
                } else {
                    y.scales[j - 8] |= (lq as u8 & 0xF) << 4;
                }
                let hi = (lq >> 4) as u8;
                y.scales[j % 4 + 8] |= hi << (2 * (j / 4));
            }
            y.d = f16_to_le(1.0 / iscale);
        } else {
            y.d = f16_to_le(0.0);
        }
        q3k_requantize_pack(x, &mut l, y);
    }
}

/// The shared tail of both Q3_K quantizers, once `y.scales` and `y.d` are set: requantizes
/// every group whose scale is non-zero (other groups keep their `l`, in `0..8`), then packs the
/// high bits into `hmask` and the low two bits into `qs`.
fn q3k_requantize_pack(x: &[f32], l: &mut [i8; QK_K], y: &mut BlockQ3K) {
    let sc = q3k_scales(&y.scales);
    for j in 0..QK_K / 16 {
        let d = y.d() * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    y.hmask = [0; QK_K / 8];
    let mut lu = [0u8; QK_K];
    // The high bit of element j goes to bit j / 32 of hmask[j % 32].
    for j in 0..QK_K {
        let mut v = l[j] as u8;
        if v > 3 {
            y.hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        lu[j] = v;
    }
    pack_2bit(&lu, &mut y.qs);
}

/// Packs 6-bit scales and mins of Q4_K/Q5_K (the inverse of `scale_min_k4`).
fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8; 12]) {
    *out = [0; 12];
    for j in 0..8 {
        if j < 4 {
            out[j] = ls[j];
            out[j + 4] = lm[j];
        } else {
            out[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            out[j - 4] |= (ls[j] >> 4) << 6;
            out[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// The shared part of the Q4_K / Q5_K reference quantizers: per-32 (scale, min) fits, 6-bit
/// packing and the final requantization. Returns the quant values (`0..=nmax`).
fn quantize_k4_like(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    d_out: &mut [u8; 2],
    dmin_out: &mut [u8; 2],
    scales_out: &mut [u8; 12],
) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xg = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xg {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xg) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            nmax,
            xg,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    pack_scales_k4(&ls, &lm, scales_out);
    *d_out = f16_to_le(max_scale / 63.0);
    *dmin_out = f16_to_le(max_min / 63.0);
    k4_requantize(x, nmax, *d_out, *dmin_out, scales_out, &mut l);
    l
}

/// The shared tail of the Q4_K / Q5_K quantizers, once the block's `d`, `dmin` and packed
/// scales are set: requantizes every group whose scale is non-zero to `0..=nmax`.
fn k4_requantize(
    x: &[f32],
    nmax: i32,
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    l: &mut [u8; QK_K],
) {
    let (dd, dmin) = (f16_from_le(d), f16_from_le(dmin));
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, scales);
        let d = dd * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

pub fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ4K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(yb) {
        let l = quantize_k4_like(x, 15, -1.0, 20, &mut y.d, &mut y.dmin, &mut y.scales);
        pack_q4k(&l, y);
    }
}

/// Packs Q4_K's 4-bit values: `qs[32*j + i]` holds elements `64*j + i` (low) and `+ 32` (high).
fn pack_q4k(l: &[u8; QK_K], y: &mut BlockQ4K) {
    for j in 0..QK_K / 64 {
        for i in 0..32 {
            y.qs[32 * j + i] = l[64 * j + i] | (l[64 * j + i + 32] << 4);
        }
    }
}

pub fn quantize_q5_k(src: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ5K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(yb) {
        let l = quantize_k4_like(x, 31, -0.5, 15, &mut y.d, &mut y.dmin, &mut y.scales);
        pack_q5k(&l, y);
    }
}

/// Packs Q5_K's 5-bit values: low nibbles as Q4_K, the fifth bits in `qh`.
fn pack_q5k(l: &[u8; QK_K], y: &mut BlockQ5K) {
    y.qh = [0; QK_K / 8];
    let (mut m1, mut m2) = (1u8, 2u8);
    for n in 0..QK_K / 64 {
        for j in 0..32 {
            let mut l1 = l[64 * n + j];
            if l1 > 15 {
                l1 -= 16;
                y.qh[j] |= m1;
            }
            let mut l2 = l[64 * n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                y.qh[j] |= m2;
            }
            y.qs[32 * n + j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
}

pub fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    quantize_q6_k_impl(src, None, dst);
}

/// ggml's `quantize_row_q6_K_impl`: with `qw`, the row's importance weights (as long as `src`),
/// `make_qx_quants` weighs the error of each group by `qw` itself (unlike the other K-quants, no
/// `sqrt(sigma2 + x²)` factor: ggml has that line commented out); without, it is the reference
/// quantizer.
fn quantize_q6_k_impl(src: &[f32], qw: Option<&[f32]>, dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ6K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    debug_assert!(qw.is_none_or(|w| w.len() == src.len()));
    for (i, (x, y)) in src.chunks_exact(QK_K).zip(yb).enumerate() {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let group = QK_K * i + 16 * ib..QK_K * i + 16 * ib + 16;
            let scale = make_qx_quants(
                32,
                &x[16 * ib..16 * ib + 16],
                &mut l[16 * ib..16 * ib + 16],
                1,
                qw.map(|w| &w[group]),
            );
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; QK_K / 16],
                d: f16_to_le(0.0),
            };
            continue;
        }
        let iscale = -128.0 / max_scale;
        y.d = f16_to_le(1.0 / iscale);
        for ib in 0..QK_K / 16 {
            y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = y.d() * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            let (ql, qh) = (&mut y.ql[j / 2..j / 2 + 64], &mut y.qh[j / 4..j / 4 + 32]);
            for i in 0..32 {
                let lv = |k: usize| l[j + i + 32 * k] as u8;
                ql[i] = (lv(0) & 0xF) | ((lv(2) & 0xF) << 4);
                ql[i + 32] = (lv(1) & 0xF) | ((lv(3) & 0xF) << 4);
                qh[i] =
                    (lv(0) >> 4) | ((lv(1) >> 4) << 2) | ((lv(2) >> 4) << 4) | ((lv(3) >> 4) << 6);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Importance-weighted quantizers (ggml's `quantize_row_q*_K_impl` with non-NULL
// `quant_weights`). `src` is one or more whole super-blocks of a row and `qw` the importance
// weights of the same elements (`qw.len() == src.len()`); super-block `i` uses
// `qw[QK_K*i..QK_K*(i+1)]`.

/// `Σ x²` over a super-block, summed in element order as ggml does.
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// ggml's per-element error weights of the imatrix quantizers: `qw · sqrt(sigma2 + x²)`.
fn imatrix_weights<const N: usize>(x: &[f32], qw: &[f32], sigma2: f32) -> [f32; N] {
    let mut w = [0f32; N];
    for l in 0..N {
        w[l] = qw[l] * (sigma2 + x[l] * x[l]).sqrt();
    }
    w
}

/// Sum of a group's weights, in element order.
fn sum_in_order(w: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in w {
        s += v;
    }
    s
}

/// ggml's `quantize_row_q2_K_impl`: per-16 (scale, min) fits by `make_qkx3_quants` weighted by
/// `qw · sqrt(sigma2 + x²)` (`sigma2 = Σx²/256` of the super-block), then the 4-bit scales and
/// mins by `make_qp_quants` weighted by each group's total weight.
pub fn quantize_q2_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ2K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    debug_assert_eq!(qw.len(), src.len());
    for ((x, qwb), y) in src.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(yb) {
        let mut l = [0u8; QK_K];
        let mut mins = [0f32; QK_K / 16];
        let mut scales = [0f32; QK_K / 16];
        let mut sw = [0f32; QK_K / 16];
        let sigma2 = sum_sq(x) / QK_K as f32;
        for j in 0..QK_K / 16 {
            let g = 16 * j..16 * j + 16;
            let weight: [f32; 16] = imatrix_weights(&x[g.clone()], &qwb[g.clone()], sigma2);
            sw[j] = sum_in_order(&weight);
            (scales[j], mins[j]) = make_qkx3_quants(3, &x[g.clone()], &weight, &mut l[g]);
        }
        let mut ls = [0u8; QK_K / 16];
        let mut lm = [0u8; QK_K / 16];
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        y.d = f16_to_le(dm);
        y.dmin = f16_to_le(mm);
        let (dm, mm) = (y.d(), y.dmin());
        for j in 0..QK_K / 16 {
            y.scales[j] = ls[j] | (lm[j] << 4);
        }
        for j in 0..QK_K / 16 {
            let d = dm * (y.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let m = mm * (y.scales[j] >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        pack_2bit(&l, &mut y.qs);
    }
}

/// ggml's `quantize_row_q3_K_impl`: per-16 scales by the weighted `make_qx_quants` (weights
/// `qw · sqrt(sigma2 + x²)`, `sigma2 = 2·Σx²/256` of the super-block), then the 6-bit scales by
/// `make_qx_quants` again, weighted by each group's total weight.
pub fn quantize_q3_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ3K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    debug_assert_eq!(qw.len(), src.len());
    for ((x, qwb), y) in src.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(yb) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut sw = [0f32; QK_K / 16];
        let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
        for j in 0..QK_K / 16 {
            let g = 16 * j..16 * j + 16;
            let weight: [f32; 16] = imatrix_weights(&x[g.clone()], &qwb[g.clone()], sigma2);
            sw[j] = sum_in_order(&weight);
            scales[j] = make_qx_quants(4, &x[g.clone()], &mut l[g], 1, Some(&weight));
        }
        let mut ls = [0i8; QK_K / 16];
        let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
        y.scales = [0; 12];
        for j in 0..QK_K / 16 {
            let lv = ls[j] as i32; // 0..64
            if j < 8 {
                y.scales[j] = (lv & 0xF) as u8;
            } else {
                y.scales[j - 8] |= ((lv & 0xF) << 4) as u8;
            }
            y.scales[j % 4 + 8] |= ((lv >> 4) << (2 * (j / 4))) as u8;
        }
        y.d = f16_to_le(d_block);
        q3k_requantize_pack(x, &mut l, y);
    }
}

/// The weighted part of ggml's `quantize_row_q4_K_impl` / `quantize_row_q5_K_impl`: per-32
/// (scale, min) fits by `make_qkx3_quants` (weights `qw · sqrt(sigma2 + x²)`,
/// `sigma2 = 2·Σx²/256` of the super-block), the 6-bit scales and mins by `make_qp_quants`
/// weighted by each group's total weight, packing and requantization. `clamp_63`: Q5_K clamps
/// the 6-bit values to 63, Q4_K does not (they only exceed 63 for a negative group scale).
fn quantize_k4_like_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp_63: bool,
    d_out: &mut [u8; 2],
    dmin_out: &mut [u8; 2],
    scales_out: &mut [u8; 12],
) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut sw = [0f32; QK_K / 32];
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 32 {
        let g = 32 * j..32 * j + 32;
        let weights: [f32; 32] = imatrix_weights(&x[g.clone()], &qw[g.clone()], sigma2);
        sw[j] = sum_in_order(&weights);
        (scales[j], mins[j]) = make_qkx3_quants(nmax, &x[g.clone()], &weights, &mut l[g]);
    }
    let mut ls = [0u8; QK_K / 32];
    let mut lm = [0u8; QK_K / 32];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_63 {
        for j in 0..QK_K / 32 {
            ls[j] = ls[j].min(63);
            lm[j] = lm[j].min(63);
        }
    }
    pack_scales_k4(&ls, &lm, scales_out);
    *d_out = f16_to_le(d_block);
    *dmin_out = f16_to_le(m_block);
    k4_requantize(x, nmax, *d_out, *dmin_out, scales_out, &mut l);
    l
}

/// ggml's `quantize_row_q4_K_impl` with importance weights.
pub fn quantize_q4_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ4K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    debug_assert_eq!(qw.len(), src.len());
    for ((x, qwb), y) in src.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(yb) {
        let l = quantize_k4_like_weighted(x, qwb, 15, false, &mut y.d, &mut y.dmin, &mut y.scales);
        pack_q4k(&l, y);
    }
}

/// ggml's `quantize_row_q5_K_impl` with importance weights.
pub fn quantize_q5_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let yb = as_blocks_mut::<BlockQ5K>(dst);
    debug_assert_eq!(src.len(), yb.len() * QK_K);
    debug_assert_eq!(qw.len(), src.len());
    for ((x, qwb), y) in src.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(yb) {
        let l = quantize_k4_like_weighted(x, qwb, 31, true, &mut y.d, &mut y.dmin, &mut y.scales);
        pack_q5k(&l, y);
    }
}

/// ggml's `quantize_row_q6_K_impl` with importance weights (see [`quantize_q6_k_impl`]: the
/// weights are `qw` itself).
pub fn quantize_q6_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(qw.len(), src.len());
    quantize_q6_k_impl(src, Some(qw), dst);
}
