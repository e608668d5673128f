//! Run-time kernel selection.
//!
//! The instruction set is chosen once, at first use, from CPU feature detection; the environment
//! variable `DINO_ISA=scalar|avx2|avx512` overrides it (an unavailable or unknown value is ignored with
//! a warning on stderr). [`kernels`] then hands out a `&'static` table of function pointers per
//! tensor type, which the matmul code caches per weight tensor.
//!
//! Adding an instruction set (AVX-512, NEON): add an [`Isa`] variant, its detection in
//! [`Isa::available`] and [`detect`], and a `kernels` function in its arch module (as
//! `crate::x86::avx2_kernels`), falling back to scalar entries for what it does not accelerate.

use crate::scalar::{float, kquants as k, legacy as l};
use dino_core::GgmlType;
use std::sync::OnceLock;

/// An instruction-set level with its own kernel table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust; runs anywhere.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell / Zen and later).
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL and VNNI (Ice Lake / Zen 4 and later).
    Avx512,
    // Neon slots in here.
}

impl Isa {
    /// Every level Dino knows, worst first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// The `DINO_ISA` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a `DINO_ISA` value (case-insensitive).
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the level's kernels.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => avx2_available(),
            Isa::Avx512 => avx512_available(),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    crate::x86::avx2_detected()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    crate::x86::avx512_detected()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_available() -> bool {
    false
}

/// The kernels of one weight type.
#[derive(Clone, Copy, Debug)]
pub struct TypeKernels {
    /// Dot product of a weight row (`n` elements of the weight type) with an activation row
    /// already quantized to `act_type`. The caller guarantees `n` is a multiple of both block
    /// sizes and the slices hold at least `n` elements (debug builds assert it; release builds
    /// stay memory-safe but may return a meaningless value). Hot: called per output row.
    pub vec_dot: DotFn,
    /// Quantizes f32 activations to `act_type`; `dst.len()` must be `act_type.row_size(src.len())`.
    pub quantize_act: fn(src: &[f32], dst: &mut [u8]),
    /// Dequantizes `dst.len()` elements of the weight type from `src`.
    pub dequantize: fn(src: &[u8], dst: &mut [f32]),
    /// ggml's `vec_dot_type` of the weight type.
    pub act_type: GgmlType,
    /// The dot product llama.cpp's x86 build uses for batched tokens when its batched kernel
    /// sums in another float order than its per-row `vec_dot` (used for decode and the
    /// remaining tokens). `None`: batches use `vec_dot` too.
    pub batch: Option<BatchDot>,
    /// Many rows × many tokens at once with exactly `vec_dot`'s arithmetic per output (each
    /// unpacked weight block is reused across the tile's tokens, each activation block across
    /// its rows). `None`: `matmul` loops over `vec_dot`.
    pub tile: Option<TileFn>,
    /// A repacked layout this level computes faster from (see `scalar/panel.rs`); weights
    /// are repacked once at load unless the user asks for `--no-repack`.
    pub packed: Option<PackedKernels>,
}

/// A repacked weight layout (the row-interleaved layouts of `scalar/panel.rs`, 16 rows per
/// group) with its tile kernel and activation format.
#[derive(Clone, Copy, Debug)]
pub struct PackedKernels {
    pub layout: &'static crate::scalar::panel::Layout,
    /// Tile over packed rows (`n_rows` a multiple of 16), every token, with activations made by
    /// `quantize_act`.
    pub tile: TileFn,
    /// Quantizes f32 activations to the layout's format (`layout.act.row_bytes(n)` bytes).
    pub quantize_act: fn(src: &[f32], dst: &mut [u8]),
    /// Whether `tile` streams one token's product from memory at least as fast as the file
    /// layout's kernels: a matrix that computes one token at a time (the output head) is
    /// repacked only then ([`crate::matmul::repack_for_decode`]).
    pub one_token: bool,
}

/// A block of outputs computed in one call: `out[t * n_rows + r] = dot(w row r, a row t)`.
#[derive(Debug)]
pub struct Tile<'a> {
    /// Elements per row.
    pub n: usize,
    /// `[n_rows, row_bytes]` weight rows.
    pub w: &'a [u8],
    pub n_rows: usize,
    /// `[n_tok, act_row]` quantized activation rows.
    pub a: &'a [u8],
    pub n_tok: usize,
    /// `[n_tok, n_rows]`.
    pub out: &'a mut [f32],
}

