//! `dynkv serve` as a real process on loopback: client operations,
//! pipelining, restart, graceful SIGTERM, RESP through redis-cli, and
//! hostile input. Every process a test starts is stopped by PID.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use dynkv_net::{
    decode, encode, CallOptions, Client, ClientError, ClientOptions, Decoded, FrameLimits, Head, Opcode, Pipeline,
    Status,
};

mod support;

use support::{client_options, run, Node, SHARDS};

#[test]
fn put_get_delete_through_the_client_and_data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        assert_eq!(client.shard_addresses().len(), SHARDS as usize);
        let writes = (0..500u32).map(|i| {
            let client = &client;
            async move {
                client
                    .put(format!("key-{i}").as_bytes(), format!("value-{i}").as_bytes(), None)
                    .await
            }
        });
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
        let got = client.get(b"key-7").await.unwrap();
        assert_eq!(got.values, vec![b"value-7".to_vec()]);
        client.delete(b"key-7", &got.context).await.unwrap();
        assert!(
            client.get(b"key-7").await.unwrap().values.is_empty(),
            "deleted key is gone"
        );
        assert!(client.get(b"never-written").await.unwrap().values.is_empty());
        let err = client.put(&[b'k'; 2000], b"v", None).await.unwrap_err();
        assert!(
            matches!(
                err,
                dynkv_net::ClientError::Server {
                    status: Status::KeyTooLarge,
                    ..
                }
            ),
            "{err}"
        );
        assert!(client.stats().await.unwrap().contains("dynkv_requests_total"));
    });
    assert!(node.terminate().success(), "SIGTERM exits 0");
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        for i in (0..500u32).filter(|&i| i != 7) {
            let got = client.get(format!("key-{i}").as_bytes()).await.unwrap();
            assert_eq!(
                got.values,
                vec![format!("value-{i}").into_bytes()],
                "key-{i} after restart"
            );
        }
        assert!(
            client.get(b"key-7").await.unwrap().values.is_empty(),
            "deleted key stays deleted"
        );
    });
    assert!(node.terminate().success());
}

/// Reads exactly `count` response frames from a raw socket.
#[test]
fn a_pipeline_answers_each_request_in_order_across_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    run(async move {
        // 16 in flight per connection: 200 puts over 2 shards take rounds.
        let options = ClientOptions {
            inflight_max: 16,
            ..client_options()
        };
        let client = Client::connect(addr, options).await.unwrap();
        let call = CallOptions::default();
        let overwrite = CallOptions {
            overwrite: true,
            ..call
        };
        let mut pipeline = Pipeline::new();
        for i in 0..200u32 {
            pipeline.put(
                format!("key-{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
                None,
                &call,
            );
        }
        pipeline.put(&[b'k'; 2000], b"v", None, &call);
        pipeline.delete(b"key-0", &[], &overwrite);
        pipeline.get(b"key-0", &call);
        pipeline.get(b"key-1", &call);
        let results = client.pipeline(&mut pipeline).await;
        assert!(pipeline.is_empty(), "sending empties the pipeline");
        assert_eq!(results.len(), 204);
        for (i, result) in results[..200].iter().enumerate() {
            assert!(result.is_ok(), "put {i}: {result:?}");
        }
        assert!(
            matches!(
                results[200],
                Err(ClientError::Server {
                    status: Status::KeyTooLarge,
                    ..
                })
            ),
            "the oversized key fails alone: {:?}",
            results[200]
        );
        assert!(results[201].is_ok());
        let [_, _, deleted, kept] = &results[200..] else {
            unreachable!()
        };
        assert!(
            deleted.as_ref().unwrap().values().unwrap().is_empty(),
            "the get after the delete sees it"
        );
        assert_eq!(kept.as_ref().unwrap().values().unwrap(), vec![&b"value-1"[..]]);

        for i in 0..200u32 {
            pipeline.get(format!("key-{i}").as_bytes(), &call);
        }
        let results = client.pipeline(&mut pipeline).await;
        for (i, result) in results.into_iter().enumerate() {
            let got = result.unwrap().into_get_result().unwrap();
            let expected: Vec<Vec<u8>> = if i == 0 {
                vec![]
            } else {
                vec![format!("value-{i}").into_bytes()]
            };
            assert_eq!(got.values, expected, "key-{i}");
            assert!(!got.context.is_empty(), "a read carries a context");
        }
        assert!(
            client.pipeline(&mut pipeline).await.is_empty(),
            "an empty pipeline sends nothing"
        );
    });
    assert!(node.terminate().success());
}

