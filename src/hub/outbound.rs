//! The bounded outbound queue of one session and the writer task that drains it.
//!
//! Everything a session sends goes through it: its own replies, fan-out NOTIFYs from its
//! shard, routed messages. The queue is bounded in messages and bytes; a push beyond either
//! bound marks the session a slow consumer and the writer ends the connection (DESIGN 4:
//! never an unbounded `do_send` or `FramedWrite` for peer traffic).
//!
//! **Coalescing under backpressure (DESIGN 5.2).** A message is *unsent* while it is in the
//! queue; the writer takes messages out only as fast as the connection accepts them. So a
//! subscriber that keeps up finds every change written at once, and one that falls behind
//! has changes waiting here. The queue knows what each message is to the subscriber's list
//! of the hub's objects ([`Outbound::push_view`], [`Outbound::push_append`],
//! [`Outbound::push_response`]) and keeps this invariant: *after the last entire-view
//! NOTIFY still unsent, no NOTIFY of one appended object is queued.* From it:
//! - a newer entire view replaces that unsent view in place (an entire view supersedes
//!   every earlier one, spec 3.1), keeping its place among the other messages;
//! - an object notified alone while that view is unsent is folded into it: the view is
//!   replaced by the subscriber's current entire view, which holds the object last;
//! - a RESPONSE is an entire list too, but answers a REQUEST and is never replaced: an
//!   entire view queued before it is left alone (replacing it would let the older RESPONSE
//!   undo the newer view), and views and appends after it queue behind it.
//!
//! So a subscriber following the spec (append an object notified alone, replace its list
//! with an entire list) still ends with exactly the list a RESPONSE returns, and the queue
//! of one that stops reading holds at most one entire view after each RESPONSE, plus the
//! objects appended since the last entire list (together at most one view's worth). Each
//! NOTIFY not sent this way is counted (`p2ppi_notify_superseded_total`).
//!
//! The writer coalesces whatever is queued into one buffer (at most [`BATCH_BYTES`] per
//! write; the buffer is lent from its thread's pool for the write only), stamps each
//! message with this connection's next message ID as it copies it (so IDs follow wire
//! order), and writes under the write timeout: a write that makes no progress for that
//! long is a slow consumer too. A clean end flushes what is queued and
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
use crate::protocol::wire::{
    set_message_id, MessageIds, MessageType, MESSAGE_TYPE_OFFSET, MIN_MESSAGE_LEN,
};

/// Most bytes handed to TLS in one write.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Most batch buffers one thread keeps for its writers between writes.
const POOLED_BUFFERS: usize = 16;

thread_local! {
    /// The batch buffers of this thread's writers, each lent for one write ([`Lent`]).
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A batch buffer lent to a writer for one write, from its thread's pool. A session's
/// writer holds a buffer only while it writes: idle sessions (nearly all of them, most of
/// the time) hold none, though the views they are sent grow a buffer to tens of KiB; and a
/// busy thread reuses the few it has, without an allocation per delivery.
struct Lent(BytesMut);

impl Lent {
    fn new() -> Self {
        Self(
            BUFFERS
                .with(|pool| pool.borrow_mut().pop())
                .unwrap_or_default(),
        )
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        // A burst may grow a buffer past one batch (one message larger than the rest of
        // a batch); the pool keeps only ordinary ones.
        if buf.capacity() == 0 || buf.capacity() > 2 * BATCH_BYTES {
            return;
        }
        buf.clear();
        BUFFERS.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        });
    }
}

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

/// An entire list in the queue: what may be replaced, or must not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    /// A NOTIFY holding the subscriber's entire view.
    View,
    /// A RESPONSE (an entire list answering a REQUEST).
    Response,
}

/// One queued message.
struct Queued {
    bytes: Bytes,
    /// Written as a RESPONSE whatever type `bytes` says (a view is kept encoded once, as
    /// a NOTIFY; the writer patches the type byte as it patches the message ID).
    as_response: bool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// How many messages the writer has taken out since the start: the queue's front is
    /// message number `taken`, counting every message ever queued.
    taken: u64,
    /// The last entire list queued, by message number, and which kind it is; it is unsent
    /// while its number is at least `taken`.
    last_list: Option<(u64, List)>,
    bytes: usize,
    /// NOTIFYs superseded in this queue.
    superseded: u64,
    closing: bool,
    failed: Option<WriterFailure>,
}