impl Tile<'_> {
    pub fn row_bytes(&self) -> usize {
        self.w.len() / self.n_rows.max(1)
    }
    pub fn act_row(&self) -> usize {
        self.a.len() / self.n_tok.max(1)
    }
    /// The reference every tile kernel must equal bit for bit: `dot` per output.
    pub fn by_dot(&mut self, dot: DotFn) {
        let (rb, ab) = (self.row_bytes(), self.act_row());
        for t in 0..self.n_tok {
            let a = &self.a[t * ab..(t + 1) * ab];
            for r in 0..self.n_rows {
                self.out[t * self.n_rows + r] = dot(self.n, &self.w[r * rb..(r + 1) * rb], a);
            }
        }
    }
}

/// A dot-product kernel: weight row × quantized activation row.
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;
/// A tile kernel (see [`Tile`]).
pub type TileFn = fn(&mut Tile);

/// A batched-kernel variant of a dot product and which tokens of a batch it applies to.
#[derive(Clone, Copy, Debug)]
pub struct BatchDot {
    pub dot: DotFn,
    pub rule: BatchRule,
    /// Tile kernel with `dot`'s arithmetic.
    pub tile: Option<TileFn>,
}

/// Which tokens of an `n`-token batch llama.cpp computes with its batched kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRule {
    /// The repacked GEMMs (Q4_K 8x8): whole groups of 4 tokens; the rest per row.
    WholeGroupsOf4,
    /// The tiled K-quant GEMM: every token once the batch has at least this many.
    AllFrom(usize),
}

impl BatchRule {
    /// How many leading tokens of an `n`-token batch take the batched kernel.
    pub fn tokens(self, n: usize) -> usize {
        match self {
            BatchRule::WholeGroupsOf4 if n >= 4 => n - n % 4,
            BatchRule::AllFrom(m) if n >= m => n,
            _ => 0,
        }
    }
}

/// The best level this CPU supports.
pub fn detect() -> Isa {
    if Isa::Avx512.available() {
        Isa::Avx512
    } else if Isa::Avx2.available() {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

/// The level in use: detected once, overridable with `DINO_ISA`.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = detect();
        match std::env::var("DINO_ISA") {
            Ok(v) if !v.trim().is_empty() => match Isa::from_name(&v) {
                Some(i) if i.available() => i,
                Some(i) => {
                    eprintln!("dino: DINO_ISA={i} is not supported by this CPU; using {detected}");
                    detected
                }
                None => {
                    eprintln!(
                        "dino: unknown DINO_ISA={v:?} (expected scalar|avx2|avx512); using {detected}"
                    );
                    detected
                }
            },
            _ => detected,
        }
    })
}

/// Kernels that are not per weight type.
#[derive(Clone, Copy, Debug)]
pub struct OpKernels {
    /// Decode attention of a GQA group of query heads with llama.cpp's f16 arithmetic
    /// (`ops::attend_head_decode`).
    pub attend_decode: crate::ops::AttendFn,
    /// Decode attention of a GQA group over a cache with quantized keys or values, with
    /// llama.cpp's arithmetic for them (`ops::attend_group_decode_q_scalar`).
    pub attend_decode_q: crate::ops::AttendQFn,
    /// Prompt attention over a transposed f32 cache copy (`ops::attend_prompt_scalar`).
    pub attend_prompt: crate::ops::AttendPromptFn,
    /// `gate = silu(gate) * up` (`ops::swiglu`).
    pub swiglu: fn(&mut [f32], &[f32]),
    /// Rotary embedding of one token's heads (`ops::RopeParams::apply`).
    pub rope: fn(&crate::ops::RopeParams, &mut [f32], usize, &[f32]),
    /// Walsh–Hadamard rotation of chunks of a power-of-two size (`ops::fwht`).
    pub fwht: fn(&mut [f32], usize),
    /// A column-layout product over a sparse input, for a range of outputs
    /// (`sparse::column_gemv_scalar`).
    pub column_gemv: fn(
        &crate::sparse::ColumnView,
        &crate::sparse::SparsePlan,
        std::ops::Range<usize>,
        &mut [f32],
    ),
}

