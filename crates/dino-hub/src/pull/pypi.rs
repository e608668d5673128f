//! Fetching a pinned package file from a Python package index, in pure Rust: the PEP 691 JSON
//! simple API (with the PEP 503 HTML page as a fallback for mirrors that only serve HTML), the
//! listed sha256 verified. And `pip download` as the last resort.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::archive::{self, ArchiveKind};
use super::net;
use super::ui::{Ui, human};

pub(crate) const DEFAULT_INDEX: &str = "https://pypi.org/simple";

const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
                      application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// One file the index lists for a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub filename: String,
    pub url: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub yanked: bool,
}

/// PEP 503 name normalization: lower case, runs of `-`, `_`, `.` become one `-`.
pub(crate) fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// All files the index at `index` (e.g. `https://pypi.org/simple`) lists for `project`.
pub(crate) fn list_files(
    agent: &ureq::Agent,
    index: &str,
    project: &str,
) -> Result<Vec<IndexFile>> {
    let url = format!("{}/{}/", index.trim_end_matches('/'), normalize(project));
    let resp = net::get(agent, &url, Some(ACCEPT))?;
    let base = resp.get_url().to_string();
    let content_type = resp.content_type().to_string();
    let body = resp
        .into_string()
        .with_context(|| format!("reading {url}"))?;
    if content_type.contains("json") {
        parse_json(&body, &base).with_context(|| format!("parsing the JSON index page {url}"))
    } else {
        Ok(parse_html(&body, &base))
    }
}

fn join_url(base: &str, href: &str) -> Result<String> {
    let base = url::Url::parse(base).with_context(|| format!("bad URL {base}"))?;
    Ok(base
        .join(href)
        .with_context(|| format!("bad link {href}"))?
        .to_string())
}

pub(crate) fn parse_json(body: &str, base: &str) -> Result<Vec<IndexFile>> {
    let v: Value = serde_json::from_str(body)?;
    let files = v
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no \"files\" array"))?;
    files
        .iter()
        .map(|f| {
            let filename = f
                .get("filename")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("a file without \"filename\""))?;
            let href = f
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{filename}: no \"url\""))?;
            let yanked = match f.get("yanked") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(_)) => true,
                _ => false,
            };
            Ok(IndexFile {
                filename: filename.to_string(),
                url: join_url(base, href)?,
                sha256: f
                    .get("hashes")
                    .and_then(|h| h.get("sha256"))
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase),
                size: f.get("size").and_then(Value::as_u64),
                yanked,
            })
        })
        .collect()
}

fn unescape_html(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

fn html_attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(name) {
        let start = from + pos;
        from = start + name.len();
        let before_ok = start > 0 && lower.as_bytes()[start - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_at = tag.len() - rest.len() + 1;
        let value = tag[value_at..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap_or(""),
        });
    }
    None
}

/// The anchors of a PEP 503 project page. Links that do not resolve are skipped.
pub(crate) fn parse_html(body: &str, base: &str) -> Vec<IndexFile> {
    let lower = body.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = lower[at..].find("<a") {
        let start = at + pos;
        let Some(tag_end) = lower[start..].find('>').map(|e| start + e) else {
            break;
        };
        let close = lower[tag_end..]
            .find("</a")
            .map_or(lower.len(), |e| tag_end + e);
        at = close;
        let tag = &body[start + 2..tag_end];
        if !tag.starts_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let Some(href) = html_attr(tag, "href") else {
            continue;
        };
        let href = unescape_html(href);
        let (link, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let sha256 = fragment
            .strip_prefix("sha256=")
            .map(str::to_ascii_lowercase);
        let Ok(url) = join_url(base, link) else {
            continue;
        };
        let text = unescape_html(body[tag_end + 1..close].trim());
        let filename = if text.is_empty() {
            link.rsplit('/').next().unwrap_or("").to_string()
        } else {
            text
        };
        out.push(IndexFile {
            filename,
            url,
            sha256,
            size: None,
            yanked: html_attr(tag, "data-yanked").is_some(),
        });
    }
    out
}

/// The version in `filename` if it is a wheel or sdist of `project`.
pub(crate) fn file_version<'a>(filename: &'a str, project: &str) -> Option<&'a str> {
    let want = normalize(project);
    if let Some(stem) = filename.strip_suffix(".whl") {
        let mut parts = stem.split('-');
        let (name, version) = (parts.next()?, parts.next()?);
        return (normalize(name) == want).then_some(version);
    }
    let stem = [".tar.gz", ".tgz", ".zip"]
        .iter()
        .find_map(|ext| filename.strip_suffix(ext))?;
    let (name, version) = stem.rsplit_once('-')?;
    (normalize(name) == want).then_some(version)
}

