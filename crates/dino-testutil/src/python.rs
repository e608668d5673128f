//! A Python interpreter with the official `openai` client, for tests that drive `dino serve` the
//! way real applications do.
//!
//! [`openai_python`] creates a virtual environment in the model cache (`$DINO_HOME`, else
//! `~/.cache/dino`) under `venv/openai-<version>/`, installs the pinned `openai` package from PyPI
//! into it once, and returns its interpreter. Concurrent test processes serialize on a lock file
//! in `.locks/`; the venv is marked complete only after the install succeeded and the package
//! imported, so a crashed install is redone, never half-used.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The `openai` package the tests use, pinned (current on PyPI when it was chosen).
pub const OPENAI_VERSION: &str = "3.54.0";

static SETUP: Mutex<()> = Mutex::new(());

/// Path of a Python interpreter that can `import openai` (version [`OPENAI_VERSION`]). Panics with
/// the reason and the fix if it cannot be had: a test that needs it must not pass without it.
pub fn openai_python() -> PathBuf {
    let _g = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    match setup(&dino_hub::cache_dir()) {
        Ok(p) => p,
        Err(e) => panic!("a Python with openai=={OPENAI_VERSION} could not be set up: {e}"),
    }
}

fn setup(cache: &Path) -> Result<PathBuf, String> {
    let dir = cache.join("venv").join(format!("openai-{OPENAI_VERSION}"));
    let python = venv_python(&dir);
    let done = dir.join(".dino-complete");
    // Complete, and still working (a venv breaks when its base interpreter is removed).
    let ready = || done.exists() && imports_openai(&python);
    if ready() {
        return Ok(python);
    }
    let locks = cache.join(".locks");
    fs::create_dir_all(&locks).map_err(|e| format!("creating {}: {e}", locks.display()))?;
    let lock_path = locks.join(format!("venv-openai-{OPENAI_VERSION}.lock"));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    // Another process may have finished it while we waited.
    if ready() {
        return Ok(python);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    let host = find_python3()?;
    eprintln!(
        "setting up {} (python -m venv, pip install openai=={OPENAI_VERSION})",
        dir.display()
    );
    run(
        Command::new(&host).args(["-m", "venv"]).arg(&dir),
        "creating the venv",
        "the venv module (with ensurepip) is missing: install it, e.g. \
         `apt-get install python3-venv` on Debian/Ubuntu",
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("openai=={OPENAI_VERSION}")),
        "installing openai from PyPI",
        "pip could not install it: is https://pypi.org reachable (or PIP_INDEX_URL set)?",
    )?;
    run(
        Command::new(&python).args(["-c", "import openai"]),
        "importing openai",
        "the package installed but does not import",
    )?;
    fs::write(&done, OPENAI_VERSION).map_err(|e| format!("writing {}: {e}", done.display()))?;
    Ok(python)
}

fn imports_openai(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn venv_python(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        dir.join("Scripts").join("python.exe")
    } else {
        dir.join("bin").join("python")
    }
}

/// `$DINO_PYTHON`, else the first of `python3`, `python` on `PATH` that is Python 3.9 or newer
/// (what the `openai` package requires).
fn find_python3() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DINO_PYTHON") {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => vec!["python3".into(), "python".into()],
    };
    let mut tried = Vec::new();
    for c in &candidates {
        let out = Command::new(c)
            .args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
                let mut it = v.split(' ').map(|s| s.parse::<u32>().unwrap_or(0));
                let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                if (major, minor) >= (3, 9) {
                    return Ok(c.clone());
                }
                tried.push(format!("{} is Python {major}.{minor}", c.display()));
            }
            Ok(o) => tried.push(format!("{} exited with {}", c.display(), o.status)),
            Err(e) => tried.push(format!("{}: {e}", c.display())),
        }
    }
    Err(format!(
        "no Python 3.9+ interpreter found ({}): install python3 and python3-venv, e.g. \
         `apt-get install python3 python3-venv`, or set DINO_PYTHON",
        tried.join("; ")
    ))
}

fn run(cmd: &mut Command, what: &str, hint: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: running {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {cmd:?} exited with {}: {hint}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    ))
}
