//! ggml-compatible quantization: block layouts, checked (de)quantization of rows and dot
//! products. These are the checked entry points; the hot path goes through
//! [`crate::dispatch::kernels`], whose function pointers trust their caller.
//!
//! Supported types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K,
//! Q6_K, Q8_K. Results are bit-identical to ggml's reference quantizers (and, with an importance
//! matrix, its weighted quantizers: [`quantize_row_weighted`]), `dequantize_row_*` and
//! generic (`*_generic`) dot products on the scalar path; the SIMD dot products differ only by
//! float summation order.

pub mod blocks;

pub use blocks::*;

use crate::dispatch;
use crate::scalar::{float, kquantize, kquants, legacy};
use dino_core::{Error, GgmlType, Result};

/// The types Dino can compute with.
pub const SUPPORTED: [GgmlType; 15] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
    ]
};

/// Types Dino can compute with (the 15 of [`SUPPORTED`]).
pub fn is_supported(t: GgmlType) -> bool {
    SUPPORTED.contains(&t)
}

/// ggml's `vec_dot_type`: the type activations are quantized to for a dot product with weights
/// of type `t`. F32->F32, F16->F16, BF16->BF16, Q4_0/Q5_0/Q8_0->Q8_0, Q4_1/Q5_1->Q8_1,
/// Q2_K..Q6_K->Q8_K; the activation types themselves map to themselves (Q8_1->Q8_1,
/// Q8_K->Q8_K). `None` if unsupported.
pub fn vec_dot_type(t: GgmlType) -> Option<GgmlType> {
    use GgmlType::*;
    Some(match t {
        F32 => F32,
        F16 => F16,
        BF16 => BF16,
        Q4_0 | Q5_0 | Q8_0 => Q8_0,
        Q4_1 | Q5_1 | Q8_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => Q8_K,
        _ => return None,
    })
}

fn unsupported(what: &str, t: GgmlType) -> Error {
    Error::Unsupported(format!(
        "{what}: tensor type {t} is not supported by dino-kernels"
    ))
}

/// Bytes of `n` elements of `t`, or an error naming `what` if `n` is not a whole number of blocks.
fn row_bytes(what: &str, t: GgmlType, n: usize) -> Result<usize> {
    let bs = t.block_size();
    if !n.is_multiple_of(bs) {
        return Err(Error::invalid(format!(
            "{what}({t}): {n} elements is not a multiple of the block size {bs}"
        )));
    }
    Ok(n / bs * t.type_size())
}

/// Dequantizes `dst.len()` elements from raw bytes `src` of type `t` (extra bytes in `src` are
/// ignored). Errors, never panics, on an unsupported type, a length that is not a multiple of
/// the block size, or `src` too short.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let k = dispatch::kernels(t).ok_or_else(|| unsupported("dequantize_row", t))?;
    let need = row_bytes("dequantize_row", t, dst.len())?;
    if src.len() < need {
        return Err(Error::invalid(format!(
            "dequantize_row({t}): {} elements need {need} bytes, got {}",
            dst.len(),
            src.len()
        )));
    }
    (k.dequantize)(&src[..need], dst);
    Ok(())
}

/// Quantizes `src` into `dst` with ggml's reference quantizer of `t` (`dst.len()` must be exactly
/// `t.row_size(src.len())`). All supported types can be quantized; the K-quants use ggml's
/// non-imatrix reference quantizers.
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    use GgmlType::*;
    let f: fn(&[f32], &mut [u8]) = match t {
        F32 => float::f32_to_bytes,
        F16 => float::f32_to_f16,
        BF16 => float::f32_to_bf16,
        Q4_0 => legacy::quantize_q4_0,
        Q4_1 => legacy::quantize_q4_1,
        Q5_0 => legacy::quantize_q5_0,
        Q5_1 => legacy::quantize_q5_1,
        Q8_0 => legacy::quantize_q8_0,
        Q8_1 => legacy::quantize_q8_1,
        Q2_K => kquantize::quantize_q2_k,
        Q3_K => kquantize::quantize_q3_k,
        Q4_K => kquantize::quantize_q4_k,
        Q5_K => kquantize::quantize_q5_k,
        Q6_K => kquantize::quantize_q6_k,
        Q8_K => kquants::quantize_q8_k,
        _ => return Err(unsupported("quantize_row", t)),
    };
    let need = row_bytes("quantize_row", t, src.len())?;
    if dst.len() != need {
        return Err(Error::invalid(format!(
            "quantize_row({t}): {} elements need exactly {need} bytes, got {}",
            src.len(),
            dst.len()
        )));
    }
    f(src, dst);
    Ok(())
}

