//! `GET /v1/events`: the presence page's live feed as server-sent events (`text/event-stream`).
//!
//! A stream starts with one `snapshot` event (the whole hub, see
//! [`crate::hub::FeedSnapshot`]), then carries every [`FeedEvent`] as `event: <name>`
//! and one `data: <json>` line, and a `heartbeat` every `admin.event_heartbeat` (so a page
//! notices a dead stream and a proxy does not time it out).
//!
//! Bounds (DESIGN 7): at most `admin.max_event_streams` streams are open (more get 503,
//! counted in `p2ppi_admin_rejected_total{reason="too_many_event_streams"}`). A stream reads
//! the hub's bounded broadcast channel only as fast as its client takes the bytes (actix
//! polls the body only when the socket has room), so a slow client falls behind, never
//! piles up memory: once it is more than `admin.event_queue` events behind, the stream
//! sends a last `dropped` event and ends (counted in
//! `p2ppi_admin_event_streams_dropped_total{reason="lagged"}`); the page then reconnects and
//! starts again from a snapshot. Streams end when the hub shuts down. A client that went
//! away is noticed when its stream next writes, at the latest with the next heartbeat: its
//! slot is free again then.
//!
//! The token travels in the `Authorization` header like on every other route: the page
//! reads the stream with `fetch` (EventSource cannot send headers), so the token never
//! appears in a URL or a log.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use super::{AdminError, AdminState, Authorized};
use crate::hub::{FeedEvent, FeedSnapshot, FeedSubscription, HubStatus};
use crate::metrics;

/// Encodes one server-sent event: `event: <name>`, one `data:` line per line of `data`,
/// and the blank line that ends it.
pub fn frame(event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(event.len() + data.len() + 16);
    out.push_str("event: ");
    // An event name is ours and has no line breaks; strip them anyway so a frame can
    // never be split.
    out.extend(event.chars().filter(|c| *c != '\n' && *c != '\r'));
    out.push('\n');
    for line in data.split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The open event streams and their limit.
pub struct EventStreams {
    open: AtomicUsize,
    max: usize,
}

impl EventStreams {
    /// No stream open yet; at most `max` at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a slot, or `None` when `max` streams are open.
    pub fn acquire(self: &Arc<Self>) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        ::metrics::gauge!(metrics::EVENT_STREAMS).increment(1.0);
        Some(StreamSlot(self.clone()))
    }

    /// How many streams are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One open stream; frees its slot when dropped (when the connection ends).
pub struct StreamSlot(Arc<EventStreams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        ::metrics::gauge!(metrics::EVENT_STREAMS).decrement(1.0);
    }
}

/// The `snapshot` event's data: the snapshot and how often heartbeats come.
#[derive(Serialize)]
struct SnapshotData<'a> {
    #[serde(flatten)]
    snapshot: &'a FeedSnapshot,
    heartbeat_secs: u64,
}

/// One client's feed: the snapshot, then events and heartbeats, until the client lags,
/// the hub stops, or the client goes.
pub struct PageStream {
    first: Option<Bytes>,
    subscription: FeedSubscription,
    heartbeat: Interval,
    status: Box<dyn Fn() -> HubStatus + Send>,
    ended: bool,
    _slot: Option<StreamSlot>,
}

impl PageStream {
    /// A feed of `subscription` with a heartbeat every `heartbeat` carrying `status()`.
    pub fn new(
        subscription: FeedSubscription,
        heartbeat: Duration,
        status: Box<dyn Fn() -> HubStatus + Send>,
        slot: Option<StreamSlot>,
    ) -> Self {
        let data = SnapshotData {
            snapshot: &subscription.snapshot,
            heartbeat_secs: heartbeat.as_secs().max(1),
        };
        let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
        let mut ticks = interval_at(Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            first: Some(frame("snapshot", &json)),
            subscription,
            heartbeat: ticks,
            status,
            ended: false,
            _slot: slot,
        }
    }

    /// The next frame, or `None` when the stream ends.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.ended || *self.subscription.closed.borrow() {
            return None;
        }
        let events = &mut self.subscription.events;
        let closed = &mut self.subscription.closed;
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => Some(event_frame(&event)),
                Err(RecvError::Lagged(missed)) => {
                    self.ended = true;
                    metrics::count_reason(metrics::EVENT_STREAMS_DROPPED, "lagged");
                    tracing::info!(missed, "presence page stream fell behind the hub; dropped");
                    let data = serde_json::json!({ "reason": "lagged", "missed": missed });
                    Some(frame("dropped", &data.to_string()))
                }
                Err(RecvError::Closed) => None,
            },
            _ = self.heartbeat.tick() => {
                let data = serde_json::to_string(&(self.status)()).unwrap_or_else(|_| "{}".into());
                Some(frame("heartbeat", &data))
            }
            _ = closed.changed() => None,
        }
    }

    /// The feed as a body stream.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold(self, |mut feed| async move {
            feed.next_frame().await.map(|bytes| (Ok(bytes), feed))
        })
    }
}

