//! Frame encode and decode: `cargo bench -p phoenix-channels`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phoenix_channels::frame;
use phoenix_channels::{Payload, Ref, Serializer};

fn payload(bytes: usize) -> Payload {
    let body = "x".repeat(bytes.saturating_sub(12));
    Payload::json(&serde_json::json!({ "body": body })).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for size in [100usize, 4096] {
        let p = payload(size);
        let join_ref = Ref::new(12);
        let msg_ref = Ref::new(3456);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("encode_push", size), &p, |b, p| {
            b.iter(|| {
                frame::encode(
                    Some(&join_ref),
                    Some(&msg_ref),
                    "room:lobby",
                    "new_msg",
                    black_box(p),
                )
            })
        });

        let reply = format!(
            r#"["12","3456","room:lobby","phx_reply",{{"response":{},"status":"ok"}}]"#,
            p.as_json().unwrap()
        );
        let reply = Bytes::from(reply);
        group.bench_with_input(BenchmarkId::new("decode_reply", size), &reply, |b, f| {
            b.iter(|| frame::decode_text(black_box(f)).unwrap())
        });

        let push = format!(
            r#"[null,null,"room:lobby","new_msg",{}]"#,
            p.as_json().unwrap()
        );
        let push = Bytes::from(push);
        group.bench_with_input(BenchmarkId::new("decode_broadcast", size), &push, |b, f| {
            b.iter(|| frame::decode_text(black_box(f)).unwrap())
        });

        let mut binary = vec![2u8, 10, 7];
        binary.extend_from_slice(b"room:lobbynew_msg");
        binary.extend(std::iter::repeat_n(7u8, size));
        let binary = Bytes::from(binary);
        group.bench_with_input(
            BenchmarkId::new("decode_binary_broadcast", size),
            &binary,
            |b, f| b.iter(|| frame::decode_binary(black_box(f)).unwrap()),
        );

        // The same rows in MessagePack (`vsn=3.0.0`).
        let body = p.to_value().unwrap();
        let packed = Payload::msgpack(&body).unwrap();
        group.bench_with_input(
            BenchmarkId::new("msgpack_encode_push", size),
            &packed,
            |b, p| {
                b.iter(|| {
                    frame::encode_with(
                        Serializer::MessagePack,
                        Some(&join_ref),
                        Some(&msg_ref),
                        "room:lobby",
                        "new_msg",
                        black_box(p),
                    )
                })
            },
        );
        let reply = rmp_serde::to_vec(&serde_json::json!(
            ["12", "3456", "room:lobby", "phx_reply", {"status": "ok", "response": body}]
        ))
        .unwrap();
        let reply = Bytes::from(reply);
        group.bench_with_input(
            BenchmarkId::new("msgpack_decode_reply", size),
            &reply,
            |b, f| {
                b.iter(|| frame::decode_binary_with(Serializer::MessagePack, black_box(f)).unwrap())
            },
        );
        let push = rmp_serde::to_vec(&serde_json::json!([
            null,
            null,
            "room:lobby",
            "new_msg",
            body
        ]))
        .unwrap();
        let push = Bytes::from(push);
        group.bench_with_input(
            BenchmarkId::new("msgpack_decode_broadcast", size),
            &push,
            |b, f| {
                b.iter(|| frame::decode_binary_with(Serializer::MessagePack, black_box(f)).unwrap())
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
