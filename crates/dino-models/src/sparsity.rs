//! Activation sparsity (training-free, magnitude-thresholded, as TEAL): an input of a weight
//! matrix whose magnitude is below that matrix's threshold is taken as zero, so the matrix's
//! column for it need not be read. The thresholds come from calibration
//! (`dino calibrate --thresholds`), chosen per matrix so that a target share of its inputs falls
//! below them on the calibration text.

use dino_core::{Error, Result};
use std::collections::HashMap;

/// Per-matrix input thresholds for one sparsity level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sparsity {
    /// The target share of zeroed inputs (for reports).
    pub level: f32,
    thresholds: HashMap<String, f32>,
    /// The share of each matrix's inputs its threshold zeroed on the calibration text (a
    /// per-site schedule; a matrix without an entry is at `level`); decides which matrices get
    /// column layouts.
    shares: HashMap<String, f32>,
}

impl Sparsity {
    /// `thresholds`: GGUF tensor name of a matrix → magnitude below which its inputs are zeroed
    /// (finite, `>= 0`; `0` keeps the matrix dense).
    pub fn new(level: f32, thresholds: HashMap<String, f32>) -> Result<Sparsity> {
        if !(0.0..1.0).contains(&level) {
            return Err(Error::invalid(format!(
                "sparsity {level}: use a share of inputs in [0, 1)"
            )));
        }
        if let Some((name, t)) = thresholds.iter().find(|(_, t)| !t.is_finite() || **t < 0.0) {
            return Err(Error::invalid(format!(
                "sparsity threshold of {name} is {t}: thresholds are finite and >= 0"
            )));
        }
        Ok(Sparsity {
            level,
            thresholds,
            shares: HashMap::new(),
        })
    }

    /// Records the calibrated share of zero inputs of each matrix (`name` → share in [0, 1));
    /// matrices not named are at `level`.
    pub fn with_shares(mut self, shares: HashMap<String, f32>) -> Result<Sparsity> {
        if let Some((name, v)) = shares.iter().find(|(_, v)| !(0.0..1.0).contains(*v)) {
            return Err(Error::invalid(format!(
                "sparsity share of {name} is {v}: use a share of inputs in [0, 1)"
            )));
        }
        self.shares = shares;
        Ok(self)
    }

    /// The share of matrix `name`'s inputs its threshold is calibrated to zero.
    pub fn share(&self, name: &str) -> f32 {
        self.shares.get(name).copied().unwrap_or(self.level)
    }

    /// The threshold of the matrix `name`; an error naming it when the table has none (a table
    /// made for another model).
    pub fn threshold(&self, name: &str) -> Result<f32> {
        self.thresholds.get(name).copied().ok_or_else(|| {
            Error::invalid(format!(
                "the sparsity thresholds have no entry for {name}: were they calibrated on \
                 another model?"
            ))
        })
    }
}

/// Zeroes the values of `x` whose magnitude is below `threshold`; returns how many of `x` are
/// zero afterwards.
pub fn sparsify(x: &mut [f32], threshold: f32) -> usize {
    let mut zeros = 0;
    for v in x.iter_mut() {
        if v.abs() < threshold {
            *v = 0.0;
        }
        zeros += usize::from(*v == 0.0);
    }
    zeros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_inputs_are_zeroed_and_counted() {
        let mut x = [0.5f32, -0.1, 0.2, -0.3, 0.0, f32::NAN, -2.0];
        let z = sparsify(&mut x, 0.25);
        assert_eq!(&x[..5], &[0.5, 0.0, 0.0, -0.3, 0.0]);
        assert!(x[5].is_nan(), "NaN is not below the threshold: it stays");
        assert_eq!(x[6], -2.0);
        assert_eq!(z, 3);
        let mut y = [1.0f32, -1.0];
        assert_eq!(sparsify(&mut y, 0.0), 0);
        assert_eq!(y, [1.0, -1.0]);
    }

    #[test]
    fn bad_levels_and_thresholds_are_refused() {
        let t = |v: f32| HashMap::from([("a".to_string(), v)]);
        assert!(Sparsity::new(1.0, t(0.1)).is_err());
        assert!(Sparsity::new(-0.1, t(0.1)).is_err());
        assert!(Sparsity::new(0.4, t(f32::NAN)).is_err());
        assert!(Sparsity::new(0.4, t(-1.0)).is_err());
        let s = Sparsity::new(0.4, t(0.1)).unwrap();
        assert_eq!(s.threshold("a").unwrap(), 0.1);
        let e = s.threshold("blk.0.attn_q.weight").unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_q.weight"), "{e}");
        assert_eq!(s.share("a"), 0.4);
        let s = s
            .with_shares(HashMap::from([("a".to_string(), 0.7)]))
            .unwrap();
        assert_eq!((s.share("a"), s.share("b")), (0.7, 0.4));
        assert!(s
            .clone()
            .with_shares(HashMap::from([("a".into(), 1.0)]))
            .is_err());
        assert!(s
            .with_shares(HashMap::from([("a".into(), f32::NAN)]))
            .is_err());
    }
}