fn event_frame(event: &FeedEvent) -> Bytes {
    frame(event.name(), &event.to_json())
}

/// `GET /v1/events`.
pub(super) async fn events(
    _: Authorized,
    state: web::Data<AdminState>,
    streams: web::Data<Arc<EventStreams>>,
) -> Result<HttpResponse, AdminError> {
    let Some(slot) = streams.acquire() else {
        metrics::count_reason(metrics::ADMIN_REJECTED, "too_many_event_streams");
        return Err(AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open (admin.max_event_streams)",
                streams.open()
            ),
        ));
    };
    let hub = state.hub.clone();
    let heartbeat = hub.config().admin.event_heartbeat;
    let status_hub = hub.clone();
    let feed = PageStream::new(
        hub.feed(),
        heartbeat,
        Box::new(move || status_hub.status()),
        Some(slot),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(feed.into_stream()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::PresenceFeed;
    use crate::protocol::wire::Object;

    #[test]
    fn a_frame_is_event_data_and_a_blank_line() {
        assert_eq!(
            frame("session_ended", r#"{"a":1}"#),
            Bytes::from_static(b"event: session_ended\ndata: {\"a\":1}\n\n")
        );
    }

    #[test]
    fn line_breaks_in_data_become_data_lines_and_never_end_a_frame() {
        let framed = frame("x\n", "one\ntwo\r\n\nthree");
        let text = std::str::from_utf8(&framed).unwrap();
        assert_eq!(
            text,
            "event: x\ndata: one\ndata: two\ndata: \ndata: \ndata: three\n\n"
        );
        assert_eq!(text.matches("\n\n").count(), 1);
    }

    #[test]
    fn streams_beyond_the_limit_are_refused_and_slots_come_back() {
        let streams = EventStreams::new(2);
        let a = streams.acquire().expect("first");
        let _b = streams.acquire().expect("second");
        assert!(streams.acquire().is_none());
        drop(a);
        assert!(streams.acquire().is_some());
    }

    fn feed(events: &Arc<PresenceFeed>, heartbeat: Duration) -> PageStream {
        let status = events.clone();
        PageStream::new(
            events.subscribe(),
            heartbeat,
            Box::new(move || status.status()),
            None,
        )
    }

    fn event_name(frame: &Bytes) -> String {
        let text = std::str::from_utf8(frame).unwrap();
        text.lines()
            .next()
            .unwrap()
            .trim_start_matches("event: ")
            .to_owned()
    }

    #[tokio::test]
    async fn the_snapshot_comes_first_then_events_in_order() {
        let events = Arc::new(PresenceFeed::new(16, 10));
        events.hub_objects_changed(&[Object::new("a", "1")]);
        let mut feed = feed(&events, Duration::from_secs(3600));
        events.hub_objects_changed(&[Object::new("a", "2")]);
        let first = feed.next_frame().await.unwrap();
        assert_eq!(event_name(&first), "snapshot");
        assert!(std::str::from_utf8(&first)
            .unwrap()
            .contains(r#""value":"1""#));
        let second = feed.next_frame().await.unwrap();
        assert_eq!(event_name(&second), "hub_objects_changed");
        assert!(std::str::from_utf8(&second)
            .unwrap()
            .contains(r#""value":"2""#));
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_the_queue_is_dropped_not_buffered() {
        let events = Arc::new(PresenceFeed::new(4, 10));
        let mut feed = feed(&events, Duration::from_secs(3600));
        assert_eq!(event_name(&feed.next_frame().await.unwrap()), "snapshot");
        // The client reads nothing while the hub changes more than the queue holds.
        for i in 0..10 {
            events.hub_objects_changed(&[Object::new("a", i.to_string())]);
        }
        let last = feed.next_frame().await.unwrap();
        assert_eq!(event_name(&last), "dropped");
        assert!(std::str::from_utf8(&last)
            .unwrap()
            .contains(r#""missed":6"#));
        assert!(feed.next_frame().await.is_none(), "the stream ends");
    }

    #[tokio::test]
    async fn heartbeats_come_while_nothing_happens() {
        let events = Arc::new(PresenceFeed::new(4, 10));
        let mut feed = feed(&events, Duration::from_millis(20));
        feed.next_frame().await.unwrap();
        let beat = tokio::time::timeout(Duration::from_secs(20), feed.next_frame())
            .await
            .expect("a heartbeat within the deadline")
            .unwrap();
        assert_eq!(event_name(&beat), "heartbeat");
        assert!(std::str::from_utf8(&beat).unwrap().contains("uptime_secs"));
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_hub_shuts_down() {
        let events = Arc::new(PresenceFeed::new(4, 10));
        let mut feed = feed(&events, Duration::from_secs(3600));
        feed.next_frame().await.unwrap();
        events.close();
        assert!(feed.next_frame().await.is_none());
    }
}
