//! Reading members out of Python package archives: wheels (zip) and sdists (`.tar.gz`).

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ArchiveKind {
    Zip,
    TarGz,
}

/// The archive kind a package file name implies (`.whl`, `.zip`, `.egg` are zips).
pub(crate) fn kind_of(filename: &str) -> Option<ArchiveKind> {
    let f = filename.to_ascii_lowercase();
    if f.ends_with(".whl") || f.ends_with(".zip") || f.ends_with(".egg") {
        Some(ArchiveKind::Zip)
    } else if f.ends_with(".tar.gz") || f.ends_with(".tgz") {
        Some(ArchiveKind::TarGz)
    } else {
        None
    }
}

/// Shell-style glob over `/`-separated paths: `*` matches any run of characters other than `/`,
/// `?` one such character; everything else is literal.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = path.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // Where to resume after the most recent `*`: (pattern index after it, path index it now eats to).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, si));
            pi += 1;
        } else if pi < p.len() && (p[pi] == s[si] || (p[pi] == '?' && s[si] != '/')) {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star
            && s[ss] != '/'
        {
            star = Some((sp, ss + 1));
            pi = sp;
            si = ss + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn normalize_member(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n
}

/// Call `f(member_path, reader)` for each regular-file member matching `pattern`, in sorted path
/// order. Tar members are spooled to files in `spool_dir` first (a tar can only be read in its own
/// order). Returns how many members matched.
pub(crate) fn for_each_member(
    archive: &Path,
    kind: ArchiveKind,
    pattern: &str,
    spool_dir: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<usize> {
    let open = || File::open(archive).with_context(|| format!("opening {}", archive.display()));
    match kind {
        ArchiveKind::Zip => {
            let mut zip = zip::ZipArchive::new(BufReader::new(open()?))
                .with_context(|| format!("reading zip {}", archive.display()))?;
            let mut names = Vec::new();
            for name in zip.file_names() {
                let name = name.with_context(|| format!("reading zip {}", archive.display()))?;
                if !name.ends_with('/') && glob_match(pattern, normalize_member(&name)) {
                    names.push(name.into_owned());
                }
            }
            names.sort_by(|a, b| normalize_member(a).cmp(normalize_member(b)));
            for name in &names {
                let mut member = zip
                    .by_name(name)
                    .with_context(|| format!("{}: member {name}", archive.display()))?;
                f(normalize_member(name), &mut member)
                    .with_context(|| format!("{}: member {name}", archive.display()))?;
            }
            Ok(names.len())
        }
        ArchiveKind::TarGz => {
            let gz = flate2::read::GzDecoder::new(BufReader::new(open()?));
            let mut tar = tar::Archive::new(gz);
            let mut spooled: Vec<(String, std::path::PathBuf)> = Vec::new();
            let entries = tar
                .entries()
                .with_context(|| format!("reading tar {}", archive.display()))?;
            for (i, entry) in entries.enumerate() {
                let mut entry =
                    entry.with_context(|| format!("reading tar {}", archive.display()))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = entry.path()?.to_string_lossy().into_owned();
                let name = normalize_member(&name).to_string();
                if !glob_match(pattern, &name) {
                    continue;
                }
                fs::create_dir_all(spool_dir)?;
                let spool = spool_dir.join(format!("member{i}"));
                let mut out = File::create(&spool)
                    .with_context(|| format!("creating {}", spool.display()))?;
                std::io::copy(&mut entry, &mut out)
                    .with_context(|| format!("{}: member {name}", archive.display()))?;
                spooled.push((name, spool));
            }
            spooled.sort();
            let n = spooled.len();
            let mut result = Ok(());
            for (name, spool) in &spooled {
                if result.is_ok() {
                    result = File::open(spool)
                        .map_err(anyhow::Error::from)
                        .and_then(|mut r| f(name, &mut r))
                        .with_context(|| format!("{}: member {name}", archive.display()));
                }
                let _ = fs::remove_file(spool);
            }
            result.map(|()| n)
        }
    }
}

/// The base name of a member, refusing anything that could escape a folder.
pub(crate) fn safe_base_name(member: &str) -> Result<&str> {
    let base = member.rsplit('/').next().unwrap_or(member);
    if base.is_empty() || base == "." || base == ".." || base.contains('\\') {
        bail!("unsafe archive member name {member:?}");
    }
    Ok(base)
}