impl State {
    /// The index in the queue of the last entire list if it is an unsent entire view (the
    /// one a newer view replaces).
    fn unsent_view(&self) -> Option<usize> {
        match self.last_list {
            Some((number, List::View)) if number >= self.taken => {
                usize::try_from(number - self.taken).ok()
            }
            _ => None,
        }
    }

    /// The number the next message queued gets.
    fn next_number(&self) -> u64 {
        self.taken + self.queue.len() as u64
    }
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

    /// Queues one encoded message that is not part of the subscriber's list (an
    /// application message, the hub's own SUBSCRIBE or REQUEST); its message ID is set by
    /// the writer.
    ///
    /// # Errors
    /// [`PushError::Overflow`] when the bound is exceeded (the writer then ends the
    /// connection), [`PushError::Closed`] when the session is ending.
    pub fn push(&self, message: Bytes) -> Result<(), PushError> {
        self.enqueue(message, None)
    }

    /// Queues a NOTIFY holding the subscriber's entire view. While the last entire list
    /// queued is an entire view still unsent, this one replaces it in place (counted as
    /// superseded) instead of being queued.
    ///
    /// # Errors
    /// As [`Outbound::push`].
    pub fn push_view(&self, view: Bytes) -> Result<(), PushError> {
        self.replace_or(view, Some(List::View))
    }

    /// Queues a NOTIFY holding one appended object; `view` is the subscriber's entire
    /// view with that object in it (a NOTIFY). While an entire view is unsent, the object
    /// is folded into it: that view is replaced by `view`, and the NOTIFY is not sent
    /// (counted as superseded).
    ///
    /// # Errors
    /// As [`Outbound::push`].
    pub fn push_append(&self, append: Bytes, view: &Bytes) -> Result<(), PushError> {
        if self.state.borrow().unsent_view().is_none() {
            return self.enqueue(append, None);
        }
        self.replace_or(view.clone(), Some(List::View))
    }

    /// Queues a RESPONSE holding the subscriber's entire list: `list` encoded as a NOTIFY
    /// or a RESPONSE (the writer sends it as a RESPONSE). It is never replaced.
    ///
    /// # Errors
    /// As [`Outbound::push`].
    pub fn push_response(&self, list: Bytes) -> Result<(), PushError> {
        self.enqueue(list, Some(List::Response))
    }

    /// Replaces the unsent entire view with `view` (one NOTIFY superseded), or queues it.
    fn replace_or(&self, view: Bytes, list: Option<List>) -> Result<(), PushError> {
        let mut state = self.state.borrow_mut();
        let Some(at) = state.unsent_view() else {
            drop(state);
            return self.enqueue(view, list);
        };
        if state.closing || state.failed.is_some() {
            return Err(PushError::Closed);
        }
        let old = state.queue[at].bytes.len();
        if state.bytes - old + view.len() > self.max_bytes {
            drop(state);
            return self.overflow();
        }
        state.bytes = state.bytes - old + view.len();
        // The old bytes are freed here (unless another queue still holds them).
        state.queue[at].bytes = view;
        state.superseded += 1;
        metrics::hub().notify_superseded.increment(1);
        Ok(())
    }

