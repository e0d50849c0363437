//! A change's wait for the fleet: after a change commits, wait until every live server serves
//! it ([`crate::fleet::wait_served`]), so the caller's next request is answered by it.

use std::time::Duration;

use super::Catalogue;
use crate::error::Result;
use crate::fleet::Served;

/// How long a change waits for the fleet unless told otherwise (CLI `--wait`, the APIs'
/// `wait_ms`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The longest wait a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

impl Catalogue {
    /// Waits up to `wait` (`None`: not at all) until every live server serves the registry's
    /// current generation: the change just committed, or a later one. This server's own reload
    /// task is asked to read the registry now.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read (the change stays committed).
    pub async fn await_served(&self, wait: Option<Duration>) -> Result<Served> {
        let generation = self
            .core
            .registry
            .generation()
            .await
            .map_err(crate::fleet::committed_but)?;
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return Ok(Served::skipped(generation));
        };
        self.core.status.kick_reload();
        crate::fleet::wait_served(&self.core.registry, generation, wait.min(MAX_WAIT)).await
    }
}