/// The op kernels of the level in use.
pub fn op_kernels() -> &'static OpKernels {
    op_kernels_for(isa()).expect("the detected level is available")
}

/// The op kernels of a level, or `None` if this CPU cannot run it.
pub fn op_kernels_for(isa: Isa) -> Option<&'static OpKernels> {
    static SCALAR: OpKernels = OpKernels {
        attend_decode: crate::ops::attend_group_decode_scalar,
        attend_decode_q: crate::ops::attend_group_decode_q_scalar,
        attend_prompt: crate::ops::attend_prompt_scalar,
        swiglu: crate::ops::swiglu_scalar,
        rope: crate::ops::RopeParams::apply_scalar,
        fwht: crate::ops::fwht_scalar,
        column_gemv: crate::sparse::column_gemv_scalar,
    };
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::x86::avx2_op_kernels(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => crate::x86::avx512_op_kernels(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => None,
    }
}

/// The kernel table of weight type `t` for the level in use, or `None` if Dino cannot compute
/// with `t`.
pub fn kernels(t: GgmlType) -> Option<&'static TypeKernels> {
    kernels_for(isa(), t)
}

/// The kernel table of `t` at a given level, or `None` if the type is unsupported or this CPU
/// cannot run the level. Used by tests and benchmarks to compare levels.
pub fn kernels_for(isa: Isa, t: GgmlType) -> Option<&'static TypeKernels> {
    match isa {
        Isa::Scalar => scalar_kernels(t),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::x86::avx2_kernels(t),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => crate::x86::avx512_kernels(t),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => None,
    }
}

macro_rules! table {
    ($name:ident: $vd:expr, $qa:expr, $dq:expr, $act:ident $(, tile: $tile:expr)?
     $(, packed: $pk:expr)?) => {
        static $name: TypeKernels = TypeKernels {
            vec_dot: $vd,
            quantize_act: $qa,
            dequantize: $dq,
            act_type: GgmlType::$act,
            batch: None,
            tile: $crate::dispatch::opt!($($tile)?),
            packed: $crate::dispatch::opt!($($pk)?),
        };
    };
    ($name:ident: $vd:expr, $qa:expr, $dq:expr, $act:ident $(, tile: $tile:expr)?,
     batch: $vg:expr, $rule:expr $(, btile: $bt:expr)? $(, packed: $pk:expr)?) => {
        static $name: TypeKernels = TypeKernels {
            vec_dot: $vd,
            quantize_act: $qa,
            dequantize: $dq,
            act_type: GgmlType::$act,
            batch: Some(BatchDot {
                dot: $vg,
                rule: $rule,
                tile: $crate::dispatch::opt!($($bt)?),
            }),
            tile: $crate::dispatch::opt!($($tile)?),
            packed: $crate::dispatch::opt!($($pk)?),
        };
    };
}
macro_rules! opt {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}
pub(crate) use opt;
pub(crate) use table;

/// The scalar reference of the repacked layout of `t` (what every level's `packed` kernels
/// must equal bit for bit), if the type has one.
pub fn packed_reference(t: GgmlType) -> Option<PackedKernels> {
    use crate::scalar::panel as p;
    let tile: TileFn = match t {
        GgmlType::Q4_0 => p::tile_q4_0,
        GgmlType::Q4_1 => p::tile_q4_1,
        GgmlType::Q5_0 => p::tile_q5_0,
        GgmlType::Q5_1 => p::tile_q5_1,
        GgmlType::Q8_0 => p::tile_q8_0,
        GgmlType::Q4_K => p::tile_q4_k,
        GgmlType::Q5_K => p::tile_q5_k,
        GgmlType::Q6_K => p::tile_q6_k,
        GgmlType::F16 => p::tile_f16,
        _ => return None,
    };
    let layout = p::layout(t)?;
    Some(PackedKernels {
        layout,
        tile,
        quantize_act: match layout.act {
            p::PanelAct::Int8 => p::quantize_act,
            p::PanelAct::F32 => crate::scalar::float::f32_to_bytes,
        },
        one_token: true,
    })
}

