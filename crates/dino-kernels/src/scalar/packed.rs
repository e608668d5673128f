//! Repacked Q4_0 ("Q4_0x4"): four rows interleaved per block, so one 64-byte load holds the
//! quants of four rows and one 8-byte load their scales. Same size as the original rows.
//!
//! Layout of a group of 4 rows, per 32-element block `b`: the 4 f16 scales (8 bytes), then the
//! 16 quant bytes of row 0, 1, 2, 3 (ggml's nibble order: low nibbles are elements 0..16, high
//! nibbles 16..32). A group is `n_blocks * 72` bytes, exactly 4 original rows.
//!
//! Arithmetic (this scalar form is the reference the SIMD kernel equals bit for bit): each row
//! keeps 4 lane accumulators; lane `j` of block `b` sums the integer products of elements
//! `4j..4j+4` and `16+4j..16+4j+4`, `(q - 8) * y`, and is folded as
//! `acc[j] = fma(isum_j, d_w * d_a, acc[j])`; the row's value is `(acc0 + acc1) + (acc2 + acc3)`.
//! This is not ggml's order, so repacking is an option (`--no-repack` turns it off).

use crate::dispatch::Tile;
use crate::quant::blocks::*;

/// Rows interleaved per group.
pub const ROWS: usize = 4;
/// Bytes of one block of a group: 4 scales + 4 × 16 quant bytes.
pub const GROUP_BLOCK: usize = ROWS * 2 + ROWS * QK / 2;
const _: () = assert!(GROUP_BLOCK == ROWS * std::mem::size_of::<BlockQ4_0>());

/// Repacks `n_rows` (a multiple of 4) Q4_0 rows of `n` elements from `src` into `dst`.
pub fn pack_q4_0x4(src: &[u8], n: usize, n_rows: usize, dst: &mut [u8]) {
    assert!(n.is_multiple_of(QK) && n_rows.is_multiple_of(ROWS));
    let nb = n / QK;
    let rb = nb * std::mem::size_of::<BlockQ4_0>();
    assert!(src.len() == rb * n_rows && dst.len() == src.len());
    for g in 0..n_rows / ROWS {
        let rows: [&[BlockQ4_0]; ROWS] =
            std::array::from_fn(|i| as_blocks::<BlockQ4_0>(&src[(g * ROWS + i) * rb..][..rb]));
        let out = &mut dst[g * ROWS * rb..(g + 1) * ROWS * rb];
        for b in 0..nb {
            let o = &mut out[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
            for (i, r) in rows.iter().enumerate() {
                o[2 * i..2 * i + 2].copy_from_slice(&r[b].d);
                o[8 + 16 * i..8 + 16 * (i + 1)].copy_from_slice(&r[b].qs);
            }
        }
    }
}

/// One row's value from a packed group block sequence (the reference arithmetic).
fn row_dot(group: &[u8], i: usize, nb: usize, a: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 4];
    for (b, by) in a.iter().enumerate().take(nb) {
        let o = &group[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
        let dw = f16_from_le([o[2 * i], o[2 * i + 1]]);
        let d = dw * f16_from_le(by.d);
        let qs = &o[8 + 16 * i..8 + 16 * (i + 1)];
        for (j, acc) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for (e, &q) in qs.iter().enumerate().skip(4 * j).take(4) {
                let lo = (q & 0x0F) as i32 - 8;
                let hi = (q >> 4) as i32 - 8;
                isum += lo * by.qs[e] as i32 + hi * by.qs[e + 16] as i32;
            }
            *acc = (isum as f32).mul_add(d, *acc);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Tile over packed Q4_0x4 rows (`t.w` starts at a group boundary; `t.n_rows` is a multiple
/// of 4) with Q8_0 activations.
pub fn tile_q4_0x4(t: &mut Tile) {
    let nb = t.n / QK;
    let gb = nb * GROUP_BLOCK;
    let ab = t.act_row();
    assert!(t.n_rows.is_multiple_of(ROWS) && t.w.len() >= t.n_rows / ROWS * gb);
    for tok in 0..t.n_tok {
        let a = as_blocks::<BlockQ8_0>(&t.a[tok * ab..(tok + 1) * ab]);
        for g in 0..t.n_rows / ROWS {
            let group = &t.w[g * gb..(g + 1) * gb];
            for i in 0..ROWS {
                t.out[tok * t.n_rows + g * ROWS + i] = row_dot(group, i, nb, a);
            }
        }
    }
}
