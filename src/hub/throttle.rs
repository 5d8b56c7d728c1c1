//! The inbound rate limit (DESIGN 7): a token bucket in front of a session's message
//! stream that *throttles*. When the bucket is empty the stream is not polled, so nothing
//! more is read from the socket until tokens return: TCP pushes back on the sender, its
//! cost to the hub stays bounded, and no well-formed message is ever dropped (a dropped
//! SUBSCRIBE, UNSUBSCRIBE or REQUEST would leave the two nodes' flags disagreeing for good).
//!
//! RESPONSEs answer the hub's own REQUESTs (at most one outstanding, DESIGN 5.2), so they
//! take no token. Time spent throttled is counted (`p2ppi_inbound_throttled_seconds_total`);
//! a flood is logged once when it starts and once when the bucket is full again.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tracing::{info, warn};

use crate::metrics;
use crate::protocol::wire::{FrameError, Inbound, MessageType};

/// A token bucket: `rate` tokens per second, at most `burst` held.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// How long until one token is held (zero when one is).
    fn until_token(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }

    fn is_full(&self) -> bool {
        self.tokens >= self.burst
    }

    /// Takes a token if one is held at `now` (the hub-wide handshake rate, which refuses
    /// rather than waits).
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A message stream read no faster than its bucket allows.
pub struct Throttled<S> {
    inner: S,
    bucket: TokenBucket,
    sleep: Pin<Box<Sleep>>,
    /// Since when the stream waits for a token.
    throttled_since: Option<Instant>,
    /// A flood is under way: the bucket ran dry and has not been full since.
    flooding: bool,
    span: tracing::Span,
}

impl<S> Throttled<S> {
    /// Reads `inner` at most `rate` messages per second after a burst of `burst`; logs in
    /// `span`.
    pub fn new(inner: S, rate: u32, burst: u32, span: tracing::Span) -> Self {
        Self {
            inner,
            bucket: TokenBucket::new(rate, burst),
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
            throttled_since: None,
            flooding: false,
            span,
        }
    }
}

/// Whether an item takes a token: everything the peer sends except RESPONSEs.
fn costs_a_token(item: &Result<Inbound, FrameError>) -> bool {
    !matches!(item, Ok(Inbound::Message(frame)) if frame.message.message_type() == MessageType::Response)
}

impl<S> Stream for Throttled<S>
where
    S: Stream<Item = Result<Inbound, FrameError>> + Unpin,
{
    type Item = Result<Inbound, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let now = Instant::now();
            this.bucket.refill(now);
            if this.bucket.tokens >= 1.0 {
                break;
            }
            if this.throttled_since.is_none() {
                this.throttled_since = Some(now);
                if !this.flooding {
                    this.flooding = true;
                    warn!(parent: &this.span, "inbound rate limit reached: reading paused until tokens return");
                }
            }
            this.sleep.as_mut().reset(now + this.bucket.until_token());
            ready!(this.sleep.as_mut().poll(cx));
        }
        if let Some(since) = this.throttled_since.take() {
            metrics::inbound_throttled(since.elapsed());
        }
        if this.flooding && this.bucket.is_full() {
            this.flooding = false;
            info!(parent: &this.span, "inbound rate back under the limit");
        }
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        if let Some(item) = &item {
            if costs_a_token(item) {
                this.bucket.tokens -= 1.0;
            }
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::{Frame, Message};
    use futures_util::StreamExt;

    fn frame(message: Message) -> Result<Inbound, FrameError> {
        Ok(Inbound::Message(Frame { id: 1, message }))
    }

    #[tokio::test]
    async fn every_message_passes_at_the_rate_and_responses_are_free() {
        let mut items: Vec<_> = (0..30).map(|_| frame(Message::Request)).collect();
        items.extend((0..10).map(|_| frame(Message::Response(Vec::new()))));
        items.push(frame(Message::Subscribe));
        let started = Instant::now();
        let mut throttled = Throttled::new(
            futures_util::stream::iter(items),
            200,
            10,
            tracing::Span::none(),
        );
        let mut seen = Vec::new();
        while let Some(item) = throttled.next().await {
            seen.push(item.unwrap());
        }
        assert_eq!(seen.len(), 41, "nothing dropped");
        assert!(matches!(
            seen.last(),
            Some(Inbound::Message(Frame {
                message: Message::Subscribe,
                ..
            }))
        ));
        // 31 tokens, 21 of them beyond the burst of 10, at 200/s: at least 0.105 s;
        // RESPONSEs cost none.
        let elapsed = started.elapsed().as_secs_f64();
        assert!(elapsed >= 0.1, "took {elapsed} s: the rate was not applied");
    }
}
