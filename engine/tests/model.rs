//! Random put/delete/reopen/compact sequences against a `BTreeMap` model.

mod common;

use std::collections::BTreeMap;

use common::{run, small_config};
use dynkv_engine::Engine;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put {
        partition: u32,
        key: u8,
        value_len: usize,
        fill: u8,
    },
    Delete {
        partition: u32,
        key: u8,
    },
    Reap {
        partition: u32,
        key: u8,
    },
    Reopen,
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3u32, 0..24u8, 0..3000usize, any::<u8>())
            .prop_map(|(partition, key, value_len, fill)| Op::Put { partition, key, value_len, fill }),
        2 => (0..3u32, 0..24u8).prop_map(|(partition, key)| Op::Delete { partition, key }),
        1 => (0..3u32, 0..24u8).prop_map(|(partition, key)| Op::Reap { partition, key }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

/// What the model expects for one key.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Value(Vec<u8>),
    Tombstone,
}

fn key_bytes(key: u8) -> Vec<u8> {
    format!("key-{key:03}").into_bytes()
}

async fn check(engine: &Engine, model: &BTreeMap<(u32, u8), Expect>, reaped: &BTreeMap<(u32, u8), ()>, when: &str) {
    for partition in 0..3u32 {
        for key in 0..24u8 {
            let got = engine.get(partition, &key_bytes(key)).await.unwrap();
            let want = model.get(&(partition, key));
            match (want, &got) {
                (None, None) => {}
                (Some(Expect::Value(v)), Some(r)) => {
                    assert!(
                        !r.tombstone && r.value[..] == v[..],
                        "{when}: p{partition} k{key} wrong value"
                    )
                }
                (Some(Expect::Tombstone), Some(r)) => {
                    assert!(r.tombstone, "{when}: p{partition} k{key} deleted key came back")
                }
                // A reaped tombstone may reappear after reopen, as documented.
                (None, Some(r)) if r.tombstone && reaped.contains_key(&(partition, key)) => {}
                _ => panic!("{when}: p{partition} k{key}: model {want:?}, engine {got:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_a_btreemap_model(ops in proptest::collection::vec(op(), 1..160)) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small_config(dir.path());
        config.sync = dynkv_engine::SyncMode::Never;
        run(async {
            let mut engine = Engine::open(config.clone()).await.unwrap();
            let mut model = BTreeMap::new();
            let mut reaped = BTreeMap::new();
            for (step, op) in ops.iter().enumerate() {
                match *op {
                    Op::Put { partition, key, value_len, fill } => {
                        let value = vec![fill; value_len];
                        engine.put(partition, &key_bytes(key), &value).await.unwrap();
                        model.insert((partition, key), Expect::Value(value));
                        reaped.remove(&(partition, key));
                    }
                    Op::Delete { partition, key } => {
                        engine.delete(partition, &key_bytes(key), b"ctx").await.unwrap();
                        model.insert((partition, key), Expect::Tombstone);
                    }
                    Op::Reap { partition, key } => {
                        let current = engine.get(partition, &key_bytes(key)).await.unwrap();
                        if let Some(r) = current.filter(|r| r.tombstone) {
                            assert!(engine.reap_tombstone(partition, &key_bytes(key), r.seq));
                            model.remove(&(partition, key));
                            reaped.insert((partition, key), ());
                        }
                    }
                    Op::Reopen => {
                        engine.close().await.unwrap();
                        engine = Engine::open(config.clone()).await.unwrap();
                        let report = engine.recovery_report();
                        assert!(report.corrupt.is_empty() && report.torn_tail.is_none(), "clean reopen found damage: {report:?}");
                        // Reaped tombstones may reappear; the model accepts them.
                        for ((p, k), ()) in &reaped {
                            if let Some(r) = engine.get(*p, &key_bytes(*k)).await.unwrap() {
                                assert!(r.tombstone, "a reaped key's old value came back");
                            }
                        }
                    }
                    Op::Compact => {
                        engine.compact().await.unwrap();
                    }
                }
                check(&engine, &model, &reaped, &format!("after step {step} {op:?}")).await;
            }
            engine.close().await.unwrap();
        });
    }
}
