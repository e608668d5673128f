//! Row-interleaved ("x16") weight layouts and their activation format: the reference arithmetic
//! of the AVX-512 VNNI GEMM (`x86/panel.rs`), which equals this code bit for bit.
//!
//! **Idea.** One 512-bit register holds 4 consecutive quants of 16 rows (one 32-bit lane per
//! row), as unsigned bytes. One `vpdpbusd` with 4 activation bytes broadcast to every lane then
//! adds 64 products into 16 per-row integer sums: no horizontal sums, no sign tricks, and each
//! unpacked weight register serves every token of a micro-tile. Every supported type maps to the
//! same form: per block of `B` elements (32, or 16 for Q6_K) and row,
//!
//! `w[e] = dw · q[e] + bw`, `q` unsigned (0..255),
//!
//! so with activations `a[e] = da · qa[e]` (per 32 elements) and `sa = da · Σ qa` (per block),
//!
//! `Σ w·a = (Σ q·qa) · (dw · da) + bw · sa`,
//!
//! computed as `acc = fma(isum as f32, dw * da, acc); acc = fma(bw, sa, acc)` per block, in
//! block order. The offset of signed types lands in `bw` (Q4_0: `bw = -8·dw`; Q8_0 stores
//! `q + 128`, `bw = -128·dw`), the minimum of the `_1`/K types is `bw` itself.
//!
//! This is not ggml's float order, so these layouts are part of repacking (`--no-repack` keeps
//! the file's layout and llama.cpp's exact arithmetic).
//!
//! **Layouts** (a group is 16 consecutive rows; a unit is 32 elements for the legacy types and
//! a 256-element super-block for the K-quants; within a unit, "zmm `i`" is 64 bytes whose
//! 32-bit lane `r` belongs to row `r`):
//! - Q4_0: `d[16]` f16, then 4 zmm of nibbles: lane `r` of zmm `i` is row `r`'s `qs[4i..4i+4]`
//!   (low nibbles: elements `4i..`, high nibbles: `16+4i..`). 288 bytes = 16 blocks.
//! - Q4_1: `d[16]`, `m[16]`, then as Q4_0. 320 bytes.
//! - Q5_0: `d[16]`, then 8 little-endian u64 bit masks (mask `g` bit `4r+j`: bit 4 of row `r`'s
//!   element `4g+j`, one byte-mask register per group), then as Q4_0. 352 bytes.
//! - Q5_1: `d[16]`, `m[16]`, the 8 masks, then as Q4_0. 384 bytes.
//! - Q8_0: `d[16]`, then 8 zmm: zmm `g` lane `r` is row `r`'s `qs[4g..4g+4]`. 544 bytes.
//! - Q4_K: `d[16]`, `dmin[16]`, `sc[8][16]` u8, `m[8][16]` u8 (the unpacked 6-bit scales), then
//!   per 64 elements `j` 8 zmm: zmm `i` lane `r` is row `r`'s `qs[32j+4i..+4]` (low nibbles:
//!   sub-block `2j`, high: `2j+1`). 2368 bytes (2.8 % more than 16 rows).
//! - Q5_K: as Q4_K with 64 masks of bit 4 (one per group of 4 elements) before the quants.
//!   2880 bytes (2.3 % more).
//! - Q6_K: `d[16]`, `sc[16][16]` i8, then per 128 elements `c`: 16 zmm of low nibbles (zmm
//!   `i`: groups `i` (low) and `16+i` (high)) followed by 8 zmm of high bit pairs (zmm `i`:
//!   bits `2k..2k+2` are group `8k+i`); a group is 4 consecutive elements. 3360 bytes.
//!
//! **Activations** (one row of `n` elements, `n` a multiple of 32): `qs[n]` i8, then `d[n/32]`,
//! `s32[n/32]` (`d · Σ qs` per 32) and `s16[n/16]` (per 16), all f32 little-endian.

use crate::dispatch::Tile;
use crate::quant::blocks::*;
use crate::scalar::kquants::k4_scales_mins;
use dino_core::{GgmlType, QK_K};

/// Rows per group.
pub const ROWS: usize = 16;

