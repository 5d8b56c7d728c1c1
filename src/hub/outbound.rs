//! The bounded outbound queue of one session and the writer task that drains it.
//!
//! Everything a session sends goes through [`Outbound::push`]: its own replies, fan-out
//! NOTIFYs from its shard, routed messages. The queue is bounded in messages and bytes; a
//! push beyond either bound marks the session a slow consumer and the writer ends the
//! connection (DESIGN 4: never an unbounded `do_send` or `FramedWrite` for peer traffic).
//!
//! The writer coalesces whatever is queued into one buffer (at most [`BATCH_BYTES`] per
//! write), stamps each message with this connection's next message ID as it copies it (so
//! IDs follow wire order), and writes under the write timeout: a write that makes no
//! progress for that long is a slow consumer too. A clean end flushes what is queued and
//! sends TLS close_notify. Session, queue and writer live on one arbiter thread, so the
//! queue is a `RefCell`, not a lock.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::metrics;
use crate::protocol::wire::{set_message_id, MessageIds, MESSAGE_TYPE_OFFSET, MIN_MESSAGE_LEN};

/// Most bytes handed to TLS in one write.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Why a connection's writer ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterFailure {
    /// The queue overflowed its message or byte bound.
    QueueFull,
    /// A write made no progress within the write timeout.
    WriteTimeout,
    /// The transport failed.
    Io,
}

impl WriterFailure {
    /// A short label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::WriteTimeout => "write_timeout",
            Self::Io => "io",
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The session is closing; the message is discarded.
    Closed,
    /// The queue is over its bound: the session is now a slow consumer being disconnected.
    Overflow,
}

#[derive(Default)]
struct State {
    /// Encoded messages, each marked whether it is a NOTIFY holding an entire view.
    queue: VecDeque<(Bytes, bool)>,
    bytes: usize,
    closing: bool,
    failed: Option<WriterFailure>,
}

/// One session's outbound queue.
pub struct Outbound {
    state: RefCell<State>,
    wake: Notify,
    /// Signalled on overflow, so a writer blocked in a write ends at once.
    overflowed: Notify,
    max_messages: usize,
    max_bytes: usize,
}

impl Outbound {
    /// An empty queue with these bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            state: RefCell::default(),
            wake: Notify::new(),
            overflowed: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues one encoded message (its message ID is set by the writer).
    ///
    /// # Errors
    /// [`PushError::Overflow`] when the bound is exceeded (the writer then ends the
    /// connection), [`PushError::Closed`] when the session is ending.
    pub fn push(&self, message: Bytes) -> Result<(), PushError> {
        self.push_inner(message, false)
    }

    /// Queues a NOTIFY holding an entire view. Under pressure (the queue more than half
    /// full) it replaces an entire view queued last and not yet written, which it
    /// supersedes: a burst of view changes (a mesh emptying at once) then costs a slow
    /// reader one view, not one per change. Below half the bound nothing is coalesced.
    ///
    /// # Errors
    /// As [`Outbound::push`].
    pub fn push_view(&self, message: Bytes) -> Result<(), PushError> {
        self.push_inner(message, true)
    }

