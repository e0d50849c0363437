//! `modeld download-url` and `modeld download`: signed links to a model's file, and the file.

use super::client::connect;
use super::exit::ServerSaid;
use super::pb_model_ref;
use crate::api::pb;
use anyhow::Context;
use serde_json::json;

pub(super) async fn download_url(a: super::args::DownloadUrlArgs) -> anyhow::Result<()> {
    let channel = connect(&a.client).await?;
    let u = pb::model_registry_client::ModelRegistryClient::new(channel)
        .create_download_url(pb::CreateDownloadUrlRequest {
            model: Some(pb_model_ref(&a.model)?),
            expires_in_secs: a.expires_in.unwrap_or(0),
        })
        .await
        .map_err(ServerSaid)?
        .into_inner();
    if a.json {
        let expires_at = u
            .expires_at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| t.to_rfc3339());
        println!(
            "{}",
            json!({"url": u.url, "expires_at": expires_at, "sha256": u.sha256, "size_bytes": u.size_bytes})
        );
    } else {
        println!("{}", u.url);
    }
    Ok(())
}

pub(super) async fn download(a: super::args::DownloadArgs) -> anyhow::Result<()> {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let channel = connect(&a.client).await?;
    let mut stream = pb::model_registry_client::ModelRegistryClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .download_model(pb::DownloadModelRequest {
            model: Some(pb_model_ref(&a.model)?),
        })
        .await
        .map_err(ServerSaid)?
        .into_inner();
    let first = stream.message().await.map_err(ServerSaid)?;
    let Some(pb::DownloadChunk {
        part: Some(pb::download_chunk::Part::Header(header)),
    }) = first
    else {
        anyhow::bail!("the server did not start the download with its header");
    };
    let output = a
        .output
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(&header.file_name));
    let partial = {
        let mut name = output
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default();
        name.push(".part");
        output.with_file_name(name)
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(u64::try_from(header.size_bytes).unwrap_or(0))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(header.file_name.clone());
    let mut hash = sha2::Sha256::new();
    let mut sent_sha = None;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = stream.message().await.map_err(ServerSaid)? {
            match chunk.part {
                Some(pb::download_chunk::Part::Data(bytes)) => {
                    hash.update(&bytes);
                    file.write_all(&bytes).await?;
                    bar.inc(bytes.len() as u64);
                }
                Some(pb::download_chunk::Part::Sha256(s)) => sent_sha = Some(s),
                _ => {}
            }
        }
        file.flush().await?;
        let got = hex::encode(hash.finalize());
        if sent_sha.as_deref() != Some(got.as_str()) {
            anyhow::bail!("the download was cut short or corrupted on the way (sha256 {got}); try again");
        }
        if got != header.sha256 {
            anyhow::bail!(
                "the file's sha256 is {got}, the registry says {}: the server's file is not the registered one",
                header.sha256
            );
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, &output)
        .await
        .with_context(|| format!("cannot move the download to {}", output.display()))?;
    println!(
        "{} ({} bytes, sha256 {} checked)",
        output.display(),
        header.size_bytes,
        header.sha256
    );
    Ok(())
}