/// A row-interleaved layout of one weight type.
#[derive(Debug)]
pub struct Layout {
    pub ty: GgmlType,
    /// Elements per unit (the type's block, or its super-block).
    pub unit: usize,
    /// Elements per scale block inside a unit (32, or 16 for Q6_K).
    pub block: usize,
    /// Bytes of one unit of 16 rows.
    pub unit_bytes: usize,
    /// Packs one unit of 16 rows (each slice is that row's unit in the file's layout).
    pack_unit: fn(&[&[u8]; ROWS], &mut [u8]),
    /// Decodes block `blk` of a packed unit (`None`: the F16 layout, read as floats).
    decode: Option<fn(&[u8], usize, &mut Decoded)>,
    /// The activation format the layout's kernels read.
    pub act: PanelAct,
}

/// Activation formats of the packed kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelAct {
    /// int8 per 32 elements with f32 scale and sums ([`quantize_act`]).
    Int8,
    /// The f32 row as it is (little-endian bytes).
    F32,
}

impl PanelAct {
    /// Bytes of one activation row of `n` elements.
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            PanelAct::Int8 => act_row_bytes(n),
            PanelAct::F32 => 4 * n,
        }
    }
}

/// One block of a group, decoded: `w[r][e] = dw[r] * q[r][e] + bw[r]`.
pub struct Decoded {
    pub q: [[u8; 32]; ROWS],
    pub dw: [f32; ROWS],
    pub bw: [f32; ROWS],
}

impl Layout {
    /// Bytes of one group of 16 rows of `n` elements.
    pub fn group_bytes(&self, n: usize) -> usize {
        n / self.unit * self.unit_bytes
    }

    /// Packs `n_rows` (a multiple of 16) rows of `n` elements from `src` into `dst`
    /// (`n_rows / 16 * group_bytes(n)` bytes).
    pub fn pack(&self, src: &[u8], n: usize, n_rows: usize, dst: &mut [u8]) {
        assert!(n.is_multiple_of(self.unit) && n_rows.is_multiple_of(ROWS));
        let src_unit = self.ty.row_size(self.unit as u64).expect("unit") as usize;
        let n_units = n / self.unit;
        let rb = n_units * src_unit;
        let gb = self.group_bytes(n);
        assert!(src.len() == rb * n_rows && dst.len() == gb * (n_rows / ROWS));
        for g in 0..n_rows / ROWS {
            for u in 0..n_units {
                let rows: [&[u8]; ROWS] =
                    std::array::from_fn(|r| &src[(g * ROWS + r) * rb + u * src_unit..][..src_unit]);
                let o = &mut dst[g * gb + u * self.unit_bytes..][..self.unit_bytes];
                (self.pack_unit)(&rows, o);
            }
        }
    }

    /// Decodes block `blk` (of `unit / block`) of a packed unit.
    pub fn decode(&self, unit: &[u8], blk: usize, out: &mut Decoded) {
        (self.decode.expect("an integer layout"))(unit, blk, out)
    }

    /// Row `r` (of 16) of a packed group of `n`-element rows, as `dw·q + bw` per element (F16:
    /// the halves).
    pub fn dequantize_row(&self, group: &[u8], r: usize, n: usize, dst: &mut [f32]) {
        assert!(r < ROWS && dst.len() == n && group.len() >= self.group_bytes(n));
        if self.decode.is_none() {
            for (e, d) in dst.iter_mut().enumerate() {
                *d = f16_at(&group[32 * e..], r);
            }
            return;
        }
        let mut dec = Decoded {
            q: [[0; 32]; ROWS],
            dw: [0.0; ROWS],
            bw: [0.0; ROWS],
        };
        for u in 0..n / self.unit {
            let unit = &group[u * self.unit_bytes..(u + 1) * self.unit_bytes];
            for blk in 0..self.unit / self.block {
                self.decode(unit, blk, &mut dec);
                let e0 = u * self.unit + blk * self.block;
                for (e, d) in dst[e0..e0 + self.block].iter_mut().enumerate() {
                    *d = dec.dw[r] * dec.q[r][e] as f32 + dec.bw[r];
                }
            }
        }
    }

