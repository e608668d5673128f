//! The Hugging Face Hub route, through the `hf-hub` crate (sync API, ureq + rustls).
//!
//! hf-hub keeps its own cache layout (blobs + snapshot symlinks); we point it at a scratch folder
//! inside `downloads/`, then move the blob to our `*.part` file, which the caller verifies.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use indicatif::ProgressBar;

use super::catalog::HubFile;
use super::net;
use super::ui::Ui;

pub(crate) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `override` else `$HF_ENDPOINT` else the public hub; no trailing slash.
pub(crate) fn endpoint(override_: Option<&str>) -> String {
    let e = override_
        .map(str::to_string)
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    e.trim_end_matches('/').to_string()
}

/// True when `HF_HUB_OFFLINE` asks not to touch the hub.
pub(crate) fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

struct HubProgress {
    ui: Ui,
    label: String,
    bar: Option<ProgressBar>,
}

impl Progress for HubProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(size as u64);
                bar.set_position(0);
            }
            None => self.bar = Some(self.ui.bar(Some(size as u64), &self.label)),
        }
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Download `file` from the hub at `endpoint` into `part` (created; not yet verified).
/// `work_dir` is scratch space the caller removes.
pub(crate) fn fetch(
    file: &HubFile,
    endpoint: &str,
    work_dir: &Path,
    part: &Path,
    ui: &Ui,
) -> Result<()> {
    let api = ApiBuilder::new()
        .with_endpoint(endpoint.to_string())
        .with_cache_dir(work_dir.join("hf"))
        .with_progress(false)
        .build()
        .context("setting up the hub client")?;
    let repo = api.repo(Repo::with_revision(
        file.repo.to_string(),
        RepoType::Model,
        file.revision.to_string(),
    ));
    let url = repo.url(file.file);
    // hf-hub's own connect timeout is long; a quick probe lets an unreachable hub fall through fast.
    net::reachable(&url).map_err(|e| anyhow!("not reachable at {endpoint}: {e}"))?;
    ui.step(&format!("fetching {url}"));
    let progress = HubProgress {
        ui: *ui,
        label: file.file.to_string(),
        bar: None,
    };
    let pointer = repo
        .download_with_progress(file.file, progress)
        .map_err(|e| anyhow!("hub download {url}: {e}"))?;
    let blob =
        fs::canonicalize(&pointer).with_context(|| format!("resolving {}", pointer.display()))?;
    fs::rename(&blob, part)
        .with_context(|| format!("moving {} to {}", blob.display(), part.display()))?;
    Ok(())
}
