//! Codec benches: encode and decode NOTIFY with 1, 100 and 400 objects, and one message's
//! full receive path (framing, header checks, body, state machine).
//!
//! `cargo bench --bench codec`

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use p2ppi_hub::protocol::machine::SessionMachine;
use p2ppi_hub::protocol::objects::names;
use p2ppi_hub::protocol::wire::{encode_list_message, Message, MessageType, Object, P2ppiCodec};
use tokio_util::codec::Decoder;

fn objects(n: usize) -> Vec<Object> {
    (0..n)
        .map(|i| {
            Object::new(
                format!("{:040x}/{}", i, names::RICH_PRESENCE),
                format!("available since {i}"),
            )
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_notify");
    for n in [1usize, 100, 400] {
        let list = objects(n);
        let len = Message::Notify(list.clone()).encoded_len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &list, |b, list| {
            let mut buf = BytesMut::with_capacity(len);
            b.iter(|| {
                buf.clear();
                encode_list_message(MessageType::Notify, list, 0, &mut buf).unwrap();
                std::hint::black_box(&buf);
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_notify");
    for n in [1usize, 100, 400] {
        let bytes = Message::Notify(objects(n)).to_bytes(1).unwrap();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &bytes, |b, bytes| {
            b.iter(|| {
                std::hint::black_box(p2ppi_hub::protocol::wire::decode_message(bytes).unwrap())
            })
        });
    }
    group.finish();
}

fn receive_path(c: &mut Criterion) {
    let bytes = Message::Notify(objects(1)).to_bytes(7).unwrap();
    c.bench_function("receive_path_notify_1", |b| {
        let mut codec = P2ppiCodec::new();
        let mut machine = SessionMachine::new();
        machine.subscribe();
        let mut buf = BytesMut::with_capacity(bytes.len());
        b.iter(|| {
            buf.extend_from_slice(&bytes);
            let inbound = codec.decode(&mut buf).unwrap().unwrap();
            std::hint::black_box(machine.on_receive(inbound));
        })
    });
}

criterion_group!(benches, encode, decode, receive_path);
criterion_main!(benches);