    /// The reference tile over packed groups (`t.w` starts at a group; `t.n_rows` a multiple
    /// of 16; activations in this module's format).
    pub fn tile(&self, t: &mut Tile) {
        if self.decode.is_none() {
            return tile_f16_ref(self, t);
        }
        let n = t.n;
        let gb = self.group_bytes(n);
        let ab = act_row_bytes(n);
        assert!(t.n_rows.is_multiple_of(ROWS) && t.w.len() >= t.n_rows / ROWS * gb);
        assert!(t.a.len() >= t.n_tok * ab && t.out.len() >= t.n_tok * t.n_rows);
        let mut dec = Decoded {
            q: [[0; 32]; ROWS],
            dw: [0.0; ROWS],
            bw: [0.0; ROWS],
        };
        let mut acc = vec![[0f32; ROWS]; t.n_tok];
        for g in 0..t.n_rows / ROWS {
            acc.iter_mut().for_each(|a| *a = [0.0; ROWS]);
            let group = &t.w[g * gb..(g + 1) * gb];
            for u in 0..n / self.unit {
                let unit = &group[u * self.unit_bytes..(u + 1) * self.unit_bytes];
                for blk in 0..self.unit / self.block {
                    self.decode(unit, blk, &mut dec);
                    let e0 = u * self.unit + blk * self.block;
                    for (tok, acc) in acc.iter_mut().enumerate() {
                        let a = &t.a[tok * ab..(tok + 1) * ab];
                        let da = act_d(a, n, e0 / 32);
                        let sa = act_sum(a, n, e0, self.block);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let mut isum = 0i32;
                            for e in 0..self.block {
                                isum += dec.q[r][e] as i32 * a[e0 + e] as i8 as i32;
                            }
                            *acc = (isum as f32).mul_add(dec.dw[r] * da, *acc);
                            *acc = dec.bw[r].mul_add(sa, *acc);
                        }
                    }
                }
            }
            for (tok, acc) in acc.iter().enumerate() {
                t.out[tok * t.n_rows + g * ROWS..][..ROWS].copy_from_slice(acc);
            }
        }
    }
}

/// The layout of `ty`, if it has one.
pub fn layout(ty: GgmlType) -> Option<&'static Layout> {
    Some(match ty {
        GgmlType::Q4_0 => &Q4_0,
        GgmlType::Q4_1 => &Q4_1,
        GgmlType::Q5_0 => &Q5_0,
        GgmlType::Q5_1 => &Q5_1,
        GgmlType::Q8_0 => &Q8_0,
        GgmlType::Q4_K => &Q4_K,
        GgmlType::Q5_K => &Q5_K,
        GgmlType::Q6_K => &Q6_K,
        GgmlType::F16 => &F16,
        _ => return None,
    })
}

pub static Q4_0: Layout = Layout {
    ty: GgmlType::Q4_0,
    unit: QK,
    block: QK,
    unit_bytes: 288,
    pack_unit: pack_q4_0,
    decode: Some(decode_q4_0),
    act: PanelAct::Int8,
};
pub static Q4_1: Layout = Layout {
    ty: GgmlType::Q4_1,
    unit: QK,
    block: QK,
    unit_bytes: 320,
    pack_unit: pack_q4_1,
    decode: Some(decode_q4_1),
    act: PanelAct::Int8,
};
pub static Q5_0: Layout = Layout {
    ty: GgmlType::Q5_0,
    unit: QK,
    block: QK,
    unit_bytes: 352,
    pack_unit: pack_q5_0,
    decode: Some(decode_q5_0),
    act: PanelAct::Int8,
};
pub static Q5_1: Layout = Layout {
    ty: GgmlType::Q5_1,
    unit: QK,
    block: QK,
    unit_bytes: 384,
    pack_unit: pack_q5_1,
    decode: Some(decode_q5_1),
    act: PanelAct::Int8,
};
pub static Q8_0: Layout = Layout {
    ty: GgmlType::Q8_0,
    unit: QK,
    block: QK,
    unit_bytes: 544,
    pack_unit: pack_q8_0,
    decode: Some(decode_q8_0),
    act: PanelAct::Int8,
};
pub static Q4_K: Layout = Layout {
    ty: GgmlType::Q4_K,
    unit: QK_K,
    block: 32,
    unit_bytes: Q4K_QS + 4 * 512,
    pack_unit: pack_q4_k,
    decode: Some(decode_q4_k),
    act: PanelAct::Int8,
};
pub static Q5_K: Layout = Layout {
    ty: GgmlType::Q5_K,
    unit: QK_K,
    block: 32,
    unit_bytes: Q5K_QS + 4 * 512,
    pack_unit: pack_q5_k,
    decode: Some(decode_q5_k),
    act: PanelAct::Int8,
};
pub static Q6_K: Layout = Layout {
    ty: GgmlType::Q6_K,
    unit: QK_K,
    block: 16,
    unit_bytes: Q6K_L + 2 * Q6K_CHUNK,
    pack_unit: pack_q6_k,
    decode: Some(decode_q6_k),
    act: PanelAct::Int8,
};

