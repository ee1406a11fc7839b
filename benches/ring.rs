//! Placement and membership benchmarks (criterion).
//!
//! - `lookup`: key → partition → owners, on every request (target < 50 ns);
//! - `preference_list`: owners plus fallbacks with one node down;
//! - `claim`: a full table from scratch, and a join, for 100 and 1,000 nodes;
//! - `membership_merge`: merging a 1,000-node gossip state.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dynkv_ring::{
    claim, ClaimNode, Lifecycle, Liveness, Membership, NodeId, NodeRecord, PartitionCount, PreferenceList, ZoneId,
};

fn nodes(count: u64) -> Vec<ClaimNode> {
    (0..count)
        .map(|i| ClaimNode {
            id: NodeId(i * 7919 + 1),
            weight: 1 + (i % 8) as u32,
            zone: ZoneId((i % 4) as u32),
            shards: 1 + (i % 8) as u16,
        })
        .collect()
}

fn bench_lookup(c: &mut Criterion) {
    let table = claim(None, &nodes(30), PartitionCount::default(), 3).unwrap();
    let keys: Vec<Vec<u8>> = (0..4096u32).map(|i| format!("user:{i:08}").into_bytes()).collect();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lookup/16B_key", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 4095;
            let (partition, owners) = table.owners_of_key(black_box(&keys[i]));
            black_box((partition, owners[0]))
        })
    });
    let down = table.owners(7)[1].node;
    group.bench_function("preference_list/one_down", |b| {
        let mut p = 0u32;
        b.iter(|| {
            p = (p + 1) & 1023;
            black_box(PreferenceList::new(&table, p, |n| n == down, 1))
        })
    });
    group.finish();
}

fn bench_claim(c: &mut Criterion) {
    let mut group = c.benchmark_group("claim");
    group.sample_size(10);
    for count in [100u64, 1000] {
        let members = nodes(count);
        group.bench_function(BenchmarkId::new("fresh", count), |b| {
            b.iter(|| claim(None, black_box(&members), PartitionCount::default(), 3).unwrap())
        });
        let table = claim(None, &members, PartitionCount::default(), 3).unwrap();
        let mut grown = members.clone();
        grown.push(ClaimNode::new(u64::MAX, 4));
        group.bench_function(BenchmarkId::new("join", count), |b| {
            b.iter(|| claim(Some(&table), black_box(&grown), PartitionCount::default(), 3).unwrap())
        });
    }
    group.finish();
}

fn record(id: u64, incarnation: u64) -> NodeRecord {
    NodeRecord {
        id: NodeId(id),
        incarnation,
        lifecycle: Lifecycle::Up,
        liveness: Liveness::Alive,
        address: format!("10.0.{}.{}:7700", id / 256, id % 256),
        shard_ports: (7600..7608).collect(),
        weight: 8,
        zone: ZoneId(0),
    }
}

fn bench_membership(c: &mut Criterion) {
    let mut mine = Membership::default();
    let mut theirs = Membership::default();
    for id in 0..1000 {
        mine.merge_record(record(id, 1));
        // A tenth of the records are newer on the other side.
        theirs.merge_record(record(id, if id % 10 == 0 { 2 } else { 1 }));
    }
    let mut group = c.benchmark_group("membership");
    group.bench_function("merge/1000_nodes_10pct_newer", |b| {
        b.iter(|| {
            let mut m = mine.clone();
            black_box(m.merge(black_box(&theirs)))
        })
    });
    group.bench_function("digest/1000_nodes", |b| b.iter(|| black_box(mine.digest())));
    group.finish();
}

criterion_group!(benches, bench_lookup, bench_claim, bench_membership);
criterion_main!(benches);
