//! GGUF reader/writer: round trips of every value type, and a corpus of corrupt files that must
//! each give an error (never a panic, a hang or a huge allocation).

use dino_core::GgmlType;
use dino_formats::gguf::{Array, GgufFile, GgufWriter, Value};

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.set("a.u8", Value::U8(200)).unwrap();
    w.set("a.i8", Value::I8(-100)).unwrap();
    w.set("a.u16", Value::U16(60000)).unwrap();
    w.set("a.i16", Value::I16(-30000)).unwrap();
    w.set("a.u32", Value::U32(4_000_000_000)).unwrap();
    w.set("a.i32", Value::I32(-2_000_000_000)).unwrap();
    w.set("a.f32", Value::F32(1.5)).unwrap();
    w.set("a.bool", Value::Bool(true)).unwrap();
    w.set("a.str", Value::String("héllo ▁world".into()))
        .unwrap();
    w.set("a.u64", Value::U64(u64::MAX)).unwrap();
    w.set("a.i64", Value::I64(i64::MIN)).unwrap();
    w.set("a.f64", Value::F64(-2.25)).unwrap();
    w.set(
        "arr.str",
        Value::Array(Array::String(vec!["a".into(), "".into(), "ccc".into()])),
    )
    .unwrap();
    w.set("arr.f32", Value::Array(Array::F32(vec![0.5, -1.0])))
        .unwrap();
    w.set("arr.i32", Value::Array(Array::I32(vec![1, -2, 3])))
        .unwrap();
    w.set("arr.bool", Value::Array(Array::Bool(vec![true, false])))
        .unwrap();
    w.set("arr.empty", Value::Array(Array::U8(vec![]))).unwrap();
    w.set(
        "arr.nested",
        Value::Array(Array::Array(vec![
            Array::U16(vec![1, 2]),
            Array::String(vec!["x".into()]),
            Array::Array(vec![Array::I64(vec![-7])]),
        ])),
    )
    .unwrap();
    w.add_tensor("t.f32", &[4, 3], GgmlType::F32).unwrap();
    w.add_tensor("t.q4_0", &[64, 2], GgmlType::Q4_0).unwrap();
    w.add_tensor("t.q6_k", &[256], GgmlType::Q6_K).unwrap();
    w
}

fn sample_bytes() -> Vec<u8> {
    let w = sample_writer();
    let mut out = Vec::new();
    w.write(&mut out, |i, spec, o| {
        let n = spec.size()? as usize;
        let bytes: Vec<u8> = (0..n).map(|k| (k * 7 + i) as u8).collect();
        o.write_all(&bytes)
            .map_err(|e| dino_core::Error::io("mem", e))
    })
    .unwrap();
    out
}

#[test]
fn round_trip_every_value_type() {
    let w = sample_writer();
    let bytes = sample_bytes();
    let f = GgufFile::from_bytes("sample.gguf", bytes).unwrap();
    assert_eq!(f.version(), 3);
    for (k, v) in w.metadata().iter() {
        assert_eq!(f.metadata().get(k), Some(v), "key {k}");
    }
    assert_eq!(f.metadata().len(), w.metadata().len());
    let md = f.metadata();
    assert_eq!(md.get_u32("a.u16").unwrap(), 60000);
    assert!(
        md.get_u32("a.i32").is_err(),
        "negative value must not read as u32"
    );
    assert_eq!(md.get_str_array("arr.str").unwrap().len(), 3);
    assert_eq!(md.opt_f32_array("arr.f32").unwrap().unwrap(), &[0.5, -1.0]);
    assert!(md
        .get_str("missing.key")
        .unwrap_err()
        .to_string()
        .contains("missing.key"));
    assert!(md.get_str("a.u8").unwrap_err().to_string().contains("a.u8"));
    assert_eq!(f.tensors().len(), 3);
    for (i, t) in f.tensors().iter().enumerate() {
        assert_eq!(t.offset % f.alignment(), 0);
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.size);
        assert!(data
            .iter()
            .enumerate()
            .all(|(k, &b)| b == (k * 7 + i) as u8));
    }
    let (info, _) = f.tensor("t.q4_0").unwrap();
    assert_eq!(info.dims, vec![64, 2]);
    assert_eq!(info.size, 2 * 36);
    assert!(f.tensor("nope").is_err());
}