/// F16: per element, the 16 rows' halves (32 bytes); f32 activations; each output is two FMA
/// chains (even and odd elements, in order) added at the end.
pub static F16: Layout = Layout {
    ty: GgmlType::F16,
    unit: 32,
    block: 32,
    unit_bytes: 32 * 32,
    pack_unit: pack_f16,
    decode: None,
    act: PanelAct::F32,
};

fn pack_f16(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        for e in 0..32 {
            o[32 * e + 2 * r..][..2].copy_from_slice(&row[2 * e..2 * e + 2]);
        }
    }
}

/// The F16 layout's reference tile: `acc[e % 2] = fma(w, x, acc[e % 2])` per element, in
/// order, then `acc[0] + acc[1]`.
fn tile_f16_ref(l: &Layout, t: &mut Tile) {
    let n = t.n;
    let gb = l.group_bytes(n);
    assert!(t.n_rows.is_multiple_of(ROWS) && t.w.len() >= t.n_rows / ROWS * gb);
    assert!(t.a.len() >= t.n_tok * 4 * n && t.out.len() >= t.n_tok * t.n_rows);
    for g in 0..t.n_rows / ROWS {
        let group = &t.w[g * gb..(g + 1) * gb];
        for tok in 0..t.n_tok {
            let a = &t.a[tok * 4 * n..(tok + 1) * 4 * n];
            for r in 0..ROWS {
                let mut acc = [0f32; 2];
                for e in 0..n {
                    let w = f16_at(&group[32 * e..], r);
                    acc[e % 2] = w.mul_add(f32_at(a, 4 * e), acc[e % 2]);
                }
                t.out[tok * t.n_rows + g * ROWS + r] = acc[0] + acc[1];
            }
        }
    }
}

/// Q4_K unit offsets: `sc`, `m`, quants.
pub(crate) const Q4K_SC: usize = 64;
pub(crate) const Q4K_M: usize = Q4K_SC + 8 * ROWS;
pub(crate) const Q4K_QS: usize = Q4K_M + 8 * ROWS;
/// Q5_K unit offsets: bit-4 masks, quants (scales as Q4_K).
pub(crate) const Q5K_H: usize = Q4K_QS;
pub(crate) const Q5K_QS: usize = Q5K_H + 64 * 8;
/// Q6_K unit offsets: `sc`, then per 128 elements a chunk of [`Q6K_CHUNK`] bytes, its low
/// nibbles and then (at [`Q6K_HI`] in the chunk) its high bit pairs: a block's two reads are
/// 1 KB apart at most and the unit is read front to back.
pub(crate) const Q6K_SC: usize = 32;
pub(crate) const Q6K_L: usize = Q6K_SC + 16 * ROWS;
pub(crate) const Q6K_HI: usize = 1024;
pub(crate) const Q6K_CHUNK: usize = Q6K_HI + 512;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_from_le([b[2 * i], b[2 * i + 1]])
}

/// Lane `r` of zmm `i` at `base`: bytes `base + 64 i + 4 r ..`.
fn lane(i: usize, r: usize) -> usize {
    64 * i + 4 * r
}

