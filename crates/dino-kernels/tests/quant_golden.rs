//! Bit-exactness against ggml: `tests/data/quant/golden.bin` is written by `make_golden.py` from
//! `gguf.quants` (llama.cpp's numpy port of ggml's reference quantizers and dequantizers). Our
//! `quantize_row` must produce the same bytes and `dequantize_row` the same f32 bits, on every
//! ISA level this CPU can run.

use dino_core::GgmlType;
use dino_kernels::dispatch::{kernels_for, Isa};
use dino_kernels::quant::{dequantize_row, quantize_row, vec_dot_type};

struct Record {
    ty: GgmlType,
    n: usize,
    /// bit 1: our numpy transcription of the C reference (not gguf.quants).
    flags: u32,
    input: Option<Vec<f32>>,
    quant: Vec<u8>,
    deq: Vec<f32>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn load() -> (String, Vec<Record>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/quant/golden.bin");
    let data = std::fs::read(path).expect("golden.bin (run tests/data/quant/make_golden.py)");
    let mut r = Reader(&data);
    assert_eq!(r.take(8), b"DINOGQ01");
    let vlen = r.u32() as usize;
    let version = String::from_utf8(r.take(vlen).to_vec()).unwrap();
    let count = r.u32();
    let mut recs = Vec::new();
    for _ in 0..count {
        let ty = GgmlType::from_id(r.u32()).expect("known type id");
        let n = r.u32() as usize;
        let flags = r.u32();
        let input = (flags & 1 != 0).then(|| r.f32s(n));
        let qlen = r.u32() as usize;
        let quant = r.take(qlen).to_vec();
        let deq = r.f32s(n);
        recs.push(Record {
            ty,
            n,
            flags,
            input,
            quant,
            deq,
        });
    }
    assert!(r.0.is_empty(), "trailing bytes in golden.bin");
    (version, recs)
}

fn first_byte_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn golden_covers_every_supported_type() {
    let (_, recs) = load();
    for t in dino_kernels::quant::SUPPORTED {
        if t == GgmlType::F32 {
            continue; // trivially exact; covered by the property tests
        }
        assert!(recs.iter().any(|r| r.ty == t), "no golden record for {t}");
    }
}

#[test]
fn quantize_row_is_bit_identical_to_ggml() {
    let (version, recs) = load();
    let mut checked = 0;
    for rec in &recs {
        let Some(input) = &rec.input else { continue };
        let mut q = vec![0u8; rec.ty.row_size(rec.n as u64).unwrap() as usize];
        quantize_row(rec.ty, input, &mut q).unwrap();
        assert_eq!(q.len(), rec.quant.len(), "{}", rec.ty);
        if let Some(i) = first_byte_diff(&q, &rec.quant) {
            let bs = rec.ty.type_size();
            panic!(
                "{} (golden from {version}, flags {}): byte {i} (block {}, offset {}) is {:#04x}, ggml has {:#04x}",
                rec.ty,
                rec.flags,
                i / bs,
                i % bs,
                q[i],
                rec.quant[i]
            );
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} quantize records");
}

/// ggml's x86 runtime activation quantizer for Q8_0/Q8_1 (`quantize_row_q8_0` in
/// `ggml-cpu/arch/x86/quants.c`), written out independently: `d = amax/127`, `id = 127/amax`,
/// round half to even. Returns the block bytes (Q8_1 with its `s = d·Σq`).
fn x86_q8_act(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let q: Vec<i8> = b.iter().map(|v| (v * id).round_ties_even() as i8).collect();
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        if ty == GgmlType::Q8_1 {
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            out.extend_from_slice(&half::f16::from_f32(sum as f32 * d).to_le_bytes());
        }
        out.extend(q.iter().map(|&v| v as u8));
    }
    out
}

#[test]
fn activation_quantizers_match_ggml_on_every_isa() {
    let (_, recs) = load();
    let mut checked = 0;
    for isa in Isa::ALL {
        for rec in &recs {
            let Some(input) = &rec.input else { continue };
            // Find a weight type whose activation type is this record's type.
            let Some(k) = dino_kernels::quant::SUPPORTED
                .iter()
                .filter(|&&w| vec_dot_type(w) == Some(rec.ty))
                .find_map(|&w| kernels_for(isa, w))
            else {
                continue;
            };
            let mut q = vec![0u8; rec.quant.len()];
            (k.quantize_act)(input, &mut q);
            if matches!(rec.ty, GgmlType::Q8_0 | GgmlType::Q8_1) {
                // Activations follow ggml's x86 runtime quantizer, which llama.cpp uses on this
                // CPU; it may differ from the reference (weight) quantizer by one step in
                // rare rounding ties, never more.
                assert_eq!(
                    q,
                    x86_q8_act(rec.ty, input),
                    "{isa} quantize_act {}",
                    rec.ty
                );
                let off = if rec.ty == GgmlType::Q8_1 { 4 } else { 2 };
                for (a, b) in q.chunks(off + 32).zip(rec.quant.chunks(off + 32)) {
                    assert_eq!(a[..2], b[..2], "{isa} {} scale", rec.ty);
                    for (x, y) in a[off..].iter().zip(&b[off..]) {
                        assert!(((*x as i8) as i32 - (*y as i8) as i32).abs() <= 1);
                    }
                }
            } else {
                assert_eq!(
                    first_byte_diff(&q, &rec.quant),
                    None,
                    "{isa} quantize_act {}",
                    rec.ty
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} activation records");
}

#[test]
fn dequantize_row_is_bit_identical_to_ggml() {
    let (version, recs) = load();
    for rec in &recs {
        let mut out = vec![0f32; rec.n];
        dequantize_row(rec.ty, &rec.quant, &mut out).unwrap();
        for (i, (a, b)) in out.iter().zip(&rec.deq).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} (golden from {version}): element {i}: {a:e} vs ggml {b:e}",
                rec.ty
            );
        }
        // Every ISA's table dequantizes identically too.
        for isa in Isa::ALL {
            if let Some(k) = kernels_for(isa, rec.ty) {
                let mut o2 = vec![0f32; rec.n];
                (k.dequantize)(&rec.quant, &mut o2);
                assert!(
                    o2.iter()
                        .zip(&rec.deq)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa} dequantize {}",
                    rec.ty
                );
            }
        }
    }
}