fn scalar_kernels(t: GgmlType) -> Option<&'static TypeKernels> {
    use GgmlType::*;
    table!(KF32: float::vec_dot_f32, float::f32_to_bytes, float::bytes_to_f32, F32);
    table!(KF16: float::vec_dot_f16, float::f32_to_f16, float::f16_to_f32, F16);
    table!(KBF16: float::vec_dot_bf16, float::f32_to_bf16, float::bf16_to_f32, BF16);
    table!(KQ4_0: l::vec_dot_q4_0_q8_0, l::quantize_q8_0_act, l::dequantize_q4_0, Q8_0);
    table!(KQ4_1: l::vec_dot_q4_1_q8_1, l::quantize_q8_1_act, l::dequantize_q4_1, Q8_1);
    table!(KQ5_0: l::vec_dot_q5_0_q8_0, l::quantize_q8_0_act, l::dequantize_q5_0, Q8_0);
    table!(KQ5_1: l::vec_dot_q5_1_q8_1, l::quantize_q8_1_act, l::dequantize_q5_1, Q8_1);
    table!(KQ8_0: l::vec_dot_q8_0_q8_0, l::quantize_q8_0_act, l::dequantize_q8_0, Q8_0);
    table!(KQ8_1: l::vec_dot_q8_1_q8_1, l::quantize_q8_1_act, l::dequantize_q8_1, Q8_1);
    table!(KQ2K: k::vec_dot_q2_k_q8_k, k::quantize_q8_k, k::dequantize_q2_k, Q8_K);
    table!(KQ3K: k::vec_dot_q3_k_q8_k, k::quantize_q8_k, k::dequantize_q3_k, Q8_K, batch: k::vec_dot_q3_k_q8_k_tiled, BatchRule::AllFrom(8));
    table!(KQ4K: k::vec_dot_q4_k_q8_k, k::quantize_q8_k, k::dequantize_q4_k, Q8_K, batch: k::vec_dot_q4_k_q8_k_gemm, BatchRule::WholeGroupsOf4);
    table!(KQ5K: k::vec_dot_q5_k_q8_k, k::quantize_q8_k, k::dequantize_q5_k, Q8_K);
    table!(KQ6K: k::vec_dot_q6_k_q8_k, k::quantize_q8_k, k::dequantize_q6_k, Q8_K, batch: k::vec_dot_q6_k_q8_k_tiled, BatchRule::AllFrom(8));
    table!(KQ8K: k::vec_dot_q8_k_q8_k, k::quantize_q8_k, k::dequantize_q8_k, Q8_K);
    Some(match t {
        F32 => &KF32,
        F16 => &KF16,
        BF16 => &KBF16,
        Q4_0 => &KQ4_0,
        Q4_1 => &KQ4_1,
        Q5_0 => &KQ5_0,
        Q5_1 => &KQ5_1,
        Q8_0 => &KQ8_0,
        Q8_1 => &KQ8_1,
        Q2_K => &KQ2K,
        Q3_K => &KQ3K,
        Q4_K => &KQ4K,
        Q5_K => &KQ5K,
        Q6_K => &KQ6K,
        Q8_K => &KQ8K,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_agree_with_vec_dot_type() {
        for &t in GgmlType::all() {
            for isa in Isa::ALL {
                if let Some(k) = kernels_for(isa, t) {
                    assert_eq!(Some(k.act_type), crate::quant::vec_dot_type(t), "{isa} {t}");
                }
            }
            assert_eq!(
                scalar_kernels(t).is_some(),
                crate::quant::is_supported(t),
                "{t}"
            );
        }
    }

    #[test]
    fn isa_names_round_trip() {
        for i in Isa::ALL {
            assert_eq!(Isa::from_name(i.name()), Some(i));
        }
        assert_eq!(Isa::from_name("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("sse9"), None);
        assert!(isa().available());
    }
}