fn pack_nibbles_4(rows: &[&[u8]; ROWS], qs_at: usize, o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        for i in 0..4 {
            o[lane(i, r)..][..4].copy_from_slice(&row[qs_at + 4 * i..][..4]);
        }
    }
}

fn decode_nibbles_4(qs: &[u8], out: &mut Decoded) {
    for r in 0..ROWS {
        for i in 0..4 {
            for j in 0..4 {
                let b = qs[lane(i, r) + j];
                out.q[r][4 * i + j] = b & 0x0F;
                out.q[r][16 + 4 * i + j] = b >> 4;
            }
        }
    }
}

fn pack_q4_0(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        o[2 * r..2 * r + 2].copy_from_slice(&row[..2]);
    }
    pack_nibbles_4(rows, 2, &mut o[32..]);
}

fn decode_q4_0(u: &[u8], _blk: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r);
        out.bw[r] = out.dw[r] * -8.0;
    }
    decode_nibbles_4(&u[32..], out);
}

fn pack_q4_1(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        o[2 * r..2 * r + 2].copy_from_slice(&row[..2]);
        o[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&row[2..4]);
    }
    pack_nibbles_4(rows, 4, &mut o[64..]);
}

fn decode_q4_1(u: &[u8], _blk: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r);
        out.bw[r] = f16_at(&u[32..], r);
    }
    decode_nibbles_4(&u[64..], out);
}

/// Sets bit `4r+j` of mask `g` (at `masks + 8g`) to bit 4 of element `4g+j` of row `r`, for
/// the `n_groups` groups of `hb(e)`, row `r`'s fifth bits.
fn pack_masks(o: &mut [u8], r: usize, n_groups: usize, hb: impl Fn(usize) -> bool) {
    for g in 0..n_groups {
        for j in 0..4 {
            if hb(4 * g + j) {
                let bit = 4 * r + j;
                o[8 * g + bit / 8] |= 1 << (bit % 8);
            }
        }
    }
}

fn mask_bit(masks: &[u8], g: usize, r: usize, j: usize) -> u8 {
    let bit = 4 * r + j;
    (masks[8 * g + bit / 8] >> (bit % 8)) & 1
}

fn pack_q5_0(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    o[32..96].fill(0);
    for (r, row) in rows.iter().enumerate() {
        let b = &as_blocks::<BlockQ5_0>(row)[0];
        o[2 * r..2 * r + 2].copy_from_slice(&b.d);
        let qh = u32::from_le_bytes(b.qh);
        pack_masks(&mut o[32..96], r, 8, |e| qh >> e & 1 == 1);
    }
    pack_nibbles_4(rows, 6, &mut o[96..]);
}

fn decode_high(masks: &[u8], n_groups: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        for g in 0..n_groups {
            for j in 0..4 {
                out.q[r][4 * g + j] |= mask_bit(masks, g, r, j) << 4;
            }
        }
    }
}

fn decode_q5_0(u: &[u8], _blk: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r);
        out.bw[r] = out.dw[r] * -16.0;
    }
    decode_nibbles_4(&u[96..], out);
    decode_high(&u[32..96], 8, out);
}

fn pack_q5_1(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    o[64..128].fill(0);
    for (r, row) in rows.iter().enumerate() {
        let b = &as_blocks::<BlockQ5_1>(row)[0];
        o[2 * r..2 * r + 2].copy_from_slice(&b.d);
        o[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b.m);
        let qh = u32::from_le_bytes(b.qh);
        pack_masks(&mut o[64..128], r, 8, |e| qh >> e & 1 == 1);
    }
    pack_nibbles_4(rows, 8, &mut o[128..]);
}

fn decode_q5_1(u: &[u8], _blk: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r);
        out.bw[r] = f16_at(&u[32..], r);
    }
    decode_nibbles_4(&u[128..], out);
    decode_high(&u[64..128], 8, out);
}

fn pack_q8_0(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        o[2 * r..2 * r + 2].copy_from_slice(&row[..2]);
        for g in 0..8 {
            o[32 + lane(g, r)..][..4].copy_from_slice(&row[2 + 4 * g..][..4]);
        }
    }
}

