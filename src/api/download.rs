//! Model files out of `modeld.v1.ModelRegistry`: a signed URL for the HTTP download route
//! (`CreateDownloadUrl`), or the file itself streamed in chunks with its sha256 last
//! (`DownloadModel`).

use std::pin::Pin;

use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio_stream::Stream;
use tonic::Status;

use super::convert;
use super::pb;
use crate::error::{Error, FileProblem, Result};
use crate::ops::Services;
use crate::signing::DownloadConfig;

/// The chunks of one download: a header, the file's bytes, then the sha256 of what was sent.
pub type Chunks = Pin<Box<dyn Stream<Item = std::result::Result<pb::DownloadChunk, Status>> + Send>>;

/// Bytes read from the file at a time.
const CHUNK_BYTES: usize = 256 << 10;

/// A URL that downloads `model`'s file, signed with `downloads`' key, valid for
/// `expires_in_secs` (0: the configured default).
///
/// # Errors
/// `FailedPrecondition` when this server has no HTTP address to download from; the catalogue's
/// and the signer's errors.
pub async fn signed_url(
    services: &Services,
    downloads: &DownloadConfig,
    model: Option<pb::ModelRef>,
    expires_in_secs: u32,
) -> Result<pb::DownloadUrl> {
    let record = services.catalogue.get(&convert::model_ref(model)?).await?;
    let base = downloads.default_base.clone();
    if downloads.public_url.is_empty() && base.is_empty() {
        return Err(Error::FailedPrecondition(
            "this server has no HTTP port to download from (--http-listen) and no --public-url".into(),
        ));
    }
    let expires_in = (expires_in_secs > 0).then_some(u64::from(expires_in_secs));
    let u = crate::signing::signed_url(downloads, &base, &record, expires_in, chrono::Utc::now())?;
    Ok(pb::DownloadUrl {
        url: u.url,
        expires_at: Some(prost_types::Timestamp {
            seconds: u.expires_at.timestamp(),
            nanos: 0,
        }),
        sha256: u.sha256,
        size_bytes: u.size_bytes,
    })
}

/// `model`'s file as a stream of chunks, read by a task of its own as the client takes them.
///
/// # Errors
/// The catalogue's errors; `model_file` (unreadable) when the file cannot be opened. A read
/// that fails midway ends the stream with that error.
pub async fn chunks(services: &Services, model: Option<pb::ModelRef>) -> Result<Chunks> {
    let record = services.catalogue.get(&convert::model_ref(model)?).await?;
    let path = services.catalogue.record_file(&record).await?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        Error::model_file(
            FileProblem::Unreadable,
            format!("model file {:?} cannot be read: {e}", record.file_path),
        )
    })?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let header = pb::DownloadChunk {
        part: Some(pb::download_chunk::Part::Header(pb::DownloadHeader {
            model: Some(convert::model(&record)),
            file_name: std::path::Path::new(&record.file_path)
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            sha256: record.checksum_sha256.clone(),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<pb::DownloadChunk, Status>>(4);
    let name = record.file_path.clone();
    tokio::spawn(async move {
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        let mut hash = sha2::Sha256::new();
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    hash.update(&buf);
                    let chunk = pb::DownloadChunk {
                        part: Some(pb::download_chunk::Part::Data(buf)),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let e = Error::model_file(
                        FileProblem::Unreadable,
                        format!("model file {name:?} could not be read to the end: {e}"),
                    );
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
        let last = pb::DownloadChunk {
            part: Some(pb::download_chunk::Part::Sha256(hex::encode(hash.finalize()))),
        };
        let _ = tx.send(Ok(last)).await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
