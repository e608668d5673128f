//! Column-major weights for activation sparsity: input `i`'s weights to a run of outputs are
//! contiguous, so a product over a sparse input reads only the columns of its nonzero values
//! ([`ColumnMatrix::gemv`]). Several matrices that read one input (Q, K and V; gate and up) are
//! stacked into one, their outputs one after another.
//!
//! The numbers are Q8_0's, transposed: each output row is quantized in blocks of 32 inputs
//! (scale `d[B][j]` of input block `B`, output `j`), and the int8 weights are stored by column,
//! offset by 128 (`u8`). Outputs are cut into tiles of [`TILE`] = 64; a tile's input block is
//! one 2176-byte record (Q8_0's size for 64 × 32 weights): the 64 outputs' f16 scales, then the
//! block's 32 columns of 64 bytes, one cache line each. A tile's records follow each other, so
//! a thread reads its tiles front to back and skips the lines of zero inputs.
//!
//! A product quantizes the input block by block as the dense kernels do (Q8_0:
//! `dx = amax / 127`), takes the nonzero inputs of each block four at a time, and sums
//! `Σ (q + 128)·xq − 128·Σ xq` exactly in integers per output and block (one `vpdpbusd` adds
//! four inputs' products), then `y = fma((float) sum, d[B][j] · dx[B], y)` block after block.
//! The integer sums are exact and the float steps are the same at every level, so every level
//! gives the scalar twin's bits.

use std::ops::Range;

use crate::matmul::{self, QMatrix};
use crate::pool::{SharedMut, ThreadPool};
use crate::quant::blocks::QK;
use dino_core::{Error, Result};

/// Outputs per tile of the column layout.
pub const TILE: usize = 64;
/// Cache lines per (tile, input block) record: two of f16 scales, one per input column.
pub const RECORD_LINES: usize = 2 + QK;

/// One cache line of the column layout.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line(pub [u8; 64]);

/// A weight matrix stored by input columns (int8, offset by 128) with Q8_0 block scales, in
/// tiles of 64 outputs (see the module's text).
pub struct ColumnMatrix {
    pub n_in: usize,
    pub n_out: usize,
    /// `[tile][input block]` records of [`RECORD_LINES`] lines.
    data: Vec<Line>,
}

/// One product's nonzero inputs, prepared once for all threads ([`ColumnMatrix::plan`]).
#[derive(Default)]
pub struct SparsePlan {
    /// Per input block with a nonzero input: its index, `dx`, `128 · Σ xq`, and its groups
    /// `groups[g0..g1]`.
    pub blocks: Vec<PlanBlock>,
    /// Four nonzero inputs of one block (a short last group repeats an input with `xq = 0`)
    /// and their quantized values, little-endian in one `i32`.
    pub groups: Vec<([u32; 4], i32)>,
}

#[derive(Clone, Copy, Debug)]
pub struct PlanBlock {
    pub block: u32,
    pub dx: f32,
    pub corr: i32,
    pub g0: u32,
    pub g1: u32,
}

/// What a column kernel reads.
#[derive(Clone, Copy)]
pub struct ColumnView<'a> {
    pub n_in: usize,
    pub n_out: usize,
    pub data: &'a [Line],
}

impl ColumnView<'_> {
    /// Input blocks.
    pub fn nb(&self) -> usize {
        self.n_in / QK
    }

    /// Tiles of outputs (the last one may be short).
    pub fn tiles(&self) -> usize {
        self.n_out.div_ceil(TILE)
    }

    /// The record of tile `t`, input block `b`.
    #[inline(always)]
    pub fn record(&self, t: usize, b: usize) -> &[Line] {
        &self.data[(t * self.nb() + b) * RECORD_LINES..][..RECORD_LINES]
    }
}

