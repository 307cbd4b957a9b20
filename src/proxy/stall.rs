//! A deadline on a client that stops reading (slow read, RELIABILITY.md F7).
//!
//! hyper has no write timeout: a client that requests a large response and then never reads
//! it holds its connection, its buffers and, through back-pressure, the CMS worker that
//! produces the response, for ever. [`SendDeadline`] wraps the client's socket: when a write
//! has made no progress for `send_timeout`, it fails with `TimedOut`, hyper drops the
//! connection, and the origin side is released. Any progress restarts the clock, so a slow but
//! reading client is never cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A socket whose writes fail after `limit` without progress.
#[derive(Debug)]
pub struct SendDeadline<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write is blocked; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> SendDeadline<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, limit: Duration) -> SendDeadline<T> {
        SendDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Maps the inner poll: progress disarms the deadline; `Pending` arms it (once) and fails
    /// the write when it expires. Polling the sleep registers the waker, so an expiry wakes
    /// the connection task even if the socket never becomes writable again.
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("client read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_limit() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = SendDeadline::new(a, Duration::from_millis(200));
        // Fills the 64-byte pipe, then blocks: nobody reads.
        let err = a.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // A reading peer is never cut, however long the whole transfer takes (here 6x the limit).
        let (c, mut d) = tokio::io::duplex(64);
        let mut c = SendDeadline::new(c, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got += d.read(&mut buf).await.unwrap();
            }
            got
        });
        c.write_all(&[0u8; 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 1024);
        let _ = b.read(&mut [0u8; 1]).await;
    }
}
