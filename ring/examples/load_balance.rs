//! Reproduces the comparison behind Figure 8 of the Dynamo paper: load
//! balancing efficiency (mean node load / max node load) against the size
//! of the membership metadata, for 30 nodes and N = 3, under
//! - strategy 1: T random tokens per node, partitioned by token;
//! - strategy 2: T random tokens per node, Q equal-sized partitions;
//! - strategy 3: Q/S tokens per node, equal-sized partitions;
//! - dynkv's claim (equal partitions, capacity-weighted, minimal movement).
//!
//! It also measures the replicas moved when a node joins and when one
//! leaves, as a multiple of the ideal (the joining or leaving node's share).
//! Load is the fraction of a uniform key space a node stores, counting all
//! N replicas. Random strategies are averaged over several seeds; all
//! randomness is seeded, so the output is reproducible.
//!
//! `cargo run --release -p dynkv-ring --example load_balance` prints the
//! table and writes it into docs/PERFORMANCE.md between the markers
//! `<!-- load_balance:begin -->` and `<!-- load_balance:end -->`.

use std::collections::HashSet;
use std::fmt::Write as _;

use dynkv_ring::{claim, ClaimNode, PartitionCount};

const NODES: usize = 30;
const N: usize = 3;
const SEEDS: u64 = 5;
/// Bytes of one ring token (a 64-bit position) plus a 2-byte node index.
const TOKEN_BYTES: usize = 10;
/// Bytes of one partition → node entry (2-byte node index).
const ENTRY_BYTES: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Ring positions (tokens) with their nodes, sorted.
fn random_tokens(rng: &mut Rng, nodes: &[usize], per_node: usize) -> Vec<(u64, usize)> {
    let mut tokens: Vec<(u64, usize)> = nodes
        .iter()
        .flat_map(|&n| (0..per_node).map(move |_| n))
        .map(|n| (rng.next(), n))
        .collect();
    tokens.sort_unstable();
    tokens
}

/// The first N distinct nodes clockwise from token index `start`.
fn walk(tokens: &[(u64, usize)], start: usize) -> Vec<usize> {
    let mut owners = Vec::with_capacity(N);
    for i in 0..tokens.len() {
        let node = tokens[(start + i) % tokens.len()].1;
        if !owners.contains(&node) {
            owners.push(node);
            if owners.len() == N {
                break;
            }
        }
    }
    owners
}

/// Replica placement as a list of (range weight, owners): a weight is a
/// fraction of the key space.
type Placement = Vec<(f64, Vec<usize>)>;

/// A token-based strategy: ring tokens → placement.
type PlaceFn = dyn Fn(&[(u64, usize)]) -> Placement;

fn strategy1(tokens: &[(u64, usize)]) -> Placement {
    (0..tokens.len())
        .map(|i| {
            let prev = if i == 0 {
                tokens[tokens.len() - 1].0
            } else {
                tokens[i - 1].0
            };
            let len = tokens[i].0.wrapping_sub(prev) as f64 / 2f64.powi(64);
            (len, walk(tokens, i))
        })
        .collect()
}

fn strategy2(tokens: &[(u64, usize)], q: u64) -> Placement {
    let step = u64::MAX / q + 1;
    (0..q)
        .map(|p| {
            let end = (p + 1).wrapping_mul(step).wrapping_sub(1);
            let start = tokens.partition_point(|t| t.0 < end) % tokens.len();
            (1.0 / q as f64, walk(tokens, start))
        })
        .collect()
}

/// Strategy 3: partition p's primary is `primary[p]`; replicas are the next
/// distinct primaries clockwise.
fn strategy3(primary: &[usize]) -> Placement {
    let tokens: Vec<(u64, usize)> = primary.iter().enumerate().map(|(p, &n)| (p as u64, n)).collect();
    (0..primary.len())
        .map(|p| (1.0 / primary.len() as f64, walk(&tokens, p)))
        .collect()
}