impl ColumnMatrix {
    /// The matrices `ms` (same input width, a multiple of 32), stacked and transposed: each row
    /// dequantized and requantized to Q8_0 (a Q8_0 source keeps its numbers).
    pub fn from_matrices(pool: &ThreadPool, ms: &[&QMatrix]) -> Result<ColumnMatrix> {
        let n_in = ms.first().map_or(0, |m| m.n_in);
        if n_in == 0 || !n_in.is_multiple_of(QK) || ms.iter().any(|m| m.n_in != n_in) {
            return Err(Error::invalid(format!(
                "column layout: matrices of {:?} inputs (one input width, a multiple of {QK})",
                ms.iter().map(|m| m.n_in).collect::<Vec<_>>(),
            )));
        }
        let n_out: usize = ms.iter().map(|m| m.n_out).sum();
        let nb = n_in / QK;
        let tiles = n_out.div_ceil(TILE);
        // Padding outputs keep weight q = 0 (stored 128) and scale 0.
        let mut data = vec![Line([128; 64]); tiles * nb * RECORD_LINES];
        for t in 0..tiles {
            for b in 0..nb {
                let r = (t * nb + b) * RECORD_LINES;
                data[r] = Line([0; 64]);
                data[r + 1] = Line([0; 64]);
            }
        }
        let pd = SharedMut::new(&mut data[..]);
        let mut first = 0;
        for m in ms {
            pool.for_chunks(m.n_out, 16, &|r| {
                let mut row = vec![0f32; n_in];
                for j in r {
                    let jg = first + j;
                    let (t, o) = (jg / TILE, jg % TILE);
                    matmul::dequantize_row(m, j, &mut row);
                    for (b, x) in row.chunks_exact(QK).enumerate() {
                        let (d, q) = q8_0_block(x);
                        let at = (t * nb + b) * RECORD_LINES;
                        // SAFETY: output `jg`'s bytes (its scale and one byte per column of
                        // each record of its tile) are written by this item only; the
                        // record's lines are disjoint from other records'.
                        let rec = unsafe { pd.slice(at, RECORD_LINES) };
                        let db = half::f16::from_f32(d).to_le_bytes();
                        rec[2 * o / 64].0[2 * o % 64..][..2].copy_from_slice(&db);
                        for (k, &v) in q.iter().enumerate() {
                            rec[2 + k].0[o] = (v as i16 + 128) as u8;
                        }
                    }
                }
            });
            first += m.n_out;
        }
        Ok(ColumnMatrix { n_in, n_out, data })
    }

    /// Bytes of the stored weights and scales.
    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    pub fn view(&self) -> ColumnView<'_> {
        ColumnView {
            n_in: self.n_in,
            n_out: self.n_out,
            data: &self.data,
        }
    }

    /// Weight `(j, i)` as stored: `d[i / 32][j] · q`.
    pub fn weight(&self, j: usize, i: usize) -> f32 {
        let v = self.view();
        let rec = v.record(j / TILE, i / QK);
        let o = j % TILE;
        let q = rec[2 + i % QK].0[o] as i32 - 128;
        scale_of(rec, o) * q as f32
    }

    /// The plan of input `x`: its blocks quantized as Q8_0 activations, their nonzero inputs in
    /// groups of four.
    pub fn plan(&self, x: &[f32], plan: &mut SparsePlan) {
        assert_eq!(x.len(), self.n_in);
        plan.blocks.clear();
        plan.groups.clear();
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            if xb.iter().all(|&v| v == 0.0) {
                continue;
            }
            let (dx, xq) = q8_0_block(xb);
            let g0 = plan.groups.len() as u32;
            let mut sum = 0i32;
            let (mut idx, mut v, mut k) = ([0u32; 4], [0i8; 4], 0);
            for (i, &q) in xq.iter().enumerate() {
                if q == 0 {
                    continue;
                }
                if k == 0 {
                    idx = [(b * QK + i) as u32; 4];
                    v = [0; 4];
                }
                idx[k] = (b * QK + i) as u32;
                v[k] = q;
                sum += q as i32;
                k += 1;
                if k == 4 {
                    plan.groups
                        .push((idx, i32::from_le_bytes(v.map(|c| c as u8))));
                    k = 0;
                }
            }
            if k > 0 {
                plan.groups
                    .push((idx, i32::from_le_bytes(v.map(|c| c as u8))));
            }
            if plan.groups.len() as u32 == g0 {
                continue;
            }
            plan.blocks.push(PlanBlock {
                block: b as u32,
                dx,
                corr: 128 * sum,
                g0,
                g1: plan.groups.len() as u32,
            });
        }
    }

    /// `y = W · x` for one input row `x` (`[n_in]`), reading only the columns of its nonzero
    /// (after quantization) inputs; `plan` is scratch.
    pub fn gemv(&self, pool: &ThreadPool, x: &[f32], y: &mut [f32], plan: &mut SparsePlan) {
        assert!(x.len() == self.n_in && y.len() == self.n_out);
        self.plan(x, plan);
        let (view, plan) = (self.view(), &*plan);
        let f = crate::dispatch::op_kernels().column_gemv;
        let py = SharedMut::new(y);
        let n_out = self.n_out;
        // One run of tiles per thread: its records are then read front to back.
        let tiles = view.tiles();
        let per = tiles.div_ceil(pool.n_threads());
        pool.for_chunks(tiles, per, &|r| {
            let (j0, j1) = (r.start * TILE, (r.end * TILE).min(n_out));
            // SAFETY: outputs `j0..j1` are written by this item only.
            let yr = unsafe { py.slice(j0, j1 - j0) };
            f(&view, plan, r, yr);
        });
    }
}