    fn push_inner(&self, message: Bytes, is_view: bool) -> Result<(), PushError> {
        debug_assert!(message.len() >= MIN_MESSAGE_LEN);
        let mut state = self.state.borrow_mut();
        if is_view && state.bytes > self.max_bytes / 2 {
            let state = &mut *state;
            if let Some((last, true)) = state.queue.back_mut() {
                state.bytes = state.bytes - last.len() + message.len();
                *last = message;
                return Ok(());
            }
        }
        if state.closing || state.failed.is_some() {
            return Err(PushError::Closed);
        }
        if state.queue.len() >= self.max_messages || state.bytes + message.len() > self.max_bytes {
            state.failed = Some(WriterFailure::QueueFull);
            state.queue.clear();
            state.bytes = 0;
            drop(state);
            self.wake.notify_one();
            self.overflowed.notify_one();
            return Err(PushError::Overflow);
        }
        state.bytes += message.len();
        state.queue.push_back((message, is_view));
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Asks the writer to flush what is queued, send close_notify and stop.
    pub fn close(&self) {
        self.state.borrow_mut().closing = true;
        self.wake.notify_one();
    }

    /// Messages and bytes queued now.
    #[cfg(test)]
    pub fn queued(&self) -> (usize, usize) {
        let state = self.state.borrow();
        (state.queue.len(), state.bytes)
    }

    /// Moves queued messages into `buf` (up to [`BATCH_BYTES`], at least one), stamping
    /// message IDs. Returns whether the queue is now empty, and the closing/failed state.
    fn take_batch(
        &self,
        buf: &mut BytesMut,
        ids: &mut MessageIds,
    ) -> (bool, bool, Option<WriterFailure>) {
        let mut state = self.state.borrow_mut();
        if let Some(failure) = state.failed {
            return (true, state.closing, Some(failure));
        }
        let sent = metrics::hub();
        while let Some((next, _)) = state.queue.front() {
            if !buf.is_empty() && buf.len() + next.len() > BATCH_BYTES {
                break;
            }
            let (message, _) = state.queue.pop_front().expect("front exists");
            state.bytes -= message.len();
            let at = buf.len();
            buf.extend_from_slice(&message);
            set_message_id(&mut buf[at..], ids.next_id());
            if let Some(counter) = sent.sent_raw(message[MESSAGE_TYPE_OFFSET]) {
                counter.increment(1);
            }
        }
        (state.queue.is_empty(), state.closing, None)
    }
}

/// Drains `out` into `io` until the queue is closed or fails. Returns `Ok(())` after a
/// clean close (close_notify sent), or the failure.
pub async fn run_writer<W>(
    out: Rc<Outbound>,
    mut io: W,
    write_timeout: Duration,
) -> Result<(), WriterFailure>
where
    W: AsyncWrite + Unpin,
{
    let mut ids = MessageIds::default();
    let mut buf = BytesMut::new();
    let sent_bytes = &metrics::hub().sent_bytes;
    loop {
        let (empty, closing, failed) = out.take_batch(&mut buf, &mut ids);
        if let Some(failure) = failed {
            return Err(failure);
        }
        if buf.is_empty() {
            if closing {
                break;
            }
            out.wake.notified().await;
            continue;
        }
        // A write blocked by a peer that stopped reading ends at the write timeout, or at
        // once when the queue behind it overflows.
        let write = async {
            io.write_all(&buf).await?;
            if empty {
                io.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        // `biased`: the write first, without drawing a random number per write (1 % of
        // the hub's CPU in a fan-out profile).
        tokio::select! {
            biased;
            result = tokio::time::timeout(write_timeout, write) => match result {
                Ok(Ok(())) => sent_bytes.increment(buf.len() as u64),
                Ok(Err(_)) => return Err(WriterFailure::Io),
                Err(_) => return Err(WriterFailure::WriteTimeout),
            },
            _ = out.overflowed.notified() => return Err(WriterFailure::QueueFull),
        }
        buf.clear();
        if buf.capacity() > 2 * BATCH_BYTES {
            // A burst grew the buffer; an idle session should not keep it.
            buf = BytesMut::new();
        }
    }
    // Clean end: TLS close_notify, then the TCP FIN.
    match tokio::time::timeout(write_timeout, io.shutdown()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriterFailure::Io),
        Err(_) => Err(WriterFailure::WriteTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::{Inbound, Message, P2ppiCodec};
    use tokio_util::codec::Decoder;

    #[test]
    fn overflow_by_messages_or_bytes_fails_the_queue() {
        let msg = Message::Request.to_bytes(0).unwrap();
        let out = Outbound::new(2, 1 << 20);
        assert_eq!(out.push(msg.clone()), Ok(()));
        assert_eq!(out.push(msg.clone()), Ok(()));
        assert_eq!(out.push(msg.clone()), Err(PushError::Overflow));
        assert_eq!(out.push(msg.clone()), Err(PushError::Closed));
        assert_eq!(out.queued(), (0, 0), "an overflowed queue frees its memory");
        let out = Outbound::new(100, 40);
        assert_eq!(out.push(msg.clone()), Ok(()));
        assert_eq!(out.push(msg.clone()), Ok(()));
        assert_eq!(out.push(msg), Err(PushError::Overflow));
    }

    #[test]
    fn views_coalesce_only_under_pressure() {
        // A view of n value bytes encodes to 43 + n bytes.
        let view = |n: usize| {
            Message::Notify(vec![crate::protocol::wire::Object::new("v", "x".repeat(n))])
                .to_bytes(0)
                .unwrap()
        };
        let out = Outbound::new(100, 2000);
        // Below half the bound (1000 bytes): every view is queued.
        for n in [100, 100, 200, 600] {
            out.push_view(view(n)).unwrap();
        }
        assert_eq!(out.queued(), (4, 143 + 143 + 243 + 643));
        // Past half: a new view replaces the last queued view.
        out.push_view(view(10)).unwrap();
        assert_eq!(
            out.queued(),
            (4, 143 + 143 + 243 + 53),
            "replaced, not appended"
        );
        // A message that is not a view is never replaced, even under pressure.
        out.push_view(view(600)).unwrap();
        out.push(Message::Request.to_bytes(0).unwrap()).unwrap();
        assert!(out.queued().1 > 1000);
        out.push_view(view(10)).unwrap();
        assert_eq!(out.queued().0, 7, "appended after the REQUEST");
    }

    #[tokio::test]
    async fn writer_numbers_in_wire_order_and_closes() {
        let out = Rc::new(Outbound::new(100, 1 << 20));
        let shared = Message::Notify(vec![]).to_bytes(0).unwrap();
        for _ in 0..3 {
            out.push(shared.clone()).unwrap();
        }
        out.close();
        let mut sink = Vec::new();
        run_writer(out, &mut sink, Duration::from_secs(1))
            .await
            .unwrap();
        let mut buf = BytesMut::from(&sink[..]);
        let mut codec = P2ppiCodec::new();
        let mut ids = Vec::new();
        while let Some(Inbound::Message(f)) = codec.decode(&mut buf).unwrap() {
            ids.push(f.id);
        }
        assert_eq!(ids, vec![1, 2, 3]);
    }
}
