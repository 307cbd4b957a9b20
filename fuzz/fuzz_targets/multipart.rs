//! `multipart`: the multipart index (`capture::multipart::index`) over arbitrary body bytes,
//! twice: with a fixed boundary (`XyZ`) over the whole input, and, when the input starts with a
//! `Content-Type` line, with the boundary `capture::multipart::boundary` finds in it, over the
//! rest (capture's own path: content type → boundary → index).
//!
//! Never panics, and holds the index's bounds: at most `max_parts` parts, no text field over
//! `max_field_bytes`, a preview of at most 256 bytes, secrets masked. Every part's content is a
//! piece of the body (found by size and blake3 just before a delimiter), the pieces in body
//! order and not overlapping. Memory stays bounded by `-rss_limit_mb` (scripts/fuzz.sh).
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use copyist::blobs::{BlobHash, BlobStore};
use copyist::capture::multipart::{boundary, index, is_secret, MASK};
use copyist::capture::spool::{Stored, StoredBody};
use copyist::config::MultipartLimits;
use copyist::log::MultipartIndex;
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them.
const LIMITS: MultipartLimits = MultipartLimits {
    max_parts: 8,
    max_field_bytes: 64,
};
/// Longest text-field preview (`PREVIEW_BYTES` in multipart.rs).
const PREVIEW_BYTES: usize = 256;

struct Env {
    runtime: tokio::runtime::Runtime,
    blobs: BlobStore,
    mask: Vec<String>,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        Env {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            // Inline bodies never touch it; `index` takes one for bodies stored as blobs.
            blobs: BlobStore::open(dir.path()).expect("blob store"),
            mask: vec!["pass".to_owned(), "Token".to_owned()],
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    run(data, "XyZ");
    // "Content-Type line\n body": the boundary as capture finds it.
    if let Some(nl) = data.iter().take(200).position(|&b| b == b'\n') {
        if let Ok(content_type) = std::str::from_utf8(&data[..nl]) {
            if let Some(b) = boundary(content_type) {
                run(&data[nl + 1..], &b);
            }
        }
    }
});

fn run(body: &[u8], boundary: &str) {
    let env = env();
    let stored = StoredBody {
        stored: Stored::Inline(Bytes::copy_from_slice(body)),
        len: body.len() as u64,
        hash: BlobHash::from(blake3::hash(body)),
    };
    let idx = env.runtime.block_on(index(
        &stored,
        boundary.to_owned(),
        &env.blobs,
        &LIMITS,
        &env.mask,
    ));
    check(body, boundary, &idx, &env.mask);
}

fn check(body: &[u8], boundary: &str, idx: &MultipartIndex, mask: &[String]) {
    assert!(
        idx.parts.len() <= LIMITS.max_parts,
        "{} parts",
        idx.parts.len()
    );
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    // Where the previous part's content ended; the next one starts after it.
    let mut from = 0usize;
    for (i, part) in idx.parts.iter().enumerate() {
        let size = usize::try_from(part.size).expect("part size fits in memory");
        assert!(
            size <= body.len(),
            "part {i}: {size} bytes of a {} body",
            body.len()
        );
        match &part.value {
            None => assert!(
                part.filename.is_some(),
                "part {i}: a text field without a value"
            ),
            Some(value) => {
                assert!(part.filename.is_none(), "part {i}: a file with a value");
                assert!(
                    part.size <= LIMITS.max_field_bytes,
                    "part {i}: {size} bytes"
                );
                if part.name.as_deref().is_some_and(|n| is_secret(n, mask)) {
                    assert_eq!(value, MASK, "part {i}: secret not masked");
                } else {
                    // Lossy UTF-8 turns one bad byte into at most 3 (U+FFFD).
                    assert!(value.len() <= 3 * PREVIEW_BYTES.min(size), "part {i}");
                }
            }
        }
        from = find_content(body, from, size, &part.hash, &delimiter).unwrap_or_else(|| {
            panic!(
                "part {i} ({size} bytes, {:?}) is not a piece of the body after byte {from}",
                part.name
            )
        });
    }
}

/// The end of the first `size` bytes of `body` at or after `from` that hash to `hash` and are
/// followed by the delimiter (a part is indexed only once its content has ended, and multer
/// ends it at a delimiter).
fn find_content(
    body: &[u8],
    from: usize,
    size: usize,
    hash: &BlobHash,
    delimiter: &[u8],
) -> Option<usize> {
    (from + size..body.len())
        .filter(|&end| body[end..].starts_with(delimiter))
        .find(|&end| BlobHash::from(blake3::hash(&body[end - size..end])) == *hash)
}
