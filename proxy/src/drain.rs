//! Graceful shutdown: one signal tells listeners to stop accepting and
//! connections to finish their in-flight requests; a tracker tells when
//! they all have.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub fn signal(&self) -> &CancellationToken {
        &self.signal
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Signals the drain and waits up to `grace` for tracked connections;
    /// returns how many were still open when it gave up.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.signal.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}
