//! Payload stamps: each change carries its identity (phase, sequence number, scheduled
//! time) in its value, and a receiver finds every stamp in the raw bytes of a message with
//! a byte scan, without decoding the objects around them. This is what lets the harness
//! read thousands of sessions while staying cheap next to the server it measures.

/// What starts a stamp inside a value, so a receiver can find stamps in raw message bytes
/// without decoding the objects around them.
pub const STAMP_MARK: &[u8] = b"~ld:";

/// One change's identity as carried in its value: `~ld:PHASE:SEQ:NANOS:` then padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The measured phase the change belongs to (each `--find-max` step is one).
    pub phase: u32,
    /// The change's sequence number in its phase, from 1.
    pub seq: u64,
    /// When the change was scheduled: nanoseconds since the harness's time base. Latency
    /// runs from here, not from when the publisher got round to sending it.
    pub scheduled_ns: u64,
}

/// Writes `stamp` as a value of at least `payload_bytes` bytes.
pub fn stamp(stamp: Stamp, payload_bytes: usize) -> String {
    let mut value = format!("~ld:{}:{}:{}:", stamp.phase, stamp.seq, stamp.scheduled_ns);
    let pad = payload_bytes.saturating_sub(value.len());
    value.extend(std::iter::repeat_n('x', pad));
    value
}

/// Reads the stamp at the start of `value` (as written by [`stamp`]).
pub fn read_stamp(value: &str) -> Option<Stamp> {
    parse_after_mark(value.as_bytes().strip_prefix(STAMP_MARK)?)
}

/// Every stamp inside `bytes` (a raw message, a view with many objects), in order.
pub fn find_stamps(bytes: &[u8]) -> impl Iterator<Item = Stamp> + '_ {
    memchr::memmem::find_iter(bytes, STAMP_MARK)
        .filter_map(move |at| parse_after_mark(&bytes[at + STAMP_MARK.len()..]))
}

fn parse_after_mark(mut rest: &[u8]) -> Option<Stamp> {
    let mut number = || -> Option<u64> {
        let end = rest.iter().position(|&b| b == b':')?;
        let (digits, tail) = rest.split_at(end);
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        rest = &tail[1..];
        Some(
            digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        )
    };
    let phase = u32::try_from(number()?).ok()?;
    let seq = number()?;
    let scheduled_ns = number()?;
    Some(Stamp {
        phase,
        seq,
        scheduled_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(phase: u32, seq: u64, scheduled_ns: u64) -> Stamp {
        Stamp {
            phase,
            seq,
            scheduled_ns,
        }
    }

    #[test]
    fn stamps_roundtrip_pad_and_are_found_in_raw_bytes() {
        let s = stamp(st(3, 42, 123_456_789), 64);
        assert_eq!(s.len(), 64);
        assert_eq!(read_stamp(&s), Some(st(3, 42, 123_456_789)));
        assert_eq!(read_stamp(&stamp(st(0, 1, 2), 0)), Some(st(0, 1, 2)));
        assert_eq!(read_stamp("garbage"), None);
        assert_eq!(read_stamp("~ld:1:"), None);
        assert_eq!(read_stamp("~ld:1:2:x3:"), None);
        // A view of several objects inside framing bytes: every stamp, in order, and a
        // truncated one at the end is skipped.
        let mut raw = b"SP\x00\x99name\x00".to_vec();
        raw.extend_from_slice(stamp(st(1, 7, 70), 30).as_bytes());
        raw.extend_from_slice(b"\x02\x01other");
        raw.extend_from_slice(stamp(st(1, 9, 90), 0).as_bytes());
        raw.extend_from_slice(b"~ld:1:10");
        let found: Vec<Stamp> = find_stamps(&raw).collect();
        assert_eq!(found, vec![st(1, 7, 70), st(1, 9, 90)]);
    }
}
