//! Embeds the git commit (`DINO_BUILD_COMMIT`, short hash, "unknown" outside a checkout) and the
//! commit count (`DINO_BUILD_NUMBER`, 0 when unknown) for `dino bench`'s `build_commit` and
//! `build_number`, as llama.cpp embeds its own.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let number = git(&["rev-list", "--count", "HEAD"]).unwrap_or_else(|| "0".into());
    println!("cargo:rustc-env=DINO_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=DINO_BUILD_NUMBER={number}");
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, and packed refs.
    let abs = |p: String| -> String {
        if Path::new(&p).is_absolute() {
            p
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(p)
                .display()
                .to_string()
        }
    };
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]).map(abs) {
        watch.push(format!("{dir}/HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]).map(abs) {
        watch.push(format!("{common}/packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{common}/{branch}"));
        }
    }
    for p in watch {
        // A path that does not exist would make cargo rerun this script on every build.
        if Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