fn strategy3_assign(rng: &mut Rng, nodes: &[usize], q: usize) -> Vec<usize> {
    let mut primary: Vec<usize> = (0..q).map(|p| nodes[p % nodes.len()]).collect();
    for i in (1..q).rev() {
        primary.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    primary
}

fn ours(nodes: &[usize], q: u64, prev: Option<&dynkv_ring::PartitionTable>) -> (Placement, dynkv_ring::PartitionTable) {
    let members: Vec<ClaimNode> = nodes.iter().map(|&n| ClaimNode::new(n as u64, 1)).collect();
    let table = claim(prev, &members, PartitionCount::new(q).expect("power of two"), N).expect("valid membership");
    let placement = (0..q as u32)
        .map(|p| {
            (
                1.0 / q as f64,
                table.owners(p).iter().map(|o| o.node.0 as usize).collect(),
            )
        })
        .collect();
    (placement, table)
}

/// Mean node load / max node load.
fn efficiency(placement: &Placement, nodes: &[usize]) -> f64 {
    let mut load = vec![0.0; nodes.iter().max().map_or(0, |m| m + 1)];
    for (weight, owners) in placement {
        for &o in owners {
            load[o] += weight;
        }
    }
    let loads: Vec<f64> = nodes.iter().map(|&n| load[n]).collect();
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    mean / loads.iter().cloned().fold(0.0, f64::max)
}

/// Key-space weight of replicas whose owner set gained a node, as a
/// multiple of `ideal` (fraction of all replicas).
fn moved(before: &Placement, after: &Placement, ideal: f64) -> f64 {
    // Compare on a fine common grid of the key space.
    const GRID: usize = 1 << 14;
    let at = |placement: &Placement, x: f64| -> HashSet<usize> {
        let mut acc = 0.0;
        for (w, owners) in placement {
            acc += w;
            if x < acc {
                return owners.iter().copied().collect();
            }
        }
        placement
            .last()
            .map(|p| p.1.iter().copied().collect())
            .unwrap_or_default()
    };
    let mut gained = 0usize;
    for i in 0..GRID {
        let x = (i as f64 + 0.5) / GRID as f64;
        gained += at(after, x).difference(&at(before, x)).count();
    }
    gained as f64 / (GRID * N) as f64 / ideal
}

/// Strategy-1 placements are ordered by token, not by key position; turn
/// them into key-space order starting at 0.
fn keyspace_order(tokens: &[(u64, usize)], placement: Placement) -> Placement {
    // Range i covers (token[i-1], token[i]]; the first range wraps around
    // zero, so split it.
    let mut out = Vec::with_capacity(placement.len() + 1);
    let wrap_tail = (u64::MAX - tokens[tokens.len() - 1].0) as f64 / 2f64.powi(64);
    let first = &placement[0];
    out.push((first.0 - wrap_tail, first.1.clone()));
    out.extend(placement[1..].iter().cloned());
    out.push((wrap_tail, first.1.clone()));
    out
}

struct Row {
    strategy: &'static str,
    parameter: String,
    metadata_bytes: usize,
    efficiency: f64,
    join_moved: f64,
    leave_moved: f64,
}

fn main() {
    let nodes: Vec<usize> = (0..NODES).collect();
    let grown: Vec<usize> = (0..=NODES).collect();
    let shrunk: Vec<usize> = (1..NODES).collect();
    let (join_ideal, leave_ideal) = (1.0 / (NODES + 1) as f64, 1.0 / NODES as f64);
    let mut rows = Vec::new();
    let strategy1_placed = |tokens: &[(u64, usize)]| keyspace_order(tokens, strategy1(tokens));
    let strategy2_placed = |tokens: &[(u64, usize)]| strategy2(tokens, 1024);
    let token_strategies: [(&'static str, u64, &PlaceFn); 2] = [
        ("1: T random tokens/node, partition by token", 0, &strategy1_placed),
        (
            "2: T random tokens/node, Q=1024 equal partitions",
            100,
            &strategy2_placed,
        ),
    ];
    for (strategy, seed_base, place) in token_strategies {
        for t in [8usize, 32, 128] {
            let (mut eff, mut join, mut leave) = (0.0, 0.0, 0.0);
            for seed in 0..SEEDS {
                let mut rng = Rng(seed_base + seed);
                let tokens = random_tokens(&mut rng, &nodes, t);
                let mut with_new = tokens.clone();
                with_new.extend(random_tokens(&mut rng, &[NODES], t));
                with_new.sort_unstable();
                let without: Vec<(u64, usize)> = tokens.iter().copied().filter(|t| t.1 != 0).collect();
                let base = place(&tokens);
                eff += efficiency(&base, &nodes);
                join += moved(&base, &place(&with_new), join_ideal);
                leave += moved(&base, &place(&without), leave_ideal);
            }
            let k = SEEDS as f64;
            rows.push(Row {
                strategy,
                parameter: format!("T={t}"),
                metadata_bytes: NODES * t * TOKEN_BYTES,
                efficiency: eff / k,
                join_moved: join / k,
                leave_moved: leave / k,
            });
        }
    }
    for q in [256usize, 1024, 4096] {
        let (mut eff, mut join, mut leave) = (0.0, 0.0, 0.0);
        for seed in 0..SEEDS {
            let mut rng = Rng(200 + seed);
            let primary = strategy3_assign(&mut rng, &nodes, q);
            let base = strategy3(&primary);
            eff += efficiency(&base, &nodes);
            // Join: the new node steals Q/(S+1) partitions, one at a time
            // from the node that currently has the most.
            let mut joined = primary.clone();
            let mut counts = vec![0usize; NODES + 1];
            for &n in &joined {
                counts[n] += 1;
            }
            for _ in 0..q / (NODES + 1) {
                let donor = (0..NODES)
                    .max_by_key(|&n| (counts[n], rng.next() % 1024))
                    .expect("nodes");
                let donor_parts: Vec<usize> = (0..q).filter(|&p| joined[p] == donor).collect();
                let p = donor_parts[(rng.next() % donor_parts.len() as u64) as usize];
                joined[p] = NODES;
                counts[donor] -= 1;
                counts[NODES] += 1;
            }
            join += moved(&base, &strategy3(&joined), join_ideal);
            // Leave: node 0's partitions go to random remaining nodes,
            // least loaded first.
            let mut left = primary.clone();
            let mut counts = vec![0usize; NODES];
            for &n in &left {
                counts[n] += 1;
            }
            for owner in left.iter_mut().filter(|o| **o == 0) {
                let to = (1..NODES)
                    .min_by_key(|&n| (counts[n], rng.next() % 1024))
                    .expect("nodes");
                *owner = to;
                counts[to] += 1;
            }
            leave += moved(&base, &strategy3(&left), leave_ideal);
        }
        let k = SEEDS as f64;
        rows.push(Row {
            strategy: "3: Q/S tokens/node, equal partitions",
            parameter: format!("Q={q}"),
            metadata_bytes: q * ENTRY_BYTES,
            efficiency: eff / k,
            join_moved: join / k,
            leave_moved: leave / k,
        });
    }
    for q in [256u64, 1024, 4096] {
        let (base, table) = ours(&nodes, q, None);
        let (joined, _) = ours(&grown, q, Some(&table));
        let (left, _) = ours(&shrunk, q, Some(&table));
        rows.push(Row {
            strategy: "dynkv claim (N owners per partition stored)",
            parameter: format!("Q={q}"),
            metadata_bytes: q as usize * N * ENTRY_BYTES,
            efficiency: efficiency(&base, &nodes),
            join_moved: moved(&base, &joined, join_ideal),
            leave_moved: moved(&base, &left, leave_ideal),
        });
    }
    let table = render(&rows);
    println!("{table}");
    write_doc(&table);
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{NODES} nodes, N = {N}, uniform keys; random strategies averaged over {SEEDS} seeds. \
         Efficiency = mean node load / max node load. Moved = replicas that change owner, as a multiple \
         of the ideal (1/{} of all replicas on a join, 1/{NODES} on a leave).\n",
        NODES + 1
    );
    let _ = writeln!(
        out,
        "| strategy | parameter | metadata | efficiency | join moved | leave moved |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} KiB | {:.3} | {:.2}x | {:.2}x |",
            r.strategy,
            r.parameter,
            r.metadata_bytes as f64 / 1024.0,
            r.efficiency,
            r.join_moved,
            r.leave_moved
        );
    }
    out
}

fn write_doc(table: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PERFORMANCE.md");
    let (begin, end) = ("<!-- load_balance:begin -->", "<!-- load_balance:end -->");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        eprintln!("{} not found; table printed only", path.display());
        return;
    };
    let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else {
        eprintln!("markers not found in {}; table printed only", path.display());
        return;
    };
    let updated = format!("{}{begin}\n{table}{}", &doc[..b], &doc[e..]);
    match std::fs::write(&path, updated) {
        Ok(()) => eprintln!("wrote the table into {}", path.display()),
        Err(err) => eprintln!("cannot write {}: {err}", path.display()),
    }
}