fn read_frames(stream: &mut TcpStream, count: usize) -> Vec<(u64, u8)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut out = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while out.len() < count {
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other.expect("response before timeout"),
        };
        assert!(n > 0, "server closed the connection early");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Decoded::Frame(frame, used)) = decode(&buf, &FrameLimits::DEFAULT) {
            out.push((frame.header.request_id, frame.header.status));
            buf.drain(..used);
        }
    }
    out
}

#[test]
fn pipelined_responses_come_back_in_completion_order_matched_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut stream = TcpStream::connect(node.addr()).unwrap();
    // A synced put (waits for fdatasync) then pings (answer at once), in
    // one write.
    let mut wire = Vec::new();
    encode(&mut wire, &Head::request(Opcode::Put, 1), b"slow-key", b"", &[7u8; 100]);
    for id in 2..=20 {
        encode(&mut wire, &Head::request(Opcode::Ping, id), b"", b"", b"");
    }
    stream.write_all(&wire).unwrap();
    let responses = read_frames(&mut stream, 20);
    let mut ids: Vec<u64> = responses.iter().map(|r| r.0).collect();
    assert_ne!(ids[0], 1, "the slow put must not hold back the pings: {ids:?}");
    ids.sort_unstable();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "every request answered once");
    assert!(responses.iter().all(|r| r.1 == Status::Ok as u8));
    assert!(node.terminate().success());
}

#[test]
fn hostile_input_closes_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        client.put(b"precious", b"data", None).await.unwrap();
    });
    let expect_closed = |mut stream: TcpStream, what: &str| {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => panic!("{what}: expected the server to close, got {other:?}"),
            }
        }
    };
    // Garbage bytes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x5a; 200]).unwrap();
    expect_closed(s, "garbage");
    // A valid-looking header with the wrong magic (an HTTP request).
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\0\0\0\0\0\0\0\0\0\0\0")
        .unwrap();
    expect_closed(s, "wrong magic");
    // A length beyond the limit, announced in a correct header.
    let mut wire = Vec::new();
    encode(
        &mut wire,
        &Head::request(Opcode::Put, 1),
        b"k",
        b"",
        &vec![0u8; 3 << 20],
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&wire[..64]).unwrap();
    expect_closed(s, "oversized value");
    // Half a frame, then the socket closes.
    let mut wire = Vec::new();
    encode(&mut wire, &Head::request(Opcode::Put, 1), b"half", b"", &[1u8; 500]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&wire[..wire.len() / 2]).unwrap();
    drop(s);
    // An unknown opcode is answered, not dropped.
    let mut wire = Vec::new();
    encode(
        &mut wire,
        &Head {
            opcode: 0x3f,
            request_id: 9,
            ..Head::default()
        },
        b"",
        b"",
        b"",
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&wire).unwrap();
    assert_eq!(read_frames(&mut s, 1), vec![(9, Status::UnknownOpcode as u8)]);
    // 10,000 connections opened and dropped.
    for _ in 0..10_000 {
        drop(TcpStream::connect(addr).unwrap());
    }
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        assert_eq!(
            client.get(b"precious").await.unwrap().values,
            vec![b"data".to_vec()],
            "stored data intact"
        );
        assert!(
            client.get(b"half").await.unwrap().values.is_empty(),
            "a half frame writes nothing"
        );
        client.put(b"after", b"abuse", None).await.unwrap();
    });
    assert!(node.terminate().success(), "still exits cleanly after abuse");
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[test]
fn redis_cli_speaks_to_the_resp_port() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        // CI installs redis-tools; a developer without it sees why.
        eprintln!(
            "SKIPPED redis_cli_speaks_to_the_resp_port: redis-cli is not installed (apt-get install redis-tools)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let port = node.ports.resp;
    let cli = |args: &[&str]| redis_cli(port, args).expect("redis-cli runs");
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello world");
    assert_eq!(cli(&["EXISTS", "greeting", "nope"]), "1");
    assert_eq!(cli(&["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(&["MGET", "a", "b", "zz"]), "1\n2");
    assert_eq!(cli(&["DEL", "a", "zz"]), "1");
    assert_eq!(cli(&["GET", "a"]), "");
    assert_eq!(cli(&["ECHO", "hi"]), "hi");
    assert_eq!(cli(&["SELECT", "0"]), "OK");
    assert!(
        cli(&["FLUSHALL"]).contains("unknown command"),
        "unknown commands get an error, not a drop"
    );
    assert!(cli(&["SET", "k"]).contains("wrong number of arguments"));
    assert!(cli(&["INFO"]).contains("redis_version"));
    // A key written over RESP is visible to the native client.
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        assert_eq!(
            client.get(b"greeting").await.unwrap().values,
            vec![b"hello world".to_vec()]
        );
    });
    assert!(node.terminate().success());
}

#[test]
fn nothing_pipelined_after_quit_runs() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let cmd = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    // Keys on both shards, before and after the QUIT.
    let before: Vec<String> = (0..8).map(|i| format!("before-quit-{i}")).collect();
    let after: Vec<String> = (0..8).map(|i| format!("after-quit-{i}")).collect();
    let mut batch: Vec<Vec<String>> = before.iter().map(|k| cmd(&["SET", k, "v"])).collect();
    batch.push(cmd(&["QUIT"]));
    batch.extend(after.iter().map(|k| cmd(&["SET", k, "v"])));
    let mut stream = TcpStream::connect(("127.0.0.1", node.ports.resp)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&resp_commands(&batch)).unwrap();
    let mut replies = Vec::new();
    stream.read_to_end(&mut replies).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&replies),
        "+OK\r\n".repeat(before.len() + 1),
        "every SET before QUIT and QUIT answered, then the connection closed"
    );
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        for key in &before {
            assert_eq!(
                client.get(key.as_bytes()).await.unwrap().values,
                vec![b"v".to_vec()],
                "{key}"
            );
        }
        for key in &after {
            assert!(
                client.get(key.as_bytes()).await.unwrap().values.is_empty(),
                "{key} ran after QUIT"
            );
        }
    });
    assert!(node.terminate().success());
}

