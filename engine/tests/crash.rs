//! Acknowledged writes survive SIGKILL at random moments.
//!
//! The test binary re-executes itself as a child (`crash_child`, gated by an
//! environment variable). The child writes with `sync=always` from several
//! tasks, each owning its keys, and reports on its stdout pipe `W key value`
//! before each write and `A key` after its acknowledgement (a delete's value
//! is `-`). The parent SIGKILLs it at a random moment, reopens the store,
//! and checks every key: it must hold its last acknowledged state, or the
//! one write that was in flight when the child died.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{run, small_config, Rng};
use dynkv_engine::Engine;

const CHILD_ENV: &str = "DYNKV_CRASH_CHILD_DIR";
const ROUNDS: u64 = 25;
const TASKS: u32 = 16;

/// Runs only inside the child process.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("DYNKV_CRASH_ROUND").unwrap().parse().unwrap();
    run(async move {
        let engine = Rc::new(Engine::open(small_config(dir.as_ref())).await.unwrap());
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let engine = engine.clone();
                glommio::spawn_local(async move {
                    let mut rng = Rng(round * 1000 + u64::from(t));
                    for n in 0u64.. {
                        let key = format!("t{t}-k{}", rng.below(40));
                        let delete = rng.below(8) == 0;
                        let value = format!("r{round}-t{t}-n{n}-").repeat(1 + rng.below(30) as usize);
                        let shown = if delete { "-" } else { value.as_str() };
                        report(&format!("@W {key} {shown}"));
                        if delete {
                            engine.delete(t, key.as_bytes(), b"").await.unwrap();
                        } else {
                            engine.put(t, key.as_bytes(), value.as_bytes()).await.unwrap();
                        }
                        report(&format!("@A {key}"));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
    });
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Per key: last acknowledged state and the write in flight, if any.
#[derive(Default, Clone)]
struct KeyState {
    acked: Option<Option<String>>,
    pending: Option<Option<String>>,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed = common::seed("acknowledged_writes_survive_sigkill");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut keys: HashMap<String, KeyState> = HashMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("DYNKV_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let kill_after = Duration::from_millis(30 + rng.below(300));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let started = Instant::now();
        let mut acks = 0u64;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let Ok(line) = line else { break };
            // libtest may prefix the first line with "test crash_child ... ".
            let Some(at) = line.find('@') else { continue };
            let mut parts = line[at..].splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("@W"), Some(key), Some(value)) => {
                    let value = (value != "-").then(|| value.to_string());
                    keys.entry(key.to_string()).or_default().pending = Some(value);
                }
                (Some("@A"), Some(key), None) => {
                    let state = keys.get_mut(key).expect("ack follows its write");
                    state.acked = state.pending.take();
                    acks += 1;
                }
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child ran away (seed {seed})"
            );
        }
        killer.join().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "child must die by SIGKILL, not exit (seed {seed}, round {round})"
        );
        eprintln!("round {round}: killed after {kill_after:?}, {acks} acknowledged writes");
        verify(dir.path(), &mut keys, seed, round);
    }
}

/// Reopens the store and checks every key against the model, then folds
/// whatever the store holds back into the model as acknowledged.
fn verify(dir: &std::path::Path, keys: &mut HashMap<String, KeyState>, seed: u64, round: u64) {
    let snapshot = keys.clone();
    let found: Vec<(String, Option<String>)> = run(async move {
        let engine = Engine::open(small_config(dir)).await.unwrap();
        let mut found = Vec::new();
        for (key, state) in &snapshot {
            let t: u32 = key[1..key.find('-').unwrap()].parse().unwrap();
            let got = engine.get(t, key.as_bytes()).await.unwrap();
            let got = got.and_then(|r| (!r.tombstone).then(|| String::from_utf8(r.value.to_vec()).unwrap()));
            let ok_acked = state.acked.as_ref().map_or(got.is_none(), |a| *a == got);
            let ok_pending = state.pending.as_ref().is_some_and(|p| *p == got);
            assert!(
                ok_acked || ok_pending,
                "seed {seed} round {round} key {key}: store has {got:?}, acknowledged {:?}, in flight {:?}",
                state.acked,
                state.pending
            );
            found.push((key.clone(), got));
        }
        engine.close().await.unwrap();
        found
    });
    for (key, got) in found {
        let state = keys.get_mut(&key).unwrap();
        state.acked = Some(got);
        state.pending = None;
    }
}
