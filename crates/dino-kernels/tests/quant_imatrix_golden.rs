//! Bit-exactness of the importance-matrix quantizers against ggml:
//! `tests/data/quant/imatrix_golden.bin` is written by `make_imatrix_golden.py`, which calls
//! ggml's own `ggml_quantize_chunk` (the call llama-quantize makes) with and without an imatrix.
//! `quantize_row_weighted`, one row at a time with the case's weights, must produce every byte.

use dino_core::GgmlType;
use dino_kernels::quant::{quantize_row, quantize_row_weighted, SUPPORTED};

struct Case {
    name: String,
    n_per_row: usize,
    /// [nrows, n_per_row]
    rows: Vec<f32>,
    /// [n_per_row], shared by every row.
    weights: Vec<f32>,
}

struct Expected {
    ty: GgmlType,
    case: usize,
    weighted: bool,
    /// [nrows, row_size]
    bytes: Vec<u8>,
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
    fn string(&mut self) -> String {
        let n = self.u32() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn load() -> (String, Vec<Case>, Vec<Expected>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quant/imatrix_golden.bin"
    );
    let data = std::fs::read(path)
        .expect("imatrix_golden.bin (run tests/data/quant/make_imatrix_golden.py)");
    let mut r = Reader(&data);
    assert_eq!(r.take(8), b"DINOIQ01");
    let version = r.string();
    let n_cases = r.u32();
    let mut cases = Vec::new();
    for _ in 0..n_cases {
        let name = r.string();
        let n_per_row = r.u32() as usize;
        let nrows = r.u32() as usize;
        let rows = r.f32s(nrows * n_per_row);
        let weights = r.f32s(n_per_row);
        cases.push(Case {
            name,
            n_per_row,
            rows,
            weights,
        });
    }
    let n_results = r.u32();
    let mut expected = Vec::new();
    for _ in 0..n_results {
        let ty = GgmlType::from_id(r.u32()).expect("known type id");
        let case = r.u32() as usize;
        let weighted = r.u32() & 1 != 0;
        let n = r.u32() as usize;
        expected.push(Expected {
            ty,
            case,
            weighted,
            bytes: r.take(n).to_vec(),
        });
    }
    assert!(r.0.is_empty(), "trailing bytes in imatrix_golden.bin");
    (version, cases, expected)
}

/// Quantizes every row of `case` as `quantize_row_weighted` and returns the first byte that
/// differs from ggml's, described.
fn first_mismatch(version: &str, case: &Case, e: &Expected) -> Option<String> {
    let row_size = e.ty.row_size(case.n_per_row as u64).unwrap() as usize;
    assert_eq!(e.bytes.len(), row_size * case.rows.len() / case.n_per_row);
    let qw = e.weighted.then_some(case.weights.as_slice());
    let mut q = vec![0u8; row_size];
    for (r, (x, want)) in case
        .rows
        .chunks_exact(case.n_per_row)
        .zip(e.bytes.chunks_exact(row_size))
        .enumerate()
    {
        quantize_row_weighted(e.ty, x, qw, &mut q).unwrap();
        if let Some(i) = q.iter().zip(want).position(|(a, b)| a != b) {
            let bs = e.ty.type_size();
            return Some(format!(
                "{} {} ({} weights, golden from {version}): row {r} byte {i} (block {}, offset {}) is {:#04x}, ggml has {:#04x}",
                e.ty,
                case.name,
                if e.weighted { "with" } else { "without" },
                i / bs,
                i % bs,
                q[i],
                want[i]
            ));
        }
    }
    None
}

#[test]
fn weighted_quantizers_are_bit_identical_to_ggml() {
    let (version, cases, expected) = load();
    let mut rows = 0;
    let mut failures = Vec::new();
    for e in &expected {
        let case = &cases[e.case];
        if let Some(msg) = first_mismatch(&version, case, e) {
            failures.push(msg);
        }
        rows += case.rows.len() / case.n_per_row;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every weighted type, with and without weights, on rows of 256 and 512 (and 32·k).
    use GgmlType::*;
    for t in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0] {
        for weighted in [true, false] {
            for n in [256, 512] {
                assert!(
                    expected.iter().any(|e| e.ty == t
                        && e.weighted == weighted
                        && cases[e.case].n_per_row == n),
                    "no golden result for {t} n_per_row {n} weighted {weighted}"
                );
            }
        }
    }
    assert!(rows >= 500, "only {rows} rows checked");
}

/// The test above must be able to fail: one flipped bit in ggml's bytes is caught, for every
/// type (and in the last row, so rows are not skipped).
#[test]
fn a_perturbed_golden_byte_is_caught() {
    let (version, cases, expected) = load();
    let mut checked = 0;
    for e in expected.iter().filter(|e| e.weighted) {
        let case = &cases[e.case];
        for at in [0, e.bytes.len() / 2, e.bytes.len() - 1] {
            let mut bad = Expected {
                ty: e.ty,
                case: e.case,
                weighted: true,
                bytes: e.bytes.clone(),
            };
            bad.bytes[at] ^= 0x10;
            assert!(
                first_mismatch(&version, case, &bad).is_some(),
                "{} {}: byte {at} flipped but not detected",
                e.ty,
                case.name
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn without_weights_is_quantize_row() {
    let (_, cases, _) = load();
    for case in &cases {
        let x = &case.rows[..case.n_per_row];
        for t in SUPPORTED {
            let Some(size) = t.row_size(case.n_per_row as u64) else {
                continue;
            };
            let size = size as usize;
            let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
            let ra = quantize_row(t, x, &mut a);
            let rb = quantize_row_weighted(t, x, None, &mut b);
            assert_eq!(ra.is_ok(), rb.is_ok(), "{t} {}", case.name);
            assert_eq!(a, b, "{t} {}", case.name);
        }
    }
}

/// ggml ignores the imatrix for Q8_0 and the float types; our other types without a weighted
/// quantizer (Q8_1, Q8_K) ignore it too.
#[test]
fn types_without_a_weighted_quantizer_ignore_the_weights() {
    use GgmlType::*;
    let (_, cases, _) = load();
    let case = cases.iter().find(|c| c.n_per_row == 512).unwrap();
    let x = &case.rows[..512];
    for t in [F32, F16, BF16, Q8_0, Q8_1, Q8_K] {
        let size = t.row_size(512).unwrap() as usize;
        let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
        quantize_row(t, x, &mut a).unwrap();
        quantize_row_weighted(t, x, Some(&case.weights), &mut b).unwrap();
        assert_eq!(a, b, "{t}");
    }
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    use GgmlType::*;
    let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
    let w = vec![1.0f32; 512];
    for t in SUPPORTED {
        let size = t.row_size(512).unwrap() as usize;
        let mut q = vec![0u8; size];
        // Wrong number of weights (too few, too many, none), for every type.
        let long = vec![1.0f32; 513];
        for wl in [511, 513, 256, 0] {
            let err = quantize_row_weighted(t, &x, Some(&long[..wl]), &mut q).unwrap_err();
            assert!(err.to_string().contains("importance weights"), "{t}: {err}");
        }
        // Wrong dst length.
        for dl in [size - 1, size + 1, 0] {
            let mut q = vec![0u8; dl];
            assert!(
                quantize_row_weighted(t, &x, Some(&w), &mut q).is_err(),
                "{t} dst {dl}"
            );
            assert!(quantize_row_weighted(t, &x, None, &mut q).is_err(), "{t}");
        }
    }
    // Not a whole number of blocks.
    for t in [Q4_0, Q5_1, Q2_K, Q6_K] {
        let n = t.block_size() + 16;
        let mut q = vec![0u8; 4096];
        assert!(quantize_row_weighted(t, &x[..n], Some(&w[..n]), &mut q).is_err());
    }
    // An unsupported type.
    let mut q = vec![0u8; 4096];
    assert!(quantize_row_weighted(IQ2_XXS, &x[..256], Some(&w[..256]), &mut q).is_err());
}