/// The file to fetch for `project==version`: a pure-Python wheel, else a `.tar.gz` sdist, else a
/// `.zip` sdist; a yanked file only when nothing else is listed (pip allows `==` on yanked).
pub(crate) fn pick<'a>(
    files: &'a [IndexFile],
    project: &str,
    version: &str,
) -> Result<&'a IndexFile> {
    let rank = |f: &IndexFile| -> Option<u32> {
        if file_version(&f.filename, project) != Some(version) {
            return None;
        }
        let name = f.filename.to_ascii_lowercase();
        let kind = if name.ends_with("-none-any.whl") {
            0
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            1
        } else if name.ends_with(".zip") {
            2
        } else {
            return None;
        };
        Some(kind + if f.yanked { 10 } else { 0 })
    };
    files
        .iter()
        .filter_map(|f| rank(f).map(|r| (r, f)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, f)| f)
        .ok_or_else(|| {
            let listed: Vec<&str> = files
                .iter()
                .filter(|f| file_version(&f.filename, project).is_some())
                .map(|f| f.filename.as_str())
                .collect();
            anyhow!(
                "{project}=={version}: no wheel or sdist listed (files: {})",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            )
        })
}

/// Download `project==version` from `index` into `dl_dir` and check the index's sha256.
/// Returns the archive's path and kind; on error nothing is left behind.
pub(crate) fn fetch_archive(
    agent: &ureq::Agent,
    index: &str,
    project: &str,
    version: &str,
    dl_dir: &Path,
    ui: &Ui,
) -> Result<(PathBuf, ArchiveKind)> {
    let files = list_files(agent, index, project)?;
    let file = pick(&files, project, version)?;
    let kind = archive::kind_of(&file.filename)
        .ok_or_else(|| anyhow!("{}: not an archive we can read", file.filename))?;
    if file.filename.contains(['/', '\\']) || file.filename.starts_with('.') {
        bail!("refusing index file name {:?}", file.filename);
    }
    let dest = dl_dir.join(&file.filename);
    let got = net::download_to(agent, &file.url, &dest, &file.filename, file.size, ui);
    let checked = got.and_then(|got| {
        match &file.sha256 {
            Some(want) if *want != got.sha256 => bail!(
                "{}: sha256 {} but the index lists {want}",
                file.filename,
                got.sha256
            ),
            Some(_) => {}
            None => ui.step(&format!(
                "{}: the index lists no sha256; relying on the final file's",
                file.filename
            )),
        }
        ui.step(&format!("{} ({}) verified", file.filename, human(got.size)));
        Ok(())
    });
    if let Err(e) = checked {
        let _ = fs::remove_file(&dest);
        return Err(e);
    }
    Ok((dest, kind))
}

/// `python3 -m pip download --no-deps project==version` into a fresh folder under `dl_dir`
/// (pip may be configured with mirrors the HTTP route does not know). Returns the archive.
pub(crate) fn pip_download(
    project: &str,
    version: &str,
    index: Option<&str>,
    dl_dir: &Path,
    ui: &Ui,
) -> Result<(PathBuf, ArchiveKind)> {
    let dir = dl_dir.join(format!("pip-{}", normalize(project)));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = format!("{project}=={version}");
    ui.step(&format!("pip download {spec}"));
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ])
    .arg("-d")
    .arg(&dir)
    .arg(&spec);
    if let Some(index) = index {
        cmd.args(["--index-url", index]);
    }
    cmd.arg("-q");
    let out = cmd
        .output()
        .with_context(|| "running python3 -m pip (is python3 with pip installed?)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "pip download {spec} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let (Some(kind), Some(v)) = (archive::kind_of(&name), file_version(&name, project))
            && v == version
        {
            found.push((path.clone(), kind));
        }
    }
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        anyhow!(
            "pip download {spec} produced no archive in {}",
            dir.display()
        )
    })
}
