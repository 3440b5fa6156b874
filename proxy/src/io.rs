//! Wrappers around accepted and dialed sockets.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use tokio::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::TcpMetrics;

pin_project_lite::pin_project! {
    /// Replays the bytes that protocol detection already read, then reads from
    /// the socket: detection consumes data rather than peeking, so nothing is
    /// lost however the client split its writes.
    pub struct PrefixedIo<T> {
        prefix: Bytes,
        #[pin]
        io: T,
    }
}

impl<T> PrefixedIo<T> {
    pub fn new(prefix: Bytes, io: T) -> Self {
        Self { prefix, io }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T: AsyncRead> AsyncRead for PrefixedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for PrefixedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// Counts a socket's bytes and its open/close into the `tcp_*` metrics,
    /// and stamps the shared activity clock that idle timeouts read.
    pub struct MeteredIo<T> {
        #[pin]
        io: T,
        metrics: TcpMetrics,
        // Until `label` says how the peer connected (inbound mTLS is only
        // known after the handshake), bytes are held here so nothing is
        // counted under a label that may turn out wrong.
        unlabelled: Option<Unlabelled>,
        activity: Activity,
    }

    impl<T> PinnedDrop for MeteredIo<T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Closed before anyone said otherwise: the default label.
            if let Some(held) = this.unlabelled.take() {
                held.count(this.metrics);
            }
            this.metrics.closed();
        }
    }
}

#[derive(Default)]
struct Unlabelled {
    read: usize,
    written: usize,
}

impl Unlabelled {
    fn count(self, metrics: &TcpMetrics) {
        metrics.opened();
        metrics.read(self.read);
        metrics.wrote(self.written);
    }
}

impl<T> MeteredIo<T> {
    pub fn new(io: T, metrics: TcpMetrics, activity: Activity) -> Self {
        metrics.opened();
        Self { io, metrics, unlabelled: None, activity }
    }

    /// A socket whose label is decided later by [`MeteredIo::label`];
    /// `default` applies if it closes first.
    pub fn unlabelled(io: T, default: TcpMetrics, activity: Activity) -> Self {
        Self { io, metrics: default, unlabelled: Some(Unlabelled::default()), activity }
    }

    /// Counts the connection, from its opening, under `metrics`. Only the
    /// first call on an unlabelled socket has an effect.
    pub fn label(&mut self, metrics: &TcpMetrics) {
        if let Some(held) = self.unlabelled.take() {
            self.metrics = metrics.clone();
            held.count(&self.metrics);
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn counted_read(metrics: &TcpMetrics, unlabelled: &mut Option<Unlabelled>, n: usize) {
        match unlabelled {
            Some(held) => held.read += n,
            None => metrics.read(n),
        }
    }

    fn counted_write(metrics: &TcpMetrics, unlabelled: &mut Option<Unlabelled>, n: usize) {
        match unlabelled {
            Some(held) => held.written += n,
            None => metrics.wrote(n),
        }
    }
}

impl<T: AsyncRead> AsyncRead for MeteredIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            Self::counted_read(this.metrics, this.unlabelled, n);
            this.activity.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for MeteredIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write(cx, buf))?;
        Self::counted_write(this.metrics, this.unlabelled, n);
        this.activity.touch();
        Poll::Ready(Ok(n))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write_vectored(cx, bufs))?;
        Self::counted_write(this.metrics, this.unlabelled, n);
        this.activity.touch();
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// When a connection (both of its sockets) last moved a byte, as
/// milliseconds since the clock's epoch. One relaxed atomic store per read or
/// write keeps idle detection off the hot path's critical section.
#[derive(Clone, Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self { epoch: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Activity {
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: std::time::Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixed_io_replays_the_prefix_before_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn activity_resolves_only_after_a_quiet_period() {
        let activity = Activity::default();
        activity.touch();
        let idle = std::time::Duration::from_secs(5);
        let start = tokio::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        activity.touch();
        activity.idle_for(idle).await;
        assert!(start.elapsed() >= std::time::Duration::from_secs(8));
    }
}
