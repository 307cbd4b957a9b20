//! The multipart index: field names, file names, content types, sizes and per-part blake3 of a
//! `multipart/form-data` body, for `copyist log show`.
//!
//! The index is for people, never for replay: the raw body bytes are the truth, because multer
//! and PHP do not parse every multipart body alike. Parsing runs under explicit limits (whole
//! stream = the body's length, a part count, a text-field size), and a failure only records a
//! reason in the index; it never blocks the request.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use multer::{Constraints, Multipart, SizeLimit};

use crate::blobs::{BlobHash, BlobStore};
use crate::capture::spool::{Stored, StoredBody};
use crate::config::MultipartLimits;
use crate::log::{MultipartIndex, PartInfo};

/// Longest text-field value kept as a preview.
const PREVIEW_BYTES: usize = 256;

/// What a masked value looks like.
pub const MASK: &str = "********";

/// The boundary of a `multipart/form-data` content type, or `None` for any other body.
pub fn boundary(content_type: &str) -> Option<String> {
    let mime = content_type.split(';').next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    multer::parse_boundary(content_type).ok()
}

/// Whether a field name looks like it holds a secret (case-insensitive substring match).
pub fn is_secret(name: &str, mask_fields: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    mask_fields
        .iter()
        .any(|m| name.contains(&m.to_ascii_lowercase()))
}

/// Indexes a stored multipart body. Never fails: problems are recorded in `error`.
pub async fn index(
    body: &StoredBody,
    boundary: String,
    blobs: &BlobStore,
    limits: &MultipartLimits,
    mask_fields: &[String],
) -> MultipartIndex {
    let mut index = MultipartIndex {
        parts: Vec::new(),
        error: None,
    };
    let source = match open(body, blobs) {
        Ok(s) => s,
        Err(e) => {
            index.error = Some(format!("cannot read stored body: {e}"));
            return index;
        }
    };
    let constraints =
        Constraints::new().size_limit(SizeLimit::new().whole_stream(body.len.saturating_add(1)));
    let mut multipart = Multipart::with_constraints(source, boundary, constraints);
    if let Err(e) = walk(&mut multipart, &mut index, limits, mask_fields).await {
        index.error = Some(e);
    }
    index
}

async fn walk(
    multipart: &mut Multipart<'_>,
    index: &mut MultipartIndex,
    limits: &MultipartLimits,
    mask_fields: &[String],
) -> Result<(), String> {
    while let Some(mut field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        if index.parts.len() >= limits.max_parts {
            return Err(format!(
                "more than {} parts; index stopped",
                limits.max_parts
            ));
        }
        let name = field.name().map(str::to_string);
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|m| m.to_string());
        let mut hasher = blake3::Hasher::new();
        let mut size: u64 = 0;
        let mut preview = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| e.to_string())? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            if filename.is_none() {
                if size > limits.max_field_bytes {
                    return Err(format!(
                        "text field {:?} larger than {} bytes; index stopped",
                        name.as_deref().unwrap_or(""),
                        limits.max_field_bytes
                    ));
                }
                let room = PREVIEW_BYTES.saturating_sub(preview.len());
                preview.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        let value = filename.is_none().then(|| {
            if name.as_deref().is_some_and(|n| is_secret(n, mask_fields)) {
                MASK.to_string()
            } else {
                String::from_utf8_lossy(&preview).into_owned()
            }
        });
        index.parts.push(PartInfo {
            name,
            filename,
            content_type,
            size,
            hash: BlobHash::from(hasher.finalize()),
            value,
        });
    }
    Ok(())
}

/// The stored body as a stream of chunks.
fn open(
    body: &StoredBody,
    blobs: &BlobStore,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, crate::blobs::BlobError> {
    Ok(match &body.stored {
        Stored::Inline(bytes) => stream::once(std::future::ready(Ok(bytes.clone()))).boxed(),
        Stored::Blob(hash) => blobs.open_unverified(hash)?.into_stream(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MultipartLimits {
        MultipartLimits {
            max_parts: 3,
            max_field_bytes: 1024,
        }
    }

    fn inline(body: &[u8]) -> StoredBody {
        StoredBody {
            stored: Stored::Inline(Bytes::copy_from_slice(body)),
            len: body.len() as u64,
            hash: BlobHash::from(blake3::hash(body)),
        }
    }

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nhunter2\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../../etc/passwd\"\r\nContent-Type: text/plain\r\n\r\nroot:x\r\n\
--XyZ--\r\n";

    #[tokio::test]
    async fn indexes_fields_and_files_and_masks_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mask = vec!["pass".to_string()];
        let idx = index(&inline(FORM), "XyZ".into(), &blobs, &limits(), &mask).await;
        assert_eq!(idx.error, None);
        assert_eq!(idx.parts.len(), 3);
        assert_eq!(idx.parts[0].value.as_deref(), Some("Hello"));
        assert_eq!(idx.parts[1].value.as_deref(), Some(MASK));
        let file = &idx.parts[2];
        assert_eq!(file.filename.as_deref(), Some("../../etc/passwd"));
        assert_eq!(file.size, 6);
        assert_eq!(file.hash, BlobHash::from(blake3::hash(b"root:x")));
        assert_eq!(file.value, None);
    }

    #[tokio::test]
    async fn broken_body_records_an_error_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let body =
            inline(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated");
        let idx = index(&body, "XyZ".into(), &blobs, &limits(), &[]).await;
        assert!(idx.error.is_some());
    }

    #[tokio::test]
    async fn part_count_is_limited() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut body = Vec::new();
        for i in 0..10 {
            body.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        let idx = index(&inline(&body), "XyZ".into(), &blobs, &limits(), &[]).await;
        assert_eq!(idx.parts.len(), 3);
        assert!(idx.error.unwrap().contains("more than 3 parts"));
    }

    #[test]
    fn boundary_only_for_form_data() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; boundary=\"q b\"").as_deref(),
            Some("q b")
        );
        assert_eq!(boundary("multipart/mixed; boundary=abc"), None);
        assert_eq!(boundary("application/x-www-form-urlencoded"), None);
    }
}
