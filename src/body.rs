//! Reading a client's request body safely: a size limit and an idle deadline between chunks.
//!
//! Wrapping [`hyper::body::Incoming`] here means both pass-through and capture read the body the
//! same way: a body that grows past `max_body_bytes` or goes silent for `body_read_timeout` ends
//! in an error instead of holding a connection (or the write lock) forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why reading the client's body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than `max_body_bytes` arrived (a chunked body; a declared length is refused earlier).
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client sent nothing for `body_read_timeout`.
    #[error("client sent no body data for {0:?}")]
    Timeout(Duration),
    /// The client's connection failed or it sent a malformed body.
    #[error("reading request body")]
    Client(#[source] hyper::Error),
}

/// A request body with a size limit and an idle deadline.
#[derive(Debug)]
pub struct GuardedBody {
    inner: Incoming,
    limit: u64,
    read: u64,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl GuardedBody {
    /// Wraps `inner`: at most `limit` bytes, at most `idle` between two chunks.
    pub fn new(inner: Incoming, limit: u64, idle: Duration) -> GuardedBody {
        GuardedBody {
            inner,
            limit,
            read: 0,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read = this.read.saturating_add(data.len() as u64);
                    if this.read > this.limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                    }
                }
                let next = Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout(this.idle)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
