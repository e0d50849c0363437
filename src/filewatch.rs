//! Follows a few small files that the server re-reads when they change (the tokens file, TLS
//! certificates and keys): a notify watcher on each file's directory, debounced, and a slow
//! poll beside it for file systems that send no events. Any change in a watched directory
//! counts — a Kubernetes Secret volume swaps a `..data` symlink and never touches the file's
//! own name — so the callback reads the files and decides by their content whether anything
//! changed ([`Fingerprint`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

/// How long a burst of events settles before the files are read.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The poll beside the watcher.
const POLL: Duration = Duration::from_secs(5);

/// Stops following when dropped.
pub struct FileWatch {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The content of a set of files, to tell a real change from a touch: the sha256 of each
/// file's bytes (a missing file counts as empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<[u8; 32]>);

impl Fingerprint {
    /// Reads `paths` now.
    pub fn of(paths: &[PathBuf]) -> Self {
        Self(
            paths
                .iter()
                .map(|p| {
                    let bytes = std::fs::read(p).unwrap_or_default();
                    Sha256::digest(&bytes).into()
                })
                .collect(),
        )
    }
}

/// Calls `on_change` (on the runtime, one call at a time) whenever the content of `paths`
/// changes; the content at the time of the call is read by the callback itself.
/// Without a watcher (a directory notify cannot watch) the poll alone follows them.
pub fn follow(paths: Vec<PathBuf>, mut on_change: impl FnMut() + Send + 'static) -> FileWatch {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut dirs: Vec<PathBuf> = paths.iter().map(|p| dir_of(p)).collect();
    dirs.sort();
    dirs.dedup();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        for d in &dirs {
            w.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(w)
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {}; polling every {}s instead", dirs_text(&dirs), POLL.as_secs());
            None
        }
    };
    let mut seen = Fingerprint::of(&paths);
    let task = tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut events = true;
        loop {
            tokio::select! {
                got = rx.recv(), if events => {
                    if got.is_none() {
                        // No watcher: the poll goes on alone.
                        events = false;
                        continue;
                    }
                    // Let the burst settle, then drop what queued meanwhile.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
            let now = Fingerprint::of(&paths);
            if now != seen {
                seen = now;
                on_change();
            }
        }
    });
    FileWatch {
        _watcher: watcher,
        task,
    }
}

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
