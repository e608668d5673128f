//! Model architectures. The [`Model`] trait speaks in [`Batch`], [`KvCache`] and [`Logits`];
//! each family is one file in `arch/`, registered by one line in `registry.rs`; the pieces they
//! share live in `blocks/`.

pub mod arch;
pub mod blocks;
mod config;
mod kv;
mod registry;
pub mod sparsity;

pub use config::HParams;
pub use kv::{KvCache, KvShape, KvType, KvTypes, KV_BLOCK};
pub use registry::{load, supported_architectures, LoadOptions};
pub use sparsity::Sparsity;

use dino_core::Result;

/// Tokens from one or more sequences, processed together in one forward pass.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub pos: Vec<u32>,
    /// Sequence (KV-cache slot) of each token.
    pub seq: Vec<u32>,
    /// Whether logits are wanted for each token.
    pub want_logits: Vec<bool>,
}

impl Batch {
    /// A run of tokens of sequence `seq` starting at `start_pos`; logits only for the last
    /// token unless `all_logits`.
    pub fn from_tokens(tokens: &[u32], start_pos: usize, seq: u32, all_logits: bool) -> Batch {
        let n = tokens.len();
        Batch {
            tokens: tokens.to_vec(),
            pos: (0..n).map(|i| (start_pos + i) as u32).collect(),
            seq: vec![seq; n],
            want_logits: (0..n).map(|i| all_logits || i + 1 == n).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pos.clear();
        self.seq.clear();
        self.want_logits.clear();
    }

    pub fn push(&mut self, token: u32, pos: u32, seq: u32, want_logits: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.want_logits.push(want_logits);
    }
}

/// Logits for the tokens of a batch that asked for them, in batch order.
#[derive(Clone, Debug, Default)]
pub struct Logits {
    pub n_vocab: usize,
    /// `[n_rows, n_vocab]`
    pub data: Vec<f32>,
    /// Batch index of each row.
    pub batch_index: Vec<usize>,
}

impl Logits {
    pub fn n_rows(&self) -> usize {
        self.batch_index.len()
    }
    /// Row `i` (the `i`-th token that wanted logits).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.n_vocab..(i + 1) * self.n_vocab]
    }
    /// The last row.
    pub fn last(&self) -> &[f32] {
        self.row(self.n_rows() - 1)
    }
}

/// Static facts about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub arch: String,
    pub name: Option<String>,
    pub hparams: HParams,
    /// Bytes of weights read per generated token (the memory-bandwidth cost).
    pub weight_bytes: u64,
}

/// Receives the inputs of the weight matrices during [`Model::forward_observed`]:
/// `(names, rows, n_rows)`, the names of the matrices (GGUF tensor names, each once) that
/// multiply the `n_rows` rows of `rows` (`rows.len() / n_rows` values each, the matrices' input
/// width). Calibration (`dino calibrate`) sums the squares of these per input channel. The
/// residual stream entering each layer comes under [`layer_input_name`].
pub type Observer<'a> = dyn FnMut(&[&str], &[f32], usize) + 'a;

/// The observer's name for the residual stream entering layer `il` (`il = n_layer`: the output
/// norm's input), handed over alone before the layer's matrices (`dino prune` measures layer
/// importance from it; calibration skips it: [`is_layer_input`]).
pub fn layer_input_name(il: usize) -> String {
    format!("blk.{il}.layer_input")
}

/// Whether an observed name is a [`layer_input_name`].
pub fn is_layer_input(name: &str) -> bool {
    name.starts_with("blk.") && name.ends_with(".layer_input")
}

/// A model family's forward pass. Implementations hold weights only; all per-request state
/// (the KV cache) belongs to the caller.
pub trait Model: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// What the KV cache must hold per position.
    fn kv_shape(&self) -> KvShape;
    /// Run `batch`, appending its keys/values to `kv` at the given positions, and write logits
    /// for the tokens that want them into `out`.
    fn forward(&self, batch: &Batch, kv: &mut KvCache, out: &mut Logits) -> Result<()>;
    /// [`Model::forward`], handing the input of every layer's weight matrices to `obs` as it is
    /// computed (the output head's input is not observed, as llama.cpp's imatrix tool skips it).
    fn forward_observed(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        out: &mut Logits,
        obs: &mut Observer,
    ) -> Result<()> {
        let _ = (batch, kv, out, obs);
        Err(dino_core::Error::Unsupported(format!(
            "{}: this architecture cannot report its activations (calibration)",
            self.info().arch
        )))
    }
    /// Touch every weight page so the first request does not pay for page faults.
    fn warm_up(&self) {}
    /// With activation sparsity ([`LoadOptions::sparsity`]): the share of the sparsified
    /// matrices' weights whose inputs were zero, over every forward pass so far.
    fn measured_sparsity(&self) -> Option<f64> {
        None
    }
    /// With column layouts: the share of one-token sparsified products that ran by columns
    /// (the others had too few zero inputs to pay and ran the dense kernels).
    fn column_share(&self) -> Option<f64> {
        None
    }
    /// Sets the activation-sparsity thresholds from the next forward pass on (`None`: dense).
    /// Without column layouts (a model loaded without [`LoadOptions::sparsity`]) the dense
    /// kernels run on the zeroed inputs: the same function, for calibration, not for speed.
    fn set_sparsity(&self, s: Option<&Sparsity>) -> Result<()> {
        let _ = s;
        Err(dino_core::Error::Unsupported(format!(
            "{}: this architecture has no activation sparsity",
            self.info().arch
        )))
    }
}