/// Quantizes one row `src` of a weight tensor into `dst` as llama-quantize does with an importance
/// matrix: ggml's `ggml_quantize_chunk(t, src, dst, 0, 1, src.len(), qw)`, byte for byte.
///
/// - `qw == None`: exactly [`quantize_row`].
/// - `qw == Some(w)`: `w` holds the importance weights of the row's columns (the imatrix entry of
///   the tensor, or of its expert, one value per element of `src`); `w.len() != src.len()` is an
///   error. Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0 and Q5_1 use ggml's weighted
///   quantizers (`quantize_row_*_impl`); every other supported type ignores the weights, as ggml
///   does (Q8_0, the float types), and uses [`quantize_row`].
///
/// `src` must be exactly one row: the legacy types (Q4_0..Q5_1) weigh errors by the mean square of
/// the whole row, so quantizing several rows in one call is not the same as one call per row. The
/// same `w` serves every row of a tensor (of an expert, for a 3-D expert tensor). ggml does not
/// check the weights; llama-quantize refuses an imatrix with non-finite values.
///
/// Errors, never panics, on an unsupported type, a length that is not a whole number of blocks, a
/// `dst` that is not exactly `t.row_size(src.len())` bytes, or a wrong weight count.
pub fn quantize_row_weighted(
    t: GgmlType,
    src: &[f32],
    qw: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<()> {
    use GgmlType::*;
    let Some(w) = qw else {
        return quantize_row(t, src, dst);
    };
    if w.len() != src.len() {
        return Err(Error::invalid(format!(
            "quantize_row_weighted({t}): {} importance weights for a row of {} elements",
            w.len(),
            src.len()
        )));
    }
    let f: fn(&[f32], &[f32], &mut [u8]) = match t {
        Q4_0 => legacy::quantize_q4_0_weighted,
        Q4_1 => legacy::quantize_q4_1_weighted,
        Q5_0 => legacy::quantize_q5_0_weighted,
        Q5_1 => legacy::quantize_q5_1_weighted,
        Q2_K => kquantize::quantize_q2_k_weighted,
        Q3_K => kquantize::quantize_q3_k_weighted,
        Q4_K => kquantize::quantize_q4_k_weighted,
        Q5_K => kquantize::quantize_q5_k_weighted,
        Q6_K => kquantize::quantize_q6_k_weighted,
        _ => return quantize_row(t, src, dst),
    };
    let need = row_bytes("quantize_row_weighted", t, src.len())?;
    if dst.len() != need {
        return Err(Error::invalid(format!(
            "quantize_row_weighted({t}): {} elements need exactly {need} bytes, got {}",
            src.len(),
            dst.len()
        )));
    }
    f(src, w, dst);
    Ok(())
}

/// Checked dot product of a weight row (type `t`, `n` elements) with an activation row already
/// quantized to [`vec_dot_type`]`(t)`. Extra bytes in either slice are ignored.
pub fn try_vec_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Result<f32> {
    let k = dispatch::kernels(t).ok_or_else(|| unsupported("vec_dot", t))?;
    let w_need = row_bytes("vec_dot weights", t, n)?;
    let a_need = row_bytes("vec_dot activations", k.act_type, n)?;
    if w.len() < w_need || a.len() < a_need {
        return Err(Error::invalid(format!(
            "vec_dot({t}, n={n}): need {w_need} weight bytes and {a_need} {} activation bytes, got {} and {}",
            k.act_type,
            w.len(),
            a.len()
        )));
    }
    Ok((k.vec_dot)(n, &w[..w_need], &a[..a_need]))
}

/// Dot product of a weight row (type `t`, `n` elements) with an activation row already
/// quantized to [`vec_dot_type`]`(t)`.
///
/// # Panics
/// If `t` is unsupported or the lengths are invalid (see [`try_vec_dot`] for the error-returning
/// form; the hot path uses [`crate::dispatch::kernels`] directly).
pub fn vec_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    match try_vec_dot(t, n, w, a) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}
