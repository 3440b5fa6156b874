//! Opaque TCP forwarding: bytes both ways, unchanged, half-closes passed on.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Activity;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Copies until both sides have closed or nothing has moved for `idle`.
/// `activity` must be the clock both sockets stamp.
pub async fn forward<C, U>(
    mut client: C,
    mut upstream: U,
    activity: &Activity,
    idle: Duration,
) -> Result<(u64, u64), ForwardError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // copy_bidirectional shuts down each write side when its read side sees
    // EOF, which is exactly TCP half-close.
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => Ok(copied?),
        () = activity.idle_for(idle) => Err(ForwardError::Idle(idle)),
    }
}