/// RESP commands as one array each, concatenated.
fn resp_commands(commands: &[Vec<String>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for args in commands {
        wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            wire.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
    }
    wire
}

/// Reads from `stream` until `expected.len()` bytes have come.
fn read_exactly(stream: &mut TcpStream, expected: &[u8]) -> Vec<u8> {
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got).expect("the whole reply arrives");
    got
}

#[test]
fn pipelined_reads_see_the_writes_sent_before_them_on_both_protocols() {
    // Under sync=always a write waits for its sync; under an interval the
    // server may also do it at once, without a future.
    for sync in ["always", "interval_ms=1000"] {
        pipelined_reads_see_earlier_writes(sync);
    }
}

fn pipelined_reads_see_earlier_writes(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--sync", sync]);
    let cmd = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    // Keys on every shard (so some GETs are forwarded), written first so
    // that their values are in memory and reads of them can be answered
    // before the batch's writes run.
    let keys: Vec<String> = (0..40).map(|i| format!("pipe-{i}")).collect();
    let mut stream = TcpStream::connect(("127.0.0.1", node.ports.resp)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let first: Vec<_> = keys.iter().map(|k| cmd(&["SET", k, "old"])).collect();
    stream.write_all(&resp_commands(&first)).unwrap();
    read_exactly(&mut stream, &b"+OK\r\n".repeat(keys.len()));
    // One write, so the server reads it as one batch: per key, a read of
    // the old value, then write, read, delete, read.
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for key in &keys {
        batch.extend([
            cmd(&["GET", key]),
            cmd(&["SET", key, "new"]),
            cmd(&["GET", key]),
            cmd(&["DEL", key]),
            cmd(&["GET", key]),
        ]);
        expected.extend_from_slice(b"$3\r\nold\r\n+OK\r\n$3\r\nnew\r\n:1\r\n$-1\r\n");
    }
    stream.write_all(&resp_commands(&batch)).unwrap();
    let got = read_exactly(&mut stream, &expected);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected),
        "sync={sync}"
    );
    // The native protocol: a put and a get of one key sent together.
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        let overwrite = dynkv_net::CallOptions {
            overwrite: true,
            ..Default::default()
        };
        for key in &keys {
            client.put(key.as_bytes(), b"v1", None).await.unwrap();
        }
        let rounds = keys.iter().map(|key| {
            let (client, overwrite) = (&client, &overwrite);
            async move {
                // Polled in this order, so both frames go out in one write.
                let (put, got) = futures::join!(
                    client.put_with(key.as_bytes(), b"v2", None, overwrite),
                    client.get(key.as_bytes())
                );
                put.unwrap();
                (key, got.unwrap().values)
            }
        });
        for (key, values) in futures::future::join_all(rounds).await {
            assert_eq!(
                values,
                vec![b"v2".to_vec()],
                "sync={sync}, {key}: the get sent after the put saw it"
            );
        }
    });
    assert!(node.terminate().success());
}