fn decode_q8_0(u: &[u8], _blk: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r);
        out.bw[r] = out.dw[r] * -128.0;
        for g in 0..8 {
            for j in 0..4 {
                out.q[r][4 * g + j] = u[32 + lane(g, r) + j] ^ 0x80;
            }
        }
    }
}

fn pack_q4_k(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        let b = &as_blocks::<BlockQ4K>(row)[0];
        o[2 * r..2 * r + 2].copy_from_slice(&b.d);
        o[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b.dmin);
        let (sc, m) = k4_scales_mins(&b.scales);
        for s in 0..8 {
            o[Q4K_SC + ROWS * s + r] = sc[s];
            o[Q4K_M + ROWS * s + r] = m[s];
        }
        for j in 0..4 {
            for i in 0..8 {
                o[Q4K_QS + 512 * j + lane(i, r)..][..4]
                    .copy_from_slice(&b.qs[32 * j + 4 * i..][..4]);
            }
        }
    }
}

fn decode_q4_k(u: &[u8], s: usize, out: &mut Decoded) {
    let (j, shift) = (s / 2, 4 * (s % 2));
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r) * u[Q4K_SC + ROWS * s + r] as f32;
        out.bw[r] = -(f16_at(&u[32..], r) * u[Q4K_M + ROWS * s + r] as f32);
        for i in 0..8 {
            for t in 0..4 {
                out.q[r][4 * i + t] = (u[Q4K_QS + 512 * j + lane(i, r) + t] >> shift) & 0x0F;
            }
        }
    }
}

fn pack_q5_k(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    o[Q5K_H..Q5K_QS].fill(0);
    for (r, row) in rows.iter().enumerate() {
        let b = &as_blocks::<BlockQ5K>(row)[0];
        o[2 * r..2 * r + 2].copy_from_slice(&b.d);
        o[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b.dmin);
        let (sc, m) = k4_scales_mins(&b.scales);
        for s in 0..8 {
            o[Q4K_SC + ROWS * s + r] = sc[s];
            o[Q4K_M + ROWS * s + r] = m[s];
        }
        // Element e's fifth bit is bit e / 32 of qh[e % 32].
        pack_masks(&mut o[Q5K_H..Q5K_QS], r, 64, |e| {
            b.qh[e % 32] >> (e / 32) & 1 == 1
        });
        for j in 0..4 {
            for i in 0..8 {
                o[Q5K_QS + 512 * j + lane(i, r)..][..4]
                    .copy_from_slice(&b.qs[32 * j + 4 * i..][..4]);
            }
        }
    }
}

fn decode_q5_k(u: &[u8], s: usize, out: &mut Decoded) {
    let (j, shift) = (s / 2, 4 * (s % 2));
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r) * u[Q4K_SC + ROWS * s + r] as f32;
        out.bw[r] = -(f16_at(&u[32..], r) * u[Q4K_M + ROWS * s + r] as f32);
        for i in 0..8 {
            for t in 0..4 {
                out.q[r][4 * i + t] = (u[Q5K_QS + 512 * j + lane(i, r) + t] >> shift) & 0x0F;
            }
        }
    }
    // Sub-block s holds groups 8s..8s+8 of the unit.
    decode_high(&u[Q5K_H + 64 * s..Q5K_H + 64 * (s + 1)], 8, out);
}

/// Byte offsets of element `e`'s low nibble and high bit pair in a Q6_K unit, with their
/// shifts, for row `r`.
fn q6k_place(e: usize, r: usize) -> (usize, u32, usize, u32) {
    let (c, g, t) = (e / 128, (e % 128) / 4, e % 4);
    (
        Q6K_L + Q6K_CHUNK * c + lane(g % 16, r) + t,
        4 * (g / 16) as u32,
        Q6K_L + Q6K_CHUNK * c + Q6K_HI + lane(g % 8, r) + t,
        2 * (g / 8) as u32,
    )
}

