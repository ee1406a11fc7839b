//! Laws of the claim: determinism, balance, bounded movement with no
//! movement between unaffected nodes, distinct owners and zones, even shard
//! split, and a clear shortfall when N exceeds the node count.

use std::collections::HashSet;

use dynkv_ring::{claim, ideal_load, ClaimNode, NodeId, PartitionCount, PartitionTable, RingError, ZoneId};
use proptest::prelude::*;

const N: usize = 3;

fn q() -> PartitionCount {
    PartitionCount::default()
}

fn nodes_strategy(max: usize) -> impl Strategy<Value = Vec<ClaimNode>> {
    proptest::collection::vec((1u32..=8, 1u16..=8), 1..=max).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (weight, shards))| ClaimNode {
                id: NodeId(0x1000 + i as u64 * 7919),
                weight,
                zone: ZoneId(0),
                shards,
            })
            .collect()
    })
}

fn describe(nodes: &[ClaimNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}:w{}:z{}:s{}", n.id, n.weight, n.zone.0, n.shards))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every node within one replica of its ideal; and max/mean weighted load
/// at most 1.05 whenever the smallest ideal is large enough for rounding to
/// allow it (20 replicas).
fn check_balance(table: &PartitionTable, nodes: &[ClaimNode]) -> Result<(), String> {
    let total_weight: f64 = nodes.iter().map(|n| f64::from(n.weight)).sum();
    let slots = (table.partition_count().get() as usize * table.replicas()) as f64;
    let mut ratio_max: f64 = 0.0;
    let mut ideal_min = f64::INFINITY;
    for node in nodes {
        let load = table.load(node.id) as f64;
        let ideal = ideal_load(table, node.id);
        if (load - ideal).abs() >= 1.0 + 1e-9 {
            return Err(format!("node {} owns {load} replicas, ideal {ideal:.2}", node.id));
        }
        ideal_min = ideal_min.min(ideal);
        let capped = (ideal - slots * f64::from(node.weight) / total_weight).abs() > 1e-6;
        if !capped {
            ratio_max = ratio_max.max(load / ideal);
        }
    }
    if ideal_min >= 20.0 && ratio_max > 1.05 {
        return Err(format!("max/mean weighted load {ratio_max:.3} > 1.05"));
    }
    Ok(())
}

fn check_rows(table: &PartitionTable, nodes: &[ClaimNode]) -> Result<(), String> {
    let zones: HashSet<ZoneId> = nodes.iter().map(|n| n.zone).collect();
    for p in 0..table.partition_count().get() {
        let owners = table.owners(p);
        let distinct: HashSet<NodeId> = owners.iter().map(|o| o.node).collect();
        if distinct.len() != owners.len() {
            return Err(format!("partition {p} has a repeated owner: {owners:?}"));
        }
        if zones.len() >= table.replicas() {
            let zone_of = |id: NodeId| nodes.iter().find(|n| n.id == id).unwrap().zone;
            let owner_zones: HashSet<ZoneId> = owners.iter().map(|o| zone_of(o.node)).collect();
            if owner_zones.len() != owners.len() {
                return Err(format!("partition {p} repeats a zone: {owners:?}"));
            }
        }
    }
    for node in nodes {
        let loads = table.shard_loads(node.id);
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        if max - min > 1 {
            return Err(format!("node {} shards uneven: {loads:?}", node.id));
        }
    }
    Ok(())
}

/// Whether some node should own more than half of all partitions. Then a
/// leave can leave it too few rows to gain its new share from the leaver's
/// replicas alone, and the claim trades stability for balance (see the
/// module docs of `claim`).
fn capped(table: &PartitionTable) -> bool {
    let q = f64::from(table.partition_count().get());
    table.members().iter().any(|m| ideal_load(table, m.id) > 0.5 * q)
}

/// Replicas gained per node and lost per node between two tables.
fn moves(before: &PartitionTable, after: &PartitionTable) -> (HashSet<NodeId>, HashSet<NodeId>, usize) {
    let (mut gainers, mut losers, mut moved) = (HashSet::new(), HashSet::new(), 0);
    for p in 0..before.partition_count().get() {
        let old: HashSet<NodeId> = before.owners(p).iter().map(|o| o.node).collect();
        let new: HashSet<NodeId> = after.owners(p).iter().map(|o| o.node).collect();
        for n in new.difference(&old) {
            gainers.insert(*n);
            moved += 1;
        }
        losers.extend(old.difference(&new).copied());
    }
    (gainers, losers, moved)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn claim_is_balanced_distinct_and_deterministic(nodes in nodes_strategy(200)) {
        let table = claim(None, &nodes, q(), N).unwrap();
        let info = describe(&nodes);
        prop_assert!(check_balance(&table, &nodes).is_ok(), "{} for membership {}", check_balance(&table, &nodes).unwrap_err(), info);
        prop_assert!(check_rows(&table, &nodes).is_ok(), "{} for membership {}", check_rows(&table, &nodes).unwrap_err(), info);
        let mut reversed = nodes.clone();
        reversed.reverse();
        let again = claim(None, &reversed, q(), N).unwrap();
        prop_assert_eq!(table.to_bytes(), again.to_bytes(), "input order changed the table for {}", info);
    }

    #[test]
    fn a_join_moves_only_to_the_new_node_and_about_its_share(
        nodes in nodes_strategy(60),
        weight in 1u32..=8,
        shards in 1u16..=8,
    ) {
        let before = claim(None, &nodes, q(), N).unwrap();
        let newcomer = ClaimNode { id: NodeId(7), weight, zone: ZoneId(0), shards };
        let mut grown = nodes.clone();
        grown.push(newcomer);
        let after = claim(Some(&before), &grown, q(), N).unwrap();
        let info = describe(&grown);
        let (gainers, _, moved) = moves(&before, &after);
        let stable_case = before.replicas() == after.replicas() && !capped(&before) && !capped(&after);
        if stable_case {
            prop_assert!(gainers.iter().all(|g| *g == newcomer.id), "replicas moved between unaffected nodes {:?} for {}", gainers, info);
        }
        let ideal = ideal_load(&after, newcomer.id);
        let bound = (1.1 * ideal).max(ideal.ceil());
        let extra = (after.replicas() - before.replicas()) * q().get() as usize;
        if stable_case || before.replicas() != after.replicas() {
            prop_assert!(moved as f64 <= bound + extra as f64, "join moved {} replicas, ideal {:.2} for {}", moved, ideal, info);
        }
        prop_assert!(check_balance(&after, &grown).is_ok(), "{} after join for {}", check_balance(&after, &grown).unwrap_err(), info);
        prop_assert!(check_rows(&after, &grown).is_ok(), "{} after join for {}", check_rows(&after, &grown).unwrap_err(), info);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_replicas(nodes in nodes_strategy(60), leaver in any::<prop::sample::Index>()) {
        prop_assume!(nodes.len() > N);
        let before = claim(None, &nodes, q(), N).unwrap();
        let gone = nodes[leaver.index(nodes.len())];
        let shrunk: Vec<ClaimNode> = nodes.iter().copied().filter(|n| n.id != gone.id).collect();
        let after = claim(Some(&before), &shrunk, q(), N).unwrap();
        let info = describe(&nodes);
        let (_, losers, moved) = moves(&before, &after);
        if !capped(&before) && !capped(&after) {
            prop_assert!(losers.iter().all(|l| *l == gone.id), "unaffected nodes lost replicas {:?} for {}", losers, info);
            let ideal = ideal_load(&before, gone.id);
            prop_assert!(moved as f64 <= (1.1 * ideal).max(ideal.ceil()), "leave moved {} replicas, ideal {:.2} for {}", moved, ideal, info);
        }
        prop_assert!(check_balance(&after, &shrunk).is_ok(), "{} after leave of {} for {}", check_balance(&after, &shrunk).unwrap_err(), gone.id, info);
        prop_assert!(check_rows(&after, &shrunk).is_ok(), "{} after leave for {}", check_rows(&after, &shrunk).unwrap_err(), info);
    }

    #[test]
    fn replicas_land_in_distinct_zones_when_there_are_enough(nodes in nodes_strategy(40), zones in 3u32..6) {
        let zoned: Vec<ClaimNode> = nodes.iter().enumerate().map(|(i, n)| ClaimNode { zone: ZoneId(i as u32 % zones), ..*n }).collect();
        let table = claim(None, &zoned, q(), N).unwrap();
        prop_assert!(check_rows(&table, &zoned).is_ok(), "{} for {}", check_rows(&table, &zoned).unwrap_err(), describe(&zoned));
    }
}

#[test]
fn a_node_of_weight_four_carries_four_times_the_replicas() {
    let nodes: Vec<ClaimNode> = (0..10)
        .map(|i| ClaimNode {
            id: NodeId(i),
            weight: if i == 0 { 4 } else { 1 },
            zone: ZoneId(0),
            shards: 4,
        })
        .collect();
    let table = claim(None, &nodes, q(), N).unwrap();
    let heavy = table.load(NodeId(0)) as f64;
    let light = table.load(NodeId(1)) as f64;
    assert!(
        (heavy / light - 4.0).abs() < 0.15,
        "weight 4 carries {heavy}, weight 1 carries {light}"
    );
    assert_eq!(table.shard_loads(NodeId(0)).iter().sum::<usize>(), heavy as usize);
    let loads = table.shard_loads(NodeId(0));
    assert!(
        loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
        "{loads:?}"
    );
}

#[test]
fn fewer_nodes_than_n_gives_every_node_every_partition_and_reports_the_shortfall() {
    let one = [ClaimNode::new(1, 2)];
    let table = claim(None, &one, q(), 3).unwrap();
    assert_eq!(table.replicas(), 1);
    assert_eq!(table.replicas_short(), 2);
    assert_eq!(table.load(NodeId(1)), 1024);
    let two = [ClaimNode::new(1, 2), ClaimNode::new(2, 2)];
    let grown = claim(Some(&table), &two, q(), 3).unwrap();
    assert_eq!((grown.replicas(), grown.replicas_short()), (2, 1));
    assert!((0..1024).all(|p| grown.owners(p).len() == 2));
    let three = [ClaimNode::new(1, 2), ClaimNode::new(2, 2), ClaimNode::new(3, 2)];
    let full = claim(Some(&grown), &three, q(), 3).unwrap();
    assert_eq!((full.replicas(), full.replicas_short()), (3, 0));
}

#[test]
fn shard_count_changes_keep_shards_even() {
    let nodes = [ClaimNode::new(1, 4), ClaimNode::new(2, 4), ClaimNode::new(3, 4)];
    let before = claim(None, &nodes, q(), 2).unwrap();
    let mut resized = nodes;
    resized[0].shards = 6;
    let after = claim(Some(&before), &resized, q(), 2).unwrap();
    let loads = after.shard_loads(NodeId(1));
    assert_eq!(loads.len(), 6);
    assert!(
        loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
        "{loads:?}"
    );
}

#[test]
fn bad_input_is_a_typed_error_naming_the_value() {
    let mut zero = ClaimNode::new(5, 2);
    zero.weight = 0;
    let err = claim(None, &[zero], q(), 3).unwrap_err();
    assert_eq!(
        err,
        RingError::Weight {
            node: NodeId(5),
            weight: 0
        }
    );
    assert!(err.to_string().contains("weight 0"), "{err}");
    let dup = [ClaimNode::new(9, 1), ClaimNode::new(9, 2)];
    assert_eq!(
        claim(None, &dup, q(), 3).unwrap_err(),
        RingError::DuplicateId { node: NodeId(9) }
    );
    assert_eq!(claim(None, &[], q(), 3).unwrap_err(), RingError::NoNodes);
    assert_eq!(
        claim(None, &[ClaimNode::new(1, 1)], q(), 0).unwrap_err(),
        RingError::Replicas(0)
    );
    let mut no_shards = ClaimNode::new(3, 1);
    no_shards.shards = 0;
    assert!(matches!(
        claim(None, &[no_shards], q(), 1),
        Err(RingError::Shards { .. })
    ));
}
