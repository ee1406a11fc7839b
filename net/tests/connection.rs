//! `Connection` against a scripted peer on loopback: answers matched by
//! request id whatever their order, timeouts that fire on time, late
//! answers that never reach a later request, and a closed peer that ends
//! every call in flight.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynkv_net::{decode, encode, ClientError, ClientOptions, Connection, Decoded, FrameLimits, Head, Opcode, Status};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::LocalExecutorBuilder;

/// Reads request frames until `count` have arrived; returns (id, key) of each.
async fn read_requests(stream: &mut TcpStream, buf: &mut Vec<u8>, count: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while out.len() < count {
        let mut consumed = 0;
        while let Ok(Decoded::Frame(frame, used)) = decode(&buf[consumed..], &FrameLimits::DEFAULT) {
            out.push((frame.header.request_id, frame.key.to_vec()));
            consumed += used;
        }
        buf.drain(..consumed);
        if out.len() >= count {
            break;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .expect("the client keeps its connection open");
        assert!(n > 0, "the client closed its connection early");
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

/// Answers a request with its own key as the value.
async fn answer(stream: &mut TcpStream, id: u64, key: &[u8]) {
    let mut wire = Vec::new();
    encode(
        &mut wire,
        &Head::response(Opcode::Get as u8, id, Status::Ok),
        &[],
        &[],
        key,
    );
    stream.write_all(&wire).await.unwrap();
}

fn run(test: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
    LocalExecutorBuilder::default()
        .spawn(move || async move { test().await })
        .unwrap()
        .join()
        .unwrap();
}

async fn pair() -> (Rc<Connection>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let accept = glommio::spawn_local(async move { listener.accept().await.unwrap() });
    let conn = Connection::open(addr, &ClientOptions::default()).await.unwrap();
    (conn, accept.await)
}

fn get(
    conn: &Rc<Connection>,
    key: &'static [u8],
    timeout: Duration,
) -> glommio::task::JoinHandle<(Result<Vec<u8>, ClientError>, Duration)> {
    let conn = conn.clone();
    glommio::spawn_local(async move {
        let started = Instant::now();
        let result = conn
            .call(Head::request(Opcode::Get, 0), key, &[], &[], timeout)
            .await
            .map(|r| r.value);
        (result, started.elapsed())
    })
    .detach()
}

#[test]
fn answers_in_any_order_reach_their_own_requests() {
    run(|| {
        Box::pin(async {
            let (conn, mut peer) = pair().await;
            let keys: [&'static [u8]; 4] = [b"a", b"b", b"c", b"d"];
            let calls: Vec<_> = keys.iter().map(|k| get(&conn, k, Duration::from_secs(5))).collect();
            let mut buf = Vec::new();
            let mut requests = read_requests(&mut peer, &mut buf, keys.len()).await;
            requests.reverse();
            for (id, key) in &requests {
                answer(&mut peer, *id, key).await;
            }
            for (call, key) in calls.into_iter().zip(keys) {
                let (result, _) = call.await.unwrap();
                assert_eq!(result.unwrap(), key, "each call gets the answer to its own request");
            }
        })
    });
}

#[test]
fn a_silent_peer_times_out_on_time_and_a_late_answer_reaches_no_one() {
    run(|| {
        Box::pin(async {
            let (conn, mut peer) = pair().await;
            let timeout = Duration::from_millis(200);
            // One call with a long timeout first, so the short one's
            // deadline is earlier than the one the reaper sleeps until.
            let long = get(&conn, b"long", Duration::from_secs(5));
            let short = get(&conn, b"short", timeout);
            let mut buf = Vec::new();
            let requests = read_requests(&mut peer, &mut buf, 2).await;
            let (result, waited) = short.await.unwrap();
            assert!(
                matches!(result, Err(ClientError::Timeout(t)) if t == timeout),
                "{result:?}"
            );
            assert!(
                waited >= timeout && waited < timeout + Duration::from_millis(500),
                "timed out after {waited:?}, not about {timeout:?}"
            );
            // The timed-out request's answer arrives late; the next request
            // (which may reuse its slot) must not take it.
            let next = get(&conn, b"next", Duration::from_secs(5));
            let (next_id, _) = read_requests(&mut peer, &mut buf, 1).await[0].clone();
            let (short_id, _) = requests.iter().find(|(_, k)| k == b"short").unwrap().clone();
            assert_ne!(next_id, short_id, "a reused slot has a new request id");
            answer(&mut peer, short_id, b"late").await;
            answer(&mut peer, next_id, b"next").await;
            assert_eq!(next.await.unwrap().0.unwrap(), b"next");
            let (long_id, _) = requests.iter().find(|(_, k)| k == b"long").unwrap().clone();
            answer(&mut peer, long_id, b"long").await;
            assert_eq!(long.await.unwrap().0.unwrap(), b"long");
        })
    });
}

#[test]
fn a_closed_peer_ends_every_call_in_flight() {
    run(|| {
        Box::pin(async {
            let (conn, mut peer) = pair().await;
            let calls: Vec<_> = (0..3).map(|_| get(&conn, b"k", Duration::from_secs(30))).collect();
            let mut buf = Vec::new();
            read_requests(&mut peer, &mut buf, 3).await;
            drop(peer);
            for call in calls {
                let (result, waited) = call.await.unwrap();
                assert!(matches!(result, Err(ClientError::Disconnected(_))), "{result:?}");
                assert!(
                    waited < Duration::from_secs(5),
                    "the close was noticed after {waited:?}"
                );
            }
            assert!(conn.is_closed());
            let (result, _) = get(&conn, b"k", Duration::from_secs(30)).await.unwrap();
            assert!(matches!(result, Err(ClientError::Disconnected(_))), "{result:?}");
        })
    });
}