fn pack_q6_k(rows: &[&[u8]; ROWS], o: &mut [u8]) {
    for (r, row) in rows.iter().enumerate() {
        let b = &as_blocks::<BlockQ6K>(row)[0];
        o[2 * r..2 * r + 2].copy_from_slice(&b.d);
        for s in 0..16 {
            o[Q6K_SC + ROWS * s + r] = b.scales[s] as u8;
        }
        // ggml's element 128c + 32k + l has its low nibble in nibble k/2 of ql[64c + 32(k%2) + l]
        // and its high pair in bits 2k of qh[32c + l]; in this layout its group is 8k + l/4,
        // so both regions are ggml's bytes moved in 4-byte pieces (see `q6k_place`).
        for c in 0..2 {
            for i in 0..16 {
                o[Q6K_L + Q6K_CHUNK * c + lane(i, r)..][..4]
                    .copy_from_slice(&b.ql[64 * c + 4 * i..][..4]);
            }
            for i in 0..8 {
                o[Q6K_L + Q6K_CHUNK * c + Q6K_HI + lane(i, r)..][..4]
                    .copy_from_slice(&b.qh[32 * c + 4 * i..][..4]);
            }
        }
    }
}

fn decode_q6_k(u: &[u8], s: usize, out: &mut Decoded) {
    for r in 0..ROWS {
        out.dw[r] = f16_at(u, r) * (u[Q6K_SC + ROWS * s + r] as i8) as f32;
        out.bw[r] = out.dw[r] * -32.0;
        for k in 0..16 {
            let (lo, ls, hi, hs) = q6k_place(16 * s + k, r);
            out.q[r][k] = ((u[lo] >> ls) & 0x0F) | (((u[hi] >> hs) & 3) << 4);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activations

/// Bytes of one activation row of `n` elements (`n` a multiple of 32).
pub fn act_row_bytes(n: usize) -> usize {
    n + n / 32 * 8 + n / 16 * 4
}

fn f32_at(a: &[u8], off: usize) -> f32 {
    f32::from_le_bytes(a[off..off + 4].try_into().expect("4 bytes"))
}

/// The scale of 32-element block `b` of an activation row of `n` elements.
pub fn act_d(a: &[u8], n: usize, b: usize) -> f32 {
    f32_at(a, n + 4 * b)
}

/// `d · Σ qs` over the `block` (32 or 16) elements from `e0`.
pub fn act_sum(a: &[u8], n: usize, e0: usize, block: usize) -> f32 {
    if block == 32 {
        f32_at(a, n + n / 32 * 4 + 4 * (e0 / 32))
    } else {
        f32_at(a, n + n / 32 * 8 + 4 * (e0 / 16))
    }
}

/// Below this absolute maximum a block quantizes to zeros (its reciprocal scale would overflow).
pub const ACT_TINY: f32 = 1e-30;

/// Quantizes one activation row (`dst.len() == act_row_bytes(x.len())`): per 32 elements
/// `d = amax / 127`, `q = round_ties_even(x · (127 / amax))`.
pub fn quantize_act(x: &[f32], dst: &mut [u8]) {
    let n = x.len();
    assert!(n.is_multiple_of(32) && dst.len() == act_row_bytes(n));
    let nb = n / 32;
    let (qs, meta) = dst.split_at_mut(n);
    let (d, sums) = meta.split_at_mut(nb * 4);
    let (s32, s16) = sums.split_at_mut(nb * 4);
    for b in 0..nb {
        let xs = &x[32 * b..32 * b + 32];
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (dd, id) = if amax >= ACT_TINY {
            (amax / 127.0, 127.0 / amax)
        } else {
            (0.0, 0.0)
        };
        let mut sum = [0i32; 2];
        for (i, &v) in xs.iter().enumerate() {
            let q = ((v * id).round_ties_even() as i32).clamp(-127, 127);
            qs[32 * b + i] = q as i8 as u8;
            sum[i / 16] += q;
        }
        d[4 * b..4 * b + 4].copy_from_slice(&dd.to_le_bytes());
        s32[4 * b..4 * b + 4].copy_from_slice(&(dd * (sum[0] + sum[1]) as f32).to_le_bytes());
        for (h, &sh) in sum.iter().enumerate() {
            let o = 4 * (2 * b + h);
            s16[o..o + 4].copy_from_slice(&(dd * sh as f32).to_le_bytes());
        }
    }
}

/// Reference tiles of each layout (for `dispatch::PackedKernels`).
pub fn tile_q4_0(t: &mut Tile) {
    Q4_0.tile(t)
}
pub fn tile_q4_1(t: &mut Tile) {
    Q4_1.tile(t)
}
pub fn tile_q5_0(t: &mut Tile) {
    Q5_0.tile(t)
}
pub fn tile_q5_1(t: &mut Tile) {
    Q5_1.tile(t)
}
pub fn tile_q8_0(t: &mut Tile) {
    Q8_0.tile(t)
}
pub fn tile_q5_k(t: &mut Tile) {
    Q5_K.tile(t)
}
pub fn tile_q4_k(t: &mut Tile) {
    Q4_K.tile(t)
}
pub fn tile_q6_k(t: &mut Tile) {
    Q6_K.tile(t)
}
pub fn tile_f16(t: &mut Tile) {
    F16.tile(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// Decoding a packed group gives back exactly the dequantized weights of its rows.
    #[test]
    fn decode_reproduces_dequantized_rows() {
        let mut seed = 5u64;
        for l in [&Q4_0, &Q4_1, &Q5_0, &Q5_1, &Q8_0, &Q4_K, &Q5_K, &Q6_K, &F16] {
            let n = 512;
            let rb = l.ty.row_size(n as u64).unwrap() as usize;
            let wf: Vec<f32> = (0..n * ROWS).map(|_| lcg(&mut seed)).collect();
            let mut src = vec![0u8; rb * ROWS];
            quant::quantize_row(l.ty, &wf, &mut src).unwrap();
            let mut want = vec![0f32; n * ROWS];
            quant::dequantize_row(l.ty, &src, &mut want).unwrap();
            let mut dst = vec![0u8; l.group_bytes(n)];
            l.pack(&src, n, ROWS, &mut dst);
            for r in 0..ROWS {
                let mut row = vec![0f32; n];
                l.dequantize_row(&dst, r, n, &mut row);
                for (e, (&g, &w)) in row.iter().zip(&want[r * n..(r + 1) * n]).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{} r{r} e{e}: {g} vs {w}",
                        l.ty
                    );
                }
            }
            let mut dec = Decoded {
                q: [[0; 32]; ROWS],
                dw: [0.0; ROWS],
                bw: [0.0; ROWS],
            };
            // F16 has no integer decoding.
            let units = if l.decode.is_some() { n / l.unit } else { 0 };
            for u in 0..units {
                for blk in 0..l.unit / l.block {
                    l.decode(&dst[u * l.unit_bytes..], blk, &mut dec);
                    for r in 0..ROWS {
                        for e in 0..l.block {
                            let i = r * n + u * l.unit + blk * l.block + e;
                            let got = dec.dw[r] * dec.q[r][e] as f32 + dec.bw[r];
                            let tol = 1e-6 * (1.0 + want[i].abs());
                            assert!(
                                (got - want[i]).abs() <= tol,
                                "{} {i}: {got} vs {}",
                                l.ty,
                                want[i]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn activation_sums_match_quants() {
        let mut seed = 9u64;
        let n = 96;
        let mut x: Vec<f32> = (0..n).map(|_| 10.0 * lcg(&mut seed)).collect();
        x[32..64].fill(1e-35); // a tiny block quantizes to zeros
        let mut a = vec![0u8; act_row_bytes(n)];
        quantize_act(&x, &mut a);
        for b in 0..n / 32 {
            let d = act_d(&a, n, b);
            let q: Vec<i32> = a[32 * b..32 * b + 32]
                .iter()
                .map(|&v| v as i8 as i32)
                .collect();
            assert_eq!(act_sum(&a, n, 32 * b, 32), d * q.iter().sum::<i32>() as f32);
            assert_eq!(
                act_sum(&a, n, 32 * b + 16, 16),
                d * q[16..].iter().sum::<i32>() as f32
            );
            for (i, &v) in q.iter().enumerate() {
                assert!((d * v as f32 - x[32 * b + i]).abs() <= 0.5 * d + 1e-30);
            }
        }
        assert_eq!(act_d(&a, n, 1), 0.0);
    }
}