#[test]
fn writer_checks_callback_size_and_alignment() {
    let mut w = GgufWriter::new();
    w.add_tensor("x", &[8], GgmlType::F32).unwrap();
    let err = w
        .write(Vec::new(), |_, _, o| {
            o.write_all(&[0u8; 4])
                .map_err(|e| dino_core::Error::io("m", e))
        })
        .unwrap_err();
    assert!(err.to_string().contains("'x'"), "{err}");
    assert!(
        w.add_tensor("x", &[8], GgmlType::F32).is_err(),
        "duplicate name"
    );
    assert!(
        w.add_tensor("y", &[33], GgmlType::Q8_0).is_err(),
        "partial block"
    );
    assert!(w.set("general.alignment", Value::U32(3)).is_err());
    w.set("general.alignment", Value::U32(64)).unwrap();
    let mut out = Vec::new();
    w.write(&mut out, |_, _, o| {
        o.write_all(&[1u8; 32])
            .map_err(|e| dino_core::Error::io("m", e))
    })
    .unwrap();
    let f = GgufFile::from_bytes("a.gguf", out).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
}

#[test]
fn write_to_path_leaves_no_partial_file() {
    let dir = std::env::temp_dir().join(format!("dino-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("x", &[8], GgmlType::F32).unwrap();
    let err = w.write_to_path(&path, |_, _, _| Err(dino_core::Error::invalid("boom")));
    assert!(err.is_err());
    assert!(!path.exists());
    assert!(!dir.join("m.gguf.part").exists());
    w.write_to_path(&path, |_, _, o| {
        o.write_all(&[0u8; 32])
            .map_err(|e| dino_core::Error::io("m", e))
    })
    .unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn expect_err(name: &str, bytes: Vec<u8>) -> String {
    match std::panic::catch_unwind(|| GgufFile::from_bytes(name, bytes)) {
        Ok(Ok(_)) => panic!("{name}: corrupt file was accepted"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("{name}: reader panicked"),
    }
}

#[test]
fn truncated_at_every_offset_is_an_error() {
    let bytes = sample_bytes();
    // Every prefix shorter than the end of the last tensor's data must fail cleanly.
    let f = GgufFile::from_bytes("full", bytes.clone()).unwrap();
    let last = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.size)
        .max()
        .unwrap();
    for cut in 0..last as usize {
        let msg = expect_err(&format!("cut{cut}"), bytes[..cut].to_vec());
        assert!(!msg.is_empty());
    }
}

/// Offsets of header fields in the sample file, found by walking it the way the reader does.
fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn hostile_counts_types_and_offsets_are_errors() {
    let good = sample_bytes();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    let mut b = good.clone();
    b[0] = b'X';
    cases.push(("bad magic", b));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    cases.push(("version 1", b));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&99u32.to_le_bytes());
    cases.push(("version 99", b));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    cases.push(("big endian", b));
    for huge in [u64::MAX, 1 << 40, 1 << 20] {
        let mut b = good.clone();
        patch_u64(&mut b, 8, huge);
        cases.push(("huge tensor count", b));
        let mut b = good.clone();
        patch_u64(&mut b, 16, huge);
        cases.push(("huge kv count", b));
    }
    // First key's string length.
    let mut b = good.clone();
    patch_u64(&mut b, 24, u64::MAX);
    cases.push(("huge key length", b));
    let mut b = good.clone();
    patch_u64(&mut b, 24, 1 << 33);
    cases.push(("key length past end", b));
    // First value's type id: after key "general.architecture" (8 + 20 bytes).
    let ty_at = 24 + 8 + 20;
    let mut b = good.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&13u32.to_le_bytes());
    cases.push(("unknown value type", b));
    // String value length of general.architecture.
    let mut b = good.clone();
    patch_u64(&mut b, ty_at + 4, u64::MAX - 3);
    cases.push(("huge string value", b));
    // Array counts: find "arr.str" then its header.
    let at = find(&good, b"arr.str") + 7 + 4; // after key, value type
    let mut b = good.clone();
    b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    cases.push(("unknown array type", b));
    let mut b = good.clone();
    patch_u64(&mut b, at + 4, u64::MAX);
    cases.push(("huge array count", b));
    let mut b = good.clone();
    patch_u64(&mut b, at + 4, 1 << 28);
    cases.push(("array count past end", b));
    // Invalid UTF-8 in a key.
    let at = find(&good, b"a.str");
    let mut b = good.clone();
    b[at] = 0xff;
    cases.push(("invalid utf8 key", b));
    // Bool byte 2.
    let at = find(&good, b"a.bool") + 6 + 4;
    let mut b = good.clone();
    b[at] = 2;
    cases.push(("bad bool", b));
    // Duplicate key: rename a.i8 to a.u8.
    let at = find(&good, b"a.i8");
    let mut b = good.clone();
    b[at + 2] = b'u';
    cases.push(("duplicate key", b));
    // Tensor infos.
    let t = find(&good, b"t.f32") + 5;
    let mut b = good.clone();
    b[t..t + 4].copy_from_slice(&0u32.to_le_bytes());
    cases.push(("zero dims", b));
    let mut b = good.clone();
    b[t..t + 4].copy_from_slice(&9u32.to_le_bytes());
    cases.push(("too many dims", b));
    let mut b = good.clone();
    patch_u64(&mut b, t + 4, 0);
    cases.push(("zero dimension", b));
    let mut b = good.clone();
    patch_u64(&mut b, t + 4, u64::MAX);
    cases.push(("huge dimension", b));
    let mut b = good.clone();
    patch_u64(&mut b, t + 4, 1 << 31);
    patch_u64(&mut b, t + 12, 1 << 31);
    cases.push(("tensor past end", b));
    let mut b = good.clone();
    b[t + 20..t + 24].copy_from_slice(&4u32.to_le_bytes());
    cases.push(("removed tensor type", b));
    let mut b = good.clone();
    b[t + 20..t + 24].copy_from_slice(&12345u32.to_le_bytes());
    cases.push(("unknown tensor type", b));
    let mut b = good.clone();
    patch_u64(&mut b, t + 24, 3);
    cases.push(("misaligned offset", b));
    let mut b = good.clone();
    patch_u64(&mut b, t + 24, u64::MAX - 31);
    cases.push(("offset overflow", b));
    let mut b = good.clone();
    patch_u64(&mut b, t + 24, 1 << 40);
    cases.push(("offset past end", b));
    let q = find(&good, b"t.q4_0") + 6;
    let mut b = good.clone();
    patch_u64(&mut b, q + 4, 48);
    cases.push(("row not whole blocks", b));
    let mut b = good.clone();
    let at = find(&good, b"t.q6_k");
    b[at..at + 6].copy_from_slice(b"t.f32\0");
    b[at + 5] = b'x';
    cases.push(("utf8 ok but renamed", b));
    cases.push(("empty", Vec::new()));

    let mut errors = 0;
    for (name, bytes) in cases {
        if name == "utf8 ok but renamed" {
            // Renaming to a fresh name is a valid file; it must parse.
            assert!(GgufFile::from_bytes(name, bytes).is_ok());
            continue;
        }
        let msg = expect_err(name, bytes);
        assert!(
            msg.starts_with(name),
            "{name}: error should name the file: {msg}"
        );
        errors += 1;
    }
    assert!(errors >= 30);
}

#[test]
fn random_byte_flips_never_panic() {
    use rand::{Rng, SeedableRng};
    let good = sample_bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        let r = std::panic::catch_unwind(|| GgufFile::from_bytes("flip", b));
        assert!(r.is_ok(), "reader panicked on a flipped file");
    }
}

#[test]
fn deep_nesting_is_rejected() {
    // An array of arrays nested 100 deep.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0u8; 64]);
    let msg = expect_err("deep", b);
    assert!(msg.contains("nested"), "{msg}");
}

#[test]
fn real_file_stories260k_if_present() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/stories260K.gguf");
    if !path.exists() {
        eprintln!(
            "SKIPPED: {} not present (it exists only in ../shared/)",
            path.display()
        );
        return;
    }
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata().architecture().unwrap(), "llama");
    assert_eq!(f.metadata().get_u32("llama.embedding_length").unwrap(), 64);
    assert!(f.tensor("token_embd.weight").is_ok());
}
