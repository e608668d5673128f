//! HTTP with ureq (rustls): one agent for index pages and downloads, one short-fused agent to
//! probe whether an endpoint is reachable at all.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::store::HashingWriter;
use super::ui::Ui;

const USER_AGENT: &str = concat!("dino/", env!("CARGO_PKG_VERSION"));

/// The agent for real transfers: patient once connected, still bounded when a peer goes silent.
pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(120))
        .try_proxy_from_env(true)
        .user_agent(USER_AGENT)
        .build()
}

/// True if `url` answers HTTP at all (any status) within a few seconds. Used so an unreachable
/// hub falls through to the next source quickly.
pub(crate) fn reachable(url: &str) -> Result<(), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .try_proxy_from_env(true)
        .user_agent(USER_AGENT)
        .build();
    match agent.get(url).set("Range", "bytes=0-0").call() {
        Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
        Err(ureq::Error::Transport(t)) => Err(match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        }),
    }
}

/// GET `url`; a non-2xx status or transport failure becomes an error naming the URL.
pub(crate) fn get(agent: &ureq::Agent, url: &str, accept: Option<&str>) -> Result<ureq::Response> {
    let mut req = agent.get(url);
    if let Some(a) = accept {
        req = req.set("Accept", a);
    }
    req.call().map_err(|e| match e {
        ureq::Error::Status(code, resp) => {
            anyhow!("GET {url}: HTTP {code} {}", resp.status_text())
        }
        ureq::Error::Transport(t) => anyhow!("GET {url}: {t}"),
    })
}

/// What a download produced.
#[derive(Debug, Clone)]
pub(crate) struct Downloaded {
    pub sha256: String,
    pub size: u64,
}

/// Stream `url` into `dest` (created or truncated), hashing on the way, with a progress bar.
/// Fails on a short body (fewer bytes than `Content-Length` or `expected_size`). The file is
/// flushed and synced; the caller owns removing it on error.
pub(crate) fn download_to(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    label: &str,
    expected_size: Option<u64>,
    ui: &Ui,
) -> Result<Downloaded> {
    let resp = get(agent, url, None)?;
    // A content-encoded body's length is the encoded one; only a plain body can be checked.
    let content_length = if resp.header("Content-Encoding").is_none() {
        resp.header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok())
    } else {
        None
    };
    let total = expected_size.or(content_length);
    let file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let bar = ui.bar(total, label);
    let mut reader = bar.wrap_read(resp.into_reader());
    let copied = io::copy(&mut reader, &mut out);
    bar.finish_and_clear();
    copied.with_context(|| {
        format!(
            "downloading {url}: connection failed after {} bytes",
            out.written()
        )
    })?;
    let (buf, sha256, size) = out.finish();
    let file = buf
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {}", dest.display(), e.error()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", dest.display()))?;
    for (what, want) in [
        ("Content-Length", content_length),
        ("the index", expected_size),
    ] {
        if let Some(want) = want
            && want != size
        {
            bail!("downloading {url}: got {size} bytes but {what} says {want} (truncated?)");
        }
    }
    Ok(Downloaded { sha256, size })
}

/// Flush helper for writers that wrap a `File` and must reach the disk.
pub(crate) fn finish_file(mut w: BufWriter<File>, path: &Path) -> Result<()> {
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    let f = w
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}
