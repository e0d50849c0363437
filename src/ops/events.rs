//! Following the registry's event table, for WatchEvents (gRPC) and the server-sent events of
//! `GET /api/v1/events` (and the admin page): one loop, so both see the same events in the
//! same order, from every server of the registry and the CLI.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Catalogue;
use crate::error::{Error, Result};
use crate::registry::EventRecord;

/// How long the follower waits between reads when nothing wakes it: the floor for events that
/// other servers write to a SQLite registry (PostgreSQL's LISTEN/NOTIFY and local writes wake
/// it at once).
const POLL: Duration = Duration::from_millis(500);

impl Catalogue {
    /// The events after `after` (`None`: from now on), oldest first, as they are stored. The
    /// follower ends when the receiver is dropped. A read that fails is sent as an error and
    /// retried, so a registry that comes back resumes the stream where it stopped.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot say where "now" is.
    pub async fn follow_events(&self, after: Option<i64>) -> Result<mpsc::Receiver<Result<EventRecord>>> {
        let mut after = match after {
            Some(a) => a,
            None => self.core.registry.last_event_id().await?,
        };
        let (tx, rx) = mpsc::channel(64);
        let core = std::sync::Arc::clone(&self.core);
        tokio::spawn(async move {
            let mut wake = core.status.subscribe_events();
            loop {
                match core.registry.events_after(after, 500).await {
                    Ok(batch) => {
                        for e in batch {
                            after = e.event_id;
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        if tx.send(Err::<EventRecord, Error>(e)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}