    /// Queues `message` at the back; `list`: it is an entire list of that kind.
    fn enqueue(&self, message: Bytes, list: Option<List>) -> Result<(), PushError> {
        debug_assert!(message.len() >= MIN_MESSAGE_LEN);
        let mut state = self.state.borrow_mut();
        if state.closing || state.failed.is_some() {
            return Err(PushError::Closed);
        }
        if state.queue.len() >= self.max_messages || state.bytes + message.len() > self.max_bytes {
            drop(state);
            return self.overflow();
        }
        if let Some(list) = list {
            state.last_list = Some((state.next_number(), list));
        }
        state.bytes += message.len();
        state.queue.push_back(Queued {
            bytes: message,
            as_response: list == Some(List::Response),
        });
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Fails the queue (a slow consumer) and frees what it held.
    fn overflow(&self) -> Result<(), PushError> {
        let mut state = self.state.borrow_mut();
        state.failed = Some(WriterFailure::QueueFull);
        state.taken += state.queue.len() as u64;
        state.queue.clear();
        state.bytes = 0;
        drop(state);
        self.wake.notify_one();
        self.overflowed.notify_one();
        Err(PushError::Overflow)
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

    /// NOTIFYs this queue did not send because a newer entire view took their place.
    #[cfg(test)]
    pub fn superseded(&self) -> u64 {
        self.state.borrow().superseded
    }

    /// Takes everything queued as the writer would (numbering from `ids`), as one buffer
    /// of wire bytes: for tests of what the queue's subscriber receives.
    #[cfg(test)]
    pub(crate) fn take_all(&self, ids: &mut MessageIds) -> BytesMut {
        let mut wire = BytesMut::new();
        loop {
            let before = wire.len();
            self.take_batch(&mut wire, ids);
            if wire.len() == before {
                return wire;
            }
        }
    }

    /// Moves queued messages into `buf` (up to [`BATCH_BYTES`], at least one), stamping
    /// message IDs (and the RESPONSE type where asked). Returns whether the queue is now
    /// empty, and the closing/failed state.
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
        while let Some(next) = state.queue.front() {
            if !buf.is_empty() && buf.len() + next.bytes.len() > BATCH_BYTES {
                break;
            }
            let Queued { bytes, as_response } = state.queue.pop_front().expect("front exists");
            state.taken += 1;
            state.bytes -= bytes.len();
            let at = buf.len();
            buf.extend_from_slice(&bytes);
            let message = &mut buf[at..];
            set_message_id(message, ids.next_id());
            if as_response {
                message[MESSAGE_TYPE_OFFSET] = MessageType::Response as u8;
            }
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
    let sent_bytes = &metrics::hub().sent_bytes;
    loop {
        let mut buf = Lent::new();
        let (empty, closing, failed) = out.take_batch(&mut buf.0, &mut ids);
        if let Some(failure) = failed {
            return Err(failure);
        }
        if buf.0.is_empty() {
            if closing {
                break;
            }
            // An idle writer holds no buffer: the lent one goes back now.
            drop(buf);
            out.wake.notified().await;
            continue;
        }
        // A write blocked by a peer that stopped reading ends at the write timeout, or at
        // once when the queue behind it overflows.
        let write = async {
            io.write_all(&buf.0).await?;
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
                Ok(Ok(())) => sent_bytes.increment(buf.0.len() as u64),
                Ok(Err(_)) => return Err(WriterFailure::Io),
                Err(_) => return Err(WriterFailure::WriteTimeout),
            },
            _ = out.overflowed.notified() => return Err(WriterFailure::QueueFull),
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
    use crate::protocol::wire::{Frame, Inbound, Message, Object, P2ppiCodec};
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    fn o(name: &str, value: &str) -> Object {
        Object::new(name, value)
    }

    /// An entire list as the relay encodes a view: a NOTIFY.
    fn notify(list: &[Object]) -> Bytes {
        Message::Notify(list.to_vec()).to_bytes(0).unwrap()
    }

    fn app(value: &str) -> Bytes {
        Message::ApplicationDefined {
            mime_type: "text/plain".into(),
            value: value.into(),
        }
        .to_bytes(0)
        .unwrap()
    }

    /// Everything the writer would send now, decoded, in wire order.
    fn drain(out: &Outbound) -> Vec<Frame> {
        drain_with(out, &mut MessageIds::default())
    }

    /// [`drain`] on a connection that numbered messages with `ids` so far.
    fn drain_with(out: &Outbound, ids: &mut MessageIds) -> Vec<Frame> {
        frames(&mut out.take_all(ids))
    }

    fn frames(wire: &mut BytesMut) -> Vec<Frame> {
        let mut codec = P2ppiCodec::new();
        let mut frames = Vec::new();
        while let Some(Inbound::Message(frame)) = codec.decode(wire).unwrap() {
            frames.push(frame);
        }
        frames
    }

    /// What a subscriber following the spec holds after these messages. In these tests
    /// every entire list starts with the hub's object `hub`, and no appended object is
    /// named so: that is how the follower tells an entire view from an object alone.
    fn follow(list: &mut Vec<Object>, frames: &[Frame]) {
        for frame in frames {
            match &frame.message {
                Message::Notify(objects) if objects.first().is_some_and(|o| o.name == "hub") => {
                    *list = objects.clone();
                }
                Message::Notify(objects) => list.extend(objects.iter().cloned()),
                Message::Response(objects) => *list = objects.clone(),
                _ => {}
            }
        }
    }

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
    fn a_newer_view_replaces_the_unsent_one_in_its_place() {
        let out = Outbound::new(100, 1 << 20);
        let (v1, v2) = (
            [o("hub", "1"), o("p/x", "1")],
            [o("hub", "1"), o("p/x", "2"), o("q/y", "long value")],
        );
        out.push(app("before")).unwrap();
        out.push_view(notify(&v1)).unwrap();
        out.push(app("after")).unwrap();
        out.push_view(notify(&v2)).unwrap();
        let len = app("before").len() + notify(&v2).len() + app("after").len();
        assert_eq!(
            out.queued(),
            (3, len),
            "replaced, not queued; the bytes follow"
        );
        assert_eq!(out.superseded(), 1);
        let sent: Vec<Message> = drain(&out).into_iter().map(|f| f.message).collect();
        assert_eq!(
            sent,
            [
                Message::ApplicationDefined {
                    mime_type: "text/plain".into(),
                    value: "before".into()
                },
                Message::Notify(v2.to_vec()),
                Message::ApplicationDefined {
                    mime_type: "text/plain".into(),
                    value: "after".into()
                },
            ],
            "the newer view keeps the older one's place among the other messages"
        );
    }

    #[test]
    fn a_view_already_taken_by_the_writer_is_not_replaced() {
        let out = Outbound::new(100, 1 << 20);
        let ids = &mut MessageIds::default();
        out.push_view(notify(&[o("hub", "1")])).unwrap();
        assert_eq!(drain_with(&out, ids).len(), 1);
        out.push_view(notify(&[o("hub", "2")])).unwrap();
        out.push_append(
            notify(&[o("p/x", "1")]),
            &notify(&[o("hub", "2"), o("p/x", "1")]),
        )
        .unwrap();
        let sent = drain_with(&out, ids);
        assert_eq!(sent.len(), 1, "the append folded into the unsent view");
        assert_eq!(
            sent[0].message,
            Message::Notify(vec![o("hub", "2"), o("p/x", "1")])
        );
        assert_eq!(sent[0].id, 2, "IDs follow wire order");
        assert_eq!(out.superseded(), 1, "only the folded append");
    }

    #[test]
    fn objects_notified_alone_are_folded_into_the_unsent_view() {
        let out = Outbound::new(100, 1 << 20);
        let mut hub = vec![o("hub", "1")];
        let mut list = hub.clone();
        // Appends with no view queued go as they are.
        for name in ["a", "b"] {
            hub.push(o(name, "x"));
            out.push_append(notify(&[o(name, "x")]), &notify(&hub))
                .unwrap();
        }
        assert_eq!(out.queued().0, 2);
        hub[1].value = "changed".into();
        out.push_view(notify(&hub)).unwrap();
        for name in ["c", "d", "e"] {
            hub.push(o(name, "x"));
            out.push_append(notify(&[o(name, "x")]), &notify(&hub))
                .unwrap();
        }
        assert_eq!(out.queued().0, 3, "two appends and one view");
        assert_eq!(out.superseded(), 3);
        let sent = drain(&out);
        follow(&mut list, &sent);
        assert_eq!(list, hub, "the follower ends with the current list");
        assert_eq!(sent[2].message, Message::Notify(hub.clone()));
    }

    #[test]
    fn a_response_after_an_unsent_view_keeps_that_view_and_later_views_queue_behind_it() {
        let out = Outbound::new(100, 1 << 20);
        let v1 = vec![o("hub", "1"), o("p/x", "1")];
        out.push_view(notify(&v1)).unwrap();
        // A REQUEST answered now: the list as it is, v1.
        out.push_response(notify(&v1)).unwrap();
        // Replacing v1 would let this older RESPONSE undo the newer view.
        let v2 = vec![o("hub", "1"), o("p/x", "2")];
        out.push_view(notify(&v2)).unwrap();
        let mut v3 = v2.clone();
        v3.push(o("q/y", "1"));
        out.push_append(notify(&[o("q/y", "1")]), &notify(&v3))
            .unwrap();
        let v4 = vec![o("hub", "2"), o("q/y", "1")];
        out.push_view(notify(&v4)).unwrap();
        assert_eq!(out.queued().0, 3, "v1, the RESPONSE, then one view");
        assert_eq!(out.superseded(), 2);
        let sent = drain(&out);
        let messages: Vec<&Message> = sent.iter().map(|f| &f.message).collect();
        assert_eq!(
            messages,
            [
                &Message::Notify(v1.clone()),
                &Message::Response(v1.clone()),
                &Message::Notify(v4.clone())
            ],
            "the RESPONSE is sent as a RESPONSE, never replaced"
        );
        let mut list = Vec::new();
        follow(&mut list, &sent);
        assert_eq!(list, v4);
    }

    #[test]
    fn a_subscriber_that_falls_behind_costs_one_view_however_many_changes() {
        // 64 KiB of queue: far less than the changes below, which never overflow it.
        let out = Outbound::new(8, 64 * 1024);
        out.push(app("hello")).unwrap();
        let mut list = vec![o("hub", "0")];
        out.push_view(notify(&list)).unwrap();
        for i in 0..10_000 {
            if i % 3 == 0 {
                list.push(o(&format!("p/{i}"), "x"));
                let last = list.last().unwrap().clone();
                out.push_append(notify(&[last]), &notify(&list)).unwrap();
            } else {
                list = vec![o("hub", &i.to_string()), o("p/x", &"v".repeat(i % 500))];
                out.push_view(notify(&list)).unwrap();
            }
            let (messages, bytes) = out.queued();
            assert!(messages <= 2, "{messages} messages queued");
            assert_eq!(
                bytes,
                app("hello").len() + notify(&list).len(),
                "old bytes freed"
            );
        }
        let mut seen = Vec::new();
        follow(&mut seen, &drain(&out));
        assert_eq!(seen, list);
    }

    #[test]
    fn a_replacement_beyond_the_byte_bound_overflows() {
        let out = Outbound::new(100, 200);
        out.push_view(notify(&[o("hub", "1")])).unwrap();
        assert_eq!(
            out.push_view(notify(&[o("hub", &"x".repeat(300))])),
            Err(PushError::Overflow)
        );
        assert_eq!(out.queued(), (0, 0));
    }

    /// What the hub does to one subscriber's queue, and the writer taking some of it.
    #[derive(Debug, Clone)]
    enum Step {
        /// An object goes last in the view: notified alone.
        Append,
        /// The view changes otherwise: the entire view.
        Replace(usize),
        /// The subscriber's REQUEST is answered.
        Request,
        /// A message that is not a list.
        Other,
        /// The writer takes what is queued.
        Write,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Append),
            3 => (0usize..4).prop_map(Step::Replace),
            1 => Just(Step::Request),
            1 => Just(Step::Other),
            2 => Just(Step::Write),
        ]
    }

    proptest! {
        /// Whatever the interleaving of changes, REQUESTs, other messages and writes, a
        /// subscriber following the spec ends with the current list, each RESPONSE it
        /// gets is the list as of its REQUEST, and it never gets more NOTIFYs than were due.
        #[test]
        fn a_follower_always_ends_with_the_current_list(steps in prop::collection::vec(step(), 1..60)) {
            let out = Outbound::new(1000, 1 << 20);
            let mut list = vec![o("hub", "0")];
            out.push_view(notify(&list)).unwrap();
            let (mut wire, mut ids) = (BytesMut::new(), MessageIds::default());
            let (mut due, mut responses) = (1u64, Vec::new());
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Append => {
                        let object = o(&format!("p/{i}"), "x");
                        list.push(object.clone());
                        out.push_append(notify(&[object]), &notify(&list)).unwrap();
                        due += 1;
                    }
                    Step::Replace(keep) => {
                        list.truncate(keep.max(1));
                        list[0].value = i.to_string();
                        out.push_view(notify(&list)).unwrap();
                        due += 1;
                    }
                    Step::Request => {
                        out.push_response(notify(&list)).unwrap();
                        responses.push(list.clone());
                    }
                    Step::Other => out.push(app("x")).unwrap(),
                    Step::Write => {
                        out.take_batch(&mut wire, &mut ids);
                    }
                }
            }
            wire.extend_from_slice(&out.take_all(&mut ids));
            let sent = frames(&mut wire);
            let mut seen = Vec::new();
            follow(&mut seen, &sent);
            prop_assert_eq!(&seen, &list);
            let got: Vec<Vec<Object>> = sent
                .iter()
                .filter_map(|f| match &f.message {
                    Message::Response(objects) => Some(objects.clone()),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(got, responses);
            let notifies = sent.iter().filter(|f| matches!(f.message, Message::Notify(_))).count();
            prop_assert_eq!(notifies as u64 + out.superseded(), due);
        }
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
        let ids: Vec<u32> = frames(&mut buf).into_iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}
