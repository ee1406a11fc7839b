//! `dynkv bench` against a real node: a load phase and a workload bounded by
//! operation count write a JSON report and an SVG chart; open loop keeps its
//! rate; every `--addr` node gets a share of the requests; an unreachable
//! node and bad arguments fail fast with a clear message. Every process is
//! stopped by PID.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Node;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dynkv"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run dynkv bench")
}

/// Runs `dynkv bench` quietly with its JSON report and SVG chart written
/// into `dir` (read back with `read_report`).
fn bench_into(dir: &Path, args: &[&str]) -> std::process::Output {
    let (json, svg) = (dir.join("report.json"), dir.join("chart.svg"));
    let mut all = args.to_vec();
    all.extend([
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--quiet",
    ]);
    bench(&all)
}

/// The JSON report of the last `bench_into(dir, ..)`.
fn read_report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn a_bounded_run_reports_every_operation_in_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--sync", "never"]);
    let addr = node.addr().to_string();
    // One client alone never makes siblings with read-modify-write.
    let out = bench_into(
        dir.path(),
        &[
            "--addr",
            &addr,
            "--workload",
            "F",
            "--keys",
            "50",
            "--load",
            "--ops",
            "300",
            "--concurrency",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = read_report(dir.path());
    assert_eq!(
        report["sibling_reads"].as_u64(),
        Some(0),
        "one client's read-modify-writes: {report}"
    );
    // Concurrent read-modify-writes of a hot key are truly concurrent, so
    // siblings may appear there.
    let out = bench_into(
        dir.path(),
        &[
            "--addr",
            &addr,
            "--workload",
            "F",
            "--keys",
            "500",
            "--load",
            "--ops",
            "3000",
            "--threads",
            "2",
            "--concurrency",
            "16",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("load: 500 keys"), "{stdout}");
    assert!(stdout.contains("read-modify-write"), "{stdout}");
    let report = read_report(dir.path());
    let ops = report["operations"].as_u64().unwrap();
    let errors: u64 = report["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        ops + errors,
        3000,
        "every operation of the budget is accounted for: {report}"
    );
    assert!(report["by_operation"]["read"]["p99_us"].as_u64().unwrap() > 0);
    let chart = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("throughput"),
        "{}",
        &chart[..200.min(chart.len())]
    );
    assert!(node.terminate().success());
}

#[test]
fn open_loop_holds_its_rate_and_counts_latency_from_the_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--sync", "never"]);
    let addr = node.addr().to_string();
    let started = Instant::now();
    let out = bench_into(
        dir.path(),
        &[
            "--addr",
            &addr,
            "--workload",
            "C",
            "--keys",
            "100",
            "--rate",
            "2000",
            "--duration-s",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = read_report(dir.path());
    let throughput = report["throughput_ops_s"].as_f64().unwrap();
    assert!(
        (1500.0..2500.0).contains(&throughput),
        "open loop at 2000/s ran at {throughput}/s"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(node.terminate().success());
}

#[test]
fn every_addr_node_coordinates_a_share_of_the_requests_even_from_one_thread() {
    // Two separate one-node clusters: each keeps exactly the keys sent to
    // it, so the split is visible in their key counts.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes: Vec<Node> = dirs
        .iter()
        .map(|d| Node::start(d.path(), &["--sync", "never"]))
        .collect();
    let addrs = format!("{},{}", nodes[0].addr(), nodes[1].addr());
    let out = bench_into(
        dirs[0].path(),
        &[
            "--addr",
            &addrs,
            "--threads",
            "1",
            "--keys",
            "400",
            "--load",
            "--ops",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let held: Vec<u64> = nodes
        .iter()
        .map(|n| support::node_metric(n.addr(), "dynkv_engine_keys"))
        .collect();
    assert_eq!(held.iter().sum::<u64>(), 400, "every key loaded once: {held:?}");
    // The split is fixed by the keys' hashes; an even hash puts each
    // node near 200 (with one thread per node, as before, node 1 got none).
    assert!(held.iter().all(|&h| (120..=280).contains(&h)), "split {held:?}");
    for node in nodes {
        node.terminate();
    }
}

#[test]
fn pipelined_batches_account_for_every_operation_of_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--sync", "never"]);
    let addr = node.addr().to_string();
    // Read-modify-writes take a second round (the write, with the read's
    // context); reads, inserts and deletes share the first.
    for (mix, expect) in [
        (&["--workload", "F"][..], "read-modify-write"),
        (
            &[
                "--workload",
                "custom",
                "--read",
                "2",
                "--insert",
                "1",
                "--delete",
                "1",
                "--update",
                "1",
            ][..],
            "insert",
        ),
    ] {
        let mut args = vec![
            "--addr",
            &addr,
            "--keys",
            "500",
            "--load",
            "--ops",
            "3000",
            "--threads",
            "2",
            "--concurrency",
            "2",
            "--pipeline",
            "16",
        ];
        args.extend(mix);
        let out = bench_into(dir.path(), &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mix:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "{mix:?}: {stdout}");
        let report = read_report(dir.path());
        assert_eq!(report["operations"].as_u64(), Some(3000), "{mix:?}: {report}");
        assert_eq!(
            report["errors"].as_object().map(|e| e.len()),
            Some(0),
            "{mix:?}: {report}"
        );
        assert_eq!(report["settings"]["pipeline"].as_u64(), Some(16));
    }
    assert!(node.terminate().success());
}

#[test]
fn an_unreachable_node_and_bad_arguments_fail_fast_and_clearly() {
    let started = Instant::now();
    // Port 1 on loopback: nothing listens there.
    let out = bench(&[
        "--addr",
        "127.0.0.1:1",
        "--duration-s",
        "2",
        "--quiet",
        "--timeout-ms",
        "1000",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the cluster") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    for (args, expect) in [
        (&["--workload", "Q"][..], "unknown workload"),
        (&["--threads", "0"][..], "--threads 0"),
        (&["--value-size", "9..1"][..], "value size"),
        (&["--workload", "custom"][..], "mix is empty"),
        (&["--distribution", "pareto"][..], "unknown distribution"),
        (&["--pipeline", "0"][..], "--pipeline 0"),
        (&["--pipeline", "4", "--rate", "100"][..], "closed loop"),
        (&["--no-such-flag"][..], "unexpected argument"),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