/// Sends pipelines of `batch` RESP SETs until the connection fails (or
/// `rounds` pass); returns the keys whose `+OK` arrived.
fn resp_sets_until_cut(port: u16, rounds: u32, batch: u32) -> Vec<String> {
    let mut acked = Vec::new();
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return acked;
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for round in 0..rounds {
        let keys: Vec<String> = (0..batch).map(|i| format!("resp-{round}-{i}")).collect();
        let commands: Vec<Vec<String>> = keys.iter().map(|k| vec!["SET".into(), k.clone(), k.clone()]).collect();
        if stream.write_all(&resp_commands(&commands)).is_err() {
            return acked;
        }
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < keys.len() * 5 {
            match stream.read(&mut chunk) {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        // Each reply is "+OK\r\n"; any other reply ends the count there.
        let oks = got.chunks_exact(5).take_while(|reply| *reply == b"+OK\r\n").count();
        acked.extend(keys.into_iter().take(oks));
        if oks < batch as usize {
            return acked;
        }
    }
    acked
}

#[test]
fn sigkill_under_pipelined_writes_keeps_every_acknowledged_one_under_sync_always() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--sync", "always"]);
    let (addr, resp_port, pid) = (node.addr(), node.ports.resp, node.pid());
    let resp = std::thread::spawn(move || resp_sets_until_cut(resp_port, 5_000, 32));
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: signalling the node we started, by PID.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    // Native: pipelines of overwrites (answered at once, once durable).
    let native = run(async move {
        let mut acked = Vec::new();
        let Ok(client) = Client::connect(addr, client_options()).await else {
            return acked;
        };
        let overwrite = CallOptions {
            overwrite: true,
            ..CallOptions::default()
        };
        let mut pipeline = Pipeline::new();
        for round in 0..5_000u32 {
            let keys: Vec<String> = (0..64).map(|i| format!("native-{round}-{i}")).collect();
            for key in &keys {
                pipeline.put(key.as_bytes(), key.as_bytes(), None, &overwrite);
            }
            let results = client.pipeline(&mut pipeline).await;
            let all_ok = results.iter().all(Result::is_ok);
            acked.extend(keys.into_iter().zip(results).filter(|(_, r)| r.is_ok()).map(|(k, _)| k));
            if !all_ok {
                break;
            }
        }
        acked
    });
    killer.join().unwrap();
    let resp = resp.join().unwrap();
    let status = node.wait_exit();
    assert!(!status.success(), "the node was killed");
    assert!(
        !resp.is_empty() && !native.is_empty(),
        "writes were acknowledged before the kill"
    );
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        let keys: Vec<&String> = resp.iter().chain(&native).collect();
        let mut pipeline = Pipeline::new();
        for chunk in keys.chunks(512) {
            for key in chunk {
                pipeline.get(key.as_bytes(), &CallOptions::default());
            }
            for (key, got) in chunk.iter().zip(client.pipeline(&mut pipeline).await) {
                let values = got.unwrap().into_get_result().unwrap().values;
                assert_eq!(values, vec![key.as_bytes().to_vec()], "acknowledged {key} lost");
            }
        }
    });
    assert!(node.terminate().success());
}

#[test]
fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    let pid = node.pid();
    let acked = run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        let acked = std::cell::RefCell::new(Vec::new());
        let writers = (0..32u32).map(|w| {
            let (client, acked) = (&client, &acked);
            async move {
                for i in 0..200u32 {
                    let key = format!("w{w}-{i}");
                    if w == 0 && i == 50 {
                        // SAFETY: signalling the node we started, by PID.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                    match client.put(key.as_bytes(), key.as_bytes(), None).await {
                        Ok(()) => acked.borrow_mut().push(key),
                        Err(_) => return,
                    }
                }
            }
        });
        futures::future::join_all(writers).await;
        acked.into_inner()
    });
    let status = node.wait_exit();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    assert!(!acked.is_empty());
    let node = Node::start(dir.path(), &[]);
    let addr = node.addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        for key in &acked {
            let got = client.get(key.as_bytes()).await.unwrap();
            assert_eq!(got.values, vec![key.clone().into_bytes()], "acknowledged {key} lost");
        }
    });
    assert!(node.terminate().success());
}
