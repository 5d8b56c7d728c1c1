//! The stream decoder on arbitrary bytes: it never panics, and every message it accepts
//! re-encodes to bytes that decode to the same message (decode → encode → decode equal).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2ppi_hub::protocol::wire::{decode_message, Inbound, P2ppiCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = P2ppiCodec::new();
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(Inbound::Message(frame))) => {
                let bytes = frame
                    .message
                    .to_bytes(frame.id)
                    .expect("a decoded message re-encodes");
                match decode_message(&bytes) {
                    Ok(Inbound::Message(again)) => assert_eq!(again, frame),
                    other => panic!("re-encoded {frame:?} decoded as {other:?}"),
                }
            }
            Ok(Some(Inbound::Dropped { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