/// The f16 scale of output `o` of a record, as f32.
#[inline(always)]
fn scale_of(rec: &[Line], o: usize) -> f32 {
    let b = &rec[2 * o / 64].0[2 * o % 64..][..2];
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// A Q8_0 block of `x` by ggml's reference quantizer: `d` (as its f16 rounding) and the quants.
fn q8_0_block(x: &[f32]) -> (f32, [i8; QK]) {
    let mut q = [0i8; QK];
    let d = crate::scalar::legacy::q8_0_reference_block(x, &mut q);
    (half::f16::from_f32(d).to_f32(), q)
}

/// Scalar twin of the column kernels: the outputs of tiles `tiles` of the plan's product
/// (`y` holds outputs `64 tiles.start ..`, cut at the matrix's last output).
pub fn column_gemv_scalar(m: &ColumnView, plan: &SparsePlan, tiles: Range<usize>, y: &mut [f32]) {
    let j0 = tiles.start * TILE;
    assert!(tiles.end <= m.tiles() && y.len() == (tiles.end * TILE).min(m.n_out) - j0);
    for t in tiles {
        let mut acc = [0f32; TILE];
        for pb in &plan.blocks {
            let rec = m.record(t, pb.block as usize);
            let mut ia = [0i32; TILE];
            for (idx, xq) in &plan.groups[pb.g0 as usize..pb.g1 as usize] {
                let xb = xq.to_le_bytes();
                for k in 0..4 {
                    let col = &rec[2 + idx[k] as usize % QK].0;
                    for (a, &w) in ia.iter_mut().zip(col) {
                        *a += w as i32 * xb[k] as i8 as i32;
                    }
                }
            }
            for (o, (a, &s)) in acc.iter_mut().zip(&ia).enumerate() {
                *a = ((s - pb.corr) as f32).mul_add(scale_of(rec, o) * pb.dx, *a);
            }
        }
        let o0 = t * TILE - j0;
        let n = (y.len() - o0).min(TILE);
        y[o0..o0 + n].copy_from_slice(&acc[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_core::GgmlType;

    #[test]
    fn columns_are_the_transposed_q8_0_rows() {
        let pool = ThreadPool::new(2);
        let (n_in, n_a, n_b) = (64, 32, 48);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 2001) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        let (wa, wb) = (rnd(n_in * n_a), rnd(n_in * n_b));
        let q8 = |w: &[f32]| {
            let rb = GgmlType::Q8_0.row_size(n_in as u64).unwrap() as usize;
            let mut out = vec![0u8; rb * w.len() / n_in];
            for (s, d) in w.chunks_exact(n_in).zip(out.chunks_exact_mut(rb)) {
                crate::quant::quantize_row(GgmlType::Q8_0, s, d).unwrap();
            }
            out
        };
        let (ba, bb) = (q8(&wa), q8(&wb));
        let ma = QMatrix::new("a", &ba, GgmlType::Q8_0, n_in, n_a).unwrap();
        let mb = QMatrix::new("b", &bb, GgmlType::Q8_0, n_in, n_b).unwrap();
        let c = ColumnMatrix::from_matrices(&pool, &[&ma, &mb]).unwrap();
        assert_eq!((c.n_in, c.n_out), (n_in, n_a + n_b));
        // A Q8_0 source keeps its numbers exactly.
        let mut row = vec![0f32; n_in];
        for j in 0..n_a + n_b {
            let (m, r) = if j < n_a { (&ma, j) } else { (&mb, j - n_a) };
            matmul::dequantize_row(m, r, &mut row);
            for (i, &w) in row.iter().enumerate() {
                assert_eq!(c.weight(j, i), w, "{j} {i}");
            }
        }
        let other = QMatrix::new("c", &ba[..34 * 8], GgmlType::Q8_0, 32, 8).unwrap();
        assert!(ColumnMatrix::from_matrices(&pool, &[&ma, &other]).is_err());
    }

    #[test]
    fn plans_group_the_nonzero_inputs_of_each_block() {
        let mut x = vec![0f32; 96];
        for (i, v) in [
            (1usize, 1.0f32),
            (5, -2.0),
            (6, 0.5),
            (7, 3.0),
            (9, 1.0),
            (70, -1.0),
        ] {
            x[i] = v;
        }
        x[40] = 1e-9; // rounds to 0 against block 1's largest value: no work
        x[41] = 1.0;
        let c = ColumnMatrix {
            n_in: 96,
            n_out: 16,
            data: vec![Line([128; 64]); 3 * RECORD_LINES],
        };
        let mut p = SparsePlan::default();
        c.plan(&x, &mut p);
        let blocks: Vec<u32> = p.blocks.iter().map(|b| b.block).collect();
        assert_eq!(blocks, [0, 1, 2]);
        assert_eq!(p.groups.len(), 4);
        assert_eq!(p.groups[0].0, [1, 5, 6, 7]);
        assert_eq!(p.groups[1].0, [9, 9, 9, 9]);
        assert_eq!(p.groups[1].1.to_le_bytes()[1..], [0, 0, 0]);
        assert_eq!(p.groups[2].0, [41; 4]);
        // Block 0: dx = 3/127, xq = 42, -85, 21, 127, 42.
        assert_eq!(p.blocks[0].corr, 128 * (42 - 85 + 21 + 127 + 42));
    }
}
