//! The Redis protocol (RESP2) listener, enough for redis-cli, redis-benchmark
//! and common client libraries.
//!
//! Commands pipelined in one read run concurrently and are answered in
//! order. Values are stored as given; when replication produces siblings,
//! RESP resolves them by the rule documented in README ("RESP and
//! siblings"). Only database 0 exists.

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use dynkv_engine::Staged;

use crate::server::batch::{join_in_order, join_in_waves, Access, KeyConflicts};
use crate::server::recv::RecvBuf;
use crate::server::shard::{Op, Outcome, RequestOptions, RespBatch, RespReplies, Shard, ShardMsg};

/// Arguments in one command (MSET/MGET/DEL with many keys).
const ARGS_MAX: usize = 64 * 1024;
/// Commands executed concurrently from one connection's buffer.
const PIPELINE_BATCH_MAX: usize = 1024;

enum Parsed<'a> {
    Command(Vec<&'a [u8]>, usize),
    Incomplete,
    /// A protocol error: answered, then the connection is closed (as Redis
    /// does), since the stream cannot be trusted past it.
    Error(String),
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn parse_int(bytes: &[u8]) -> Option<i64> {
    // By hand: through `str::parse` it was 2% of a shard's CPU under
    // pipelined GETs (every array and bulk length goes through here).
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

/// Parses one command from the front of `buf`.
fn parse(buf: &[u8], bulk_max: usize) -> Parsed<'_> {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf[0] != b'*' {
        // Inline command (telnet, `redis-cli` in some modes).
        let Some((text, used)) = line(buf) else {
            return if buf.len() > bulk_max {
                Parsed::Error("inline command too long".into())
            } else {
                Parsed::Incomplete
            };
        };
        let args: Vec<&[u8]> = text.split(|&b| b == b' ').filter(|a| !a.is_empty()).collect();
        return Parsed::Command(args, used);
    }
    let Some((head, mut pos)) = line(buf) else {
        return Parsed::Incomplete;
    };
    let count = match parse_int(&head[1..]) {
        Some(n) if (0..=ARGS_MAX as i64).contains(&n) => n as usize,
        _ => return Parsed::Error("invalid multibulk length".into()),
    };
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let Some((head, used)) = line(&buf[pos..]) else {
            return Parsed::Incomplete;
        };
        if head.first() != Some(&b'$') {
            return Parsed::Error(format!(
                "expected '$', got '{}'",
                head.first().map_or('?', |&b| b as char)
            ));
        }
        let len = match parse_int(&head[1..]) {
            Some(n) if (0..=bulk_max as i64).contains(&n) => n as usize,
            _ => return Parsed::Error("invalid bulk length".into()),
        };
        pos += used;
        if buf.len() < pos + len + 2 {
            return Parsed::Incomplete;
        }
        if &buf[pos + len..pos + len + 2] != b"\r\n" {
            return Parsed::Error("bulk string not terminated by CRLF".into());
        }
        args.push(&buf[pos..pos + len]);
        pos += len + 2;
    }
    Parsed::Command(args, pos)
}

fn bulk(out: &mut Vec<u8>, value: &[u8]) {
    // Written in place: `format!` allocated a string per reply.
    let _ = write!(out, "${}\r\n", value.len());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn error(out: &mut Vec<u8>, message: &str) {
    // RESP errors are one line.
    out.extend_from_slice(b"-");
    out.extend_from_slice(message.replace(['\r', '\n'], " ").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn failure(out: &mut Vec<u8>, outcome: &Outcome) -> bool {
    if let Outcome::Failed(status, message) = outcome {
        error(out, &format!("ERR {status:?}: {message}"));
        return true;
    }
    false
}

fn info_text(shard: &Shard) -> String {
    let stats = shard.engine.stats();
    format!(
        "# Server\r\nredis_version:7.0.0\r\ndynkv_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\n\
         tcp_port:{}\r\n# Keyspace\r\ndb0:keys={},expires=0\r\n# dynkv\r\nshard:{}\r\nshards:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        shard.config.resp_port,
        stats.keys,
        shard.id,
        shard.config.shards,
    )
}

/// RESP reads and writes: writes supersede what the coordinator holds, as
/// Redis clients expect of SET and DEL.
const RESP_WRITE: RequestOptions = RequestOptions {
    quorum: 0,
    primary_quorum: 0,
    timeout_ms: 0,
    supersede_local: true,
    hint_for: None,
    from_peer: false,
    as_fallback: false,
};

/// A key's value as Redis clients see it: siblings reduced by the
/// last-writer-wins rule ([`Clock::last_writer`]).
enum Read {
    /// The key's object; its value is the last writer's (absent if that
    /// is a tombstone). Kept whole so that replies borrow the value
    /// instead of copying it.
    Object(dynkv::version::Clock),
    Failed(Outcome),
}

impl From<Outcome> for Read {
    fn from(outcome: Outcome) -> Read {
        match outcome {
            Outcome::Object(clock) => Read::Object(clock),
            other => Read::Failed(other),
        }
    }
}

impl Read {
    fn value(&self) -> Option<&[u8]> {
        match self {
            Read::Object(clock) => clock.last_writer().and_then(|s| s.value.as_deref()),
            Read::Failed(_) => None,
        }
    }
}

/// Where a pipelined command's reply is: answered at once, in the batch's
/// buffer; coming from the commands run later, in order; or from the batch
/// sent to another shard (which shard, and which of its commands).
enum Reply {
    Now(std::ops::Range<usize>),
    Later,
    Away(usize, usize),
}

/// GET's reply.
fn reply_get(out: &mut Vec<u8>, read: Read) {
    match read {
        Read::Failed(other) => {
            failure(out, &other);
        }
        found => match found.value() {
            Some(value) => bulk(out, value),
            None => out.extend_from_slice(b"$-1\r\n"),
        },
    }
}

/// How `args` touches keys, and which of its arguments are keys.
fn access<'c>(args: &'c [&'c [u8]]) -> (Access, impl Iterator<Item = &'c [u8]> + Clone + 'c) {
    let name = args.first().copied().unwrap_or_default();
    let is = |command: &[u8]| name.eq_ignore_ascii_case(command);
    let rest = args.get(1..).unwrap_or_default();
    let (access, step, keys) = if is(b"GET") || is(b"MGET") || is(b"EXISTS") {
        (Access::Read, 1, rest)
    } else if is(b"SET") {
        (Access::Write, 1, &rest[..rest.len().min(1)])
    } else if is(b"MSET") {
        (Access::Write, 2, rest)
    } else if is(b"DEL") {
        (Access::Write, 1, rest)
    } else {
        (Access::None, 1, &rest[..0])
    };
    (access, keys.iter().step_by(step).copied())
}

/// Does a SET at once, replying into `out`, if the shard can without
/// waiting (see `Shard::write_now`; under `sync=always` the reply waits for
/// `durable`); false if it must take the usual path.
fn set_now(shard: &Shard, args: &[&[u8]], out: &mut Vec<u8>, durable: &mut Option<Staged>) -> bool {
    if args.len() != 3 || !args[0].eq_ignore_ascii_case(b"SET") {
        return false;
    }
    match shard.write_now(Op::Put, args[1], (&[], args[2]), &RESP_WRITE, durable) {
        Some(outcome) => {
            if !failure(out, &outcome) {
                out.extend_from_slice(b"+OK\r\n");
            }
            true
        }
        None => false,
    }
}

/// Answers a GET into `out` if the shard can without waiting (see
/// `Shard::get_now`); false if the command must take the usual path.
fn get_now(shard: &Shard, args: &[&[u8]], out: &mut Vec<u8>) -> bool {
    if args.len() != 2 || !args[0].eq_ignore_ascii_case(b"GET") {
        return false;
    }
    // In place if the object is cached; else decoded, if memory has it.
    let peeked = shard.peek_now(args[1], |view| {
        match view.and_then(|v| v.last_writer()).and_then(|s| s.value) {
            Some(value) => bulk(out, value),
            None => out.extend_from_slice(b"$-1\r\n"),
        }
    });
    match peeked {
        Some(Ok(())) => return true,
        Some(Err(outcome)) => {
            failure(out, &outcome);
            return true;
        }
        None => {}
    }
    match shard.get_now(args[1]) {
        Some(outcome) => {
            reply_get(out, Read::from(outcome));
            true
        }
        None => false,
    }
}

/// Runs pipelined commands, concurrently where that cannot change what
/// they do (see `join_in_waves`), as Redis runs a connection's commands
/// in order. Replies (and whether to stay open) come in command order.
async fn run_in_order(shard: &Rc<Shard>, commands: &[&Vec<&[u8]>]) -> Vec<(Vec<u8>, bool)> {
    join_in_waves(
        commands,
        |args| access(args),
        |args| async move {
            let mut out = Vec::new();
            let keep_open = execute(shard, args, &mut out).await;
            (out, keep_open)
        },
    )
    .await
}

async fn read(shard: &Rc<Shard>, key: &[u8]) -> Read {
    Read::from(shard.execute(Op::Get, key, &[], &[], RequestOptions::default()).await)
}

/// The command name in upper case, without allocating for the names RESP
/// clients send (all are short).
fn command_name<'a>(raw: &[u8], buf: &'a mut [u8; 16]) -> std::borrow::Cow<'a, str> {
    if let Some(upper) = buf.get_mut(..raw.len()) {
        upper.copy_from_slice(raw);
        upper.make_ascii_uppercase();
        if let Ok(name) = std::str::from_utf8(upper) {
            return std::borrow::Cow::Borrowed(name);
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(raw).to_ascii_uppercase())
}

/// Executes one command, appending its reply to `out`. Returns false if the
/// connection should close after the reply (QUIT).
async fn execute(shard: &Rc<Shard>, args: &[&[u8]], out: &mut Vec<u8>) -> bool {
    let Some(name) = args.first() else {
        return true;
    };
    let mut upper = [0u8; 16];
    let name = command_name(name, &mut upper);
    let arity = |n: usize| args.len() == n;
    match &*name {
        "PING" if args.len() <= 2 => match args.get(1) {
            Some(message) => bulk(out, message),
            None => out.extend_from_slice(b"+PONG\r\n"),
        },
        "ECHO" if arity(2) => bulk(out, args[1]),
        "GET" if arity(2) => reply_get(out, read(shard, args[1]).await),
        "SET" if arity(3) => {
            let outcome = shard.execute(Op::Put, args[1], &[], args[2], RESP_WRITE).await;
            if !failure(out, &outcome) {
                out.extend_from_slice(b"+OK\r\n");
            }
        }
        "SET" if args.len() > 3 => error(out, "ERR syntax error (dynkv supports SET key value without options)"),
        "MSET" if args.len() >= 3 && args.len() % 2 == 1 => {
            let writes = args[1..]
                .chunks(2)
                .map(|kv| shard.execute(Op::Put, kv[0], &[], kv[1], RESP_WRITE));
            let outcomes = join_in_order(writes).await;
            match outcomes.iter().find(|o| matches!(o, Outcome::Failed(..))) {
                Some(failed) => {
                    failure(out, failed);
                }
                None => out.extend_from_slice(b"+OK\r\n"),
            }
        }
        "MGET" if args.len() >= 2 => {
            let reads = args[1..].iter().map(|k| read(shard, k));
            let outcomes = join_in_order(reads).await;
            out.extend_from_slice(format!("*{}\r\n", outcomes.len()).as_bytes());
            for outcome in &outcomes {
                match outcome.value() {
                    Some(value) => bulk(out, value),
                    None => out.extend_from_slice(b"$-1\r\n"),
                }
            }
        }
        "DEL" | "EXISTS" if args.len() >= 2 => {
            let mut count = 0;
            for key in &args[1..] {
                if read(shard, key).await.value().is_some() {
                    count += 1;
                    if name == "DEL" {
                        let outcome = shard.execute(Op::Delete, key, &[], &[], RESP_WRITE).await;
                        if failure(out, &outcome) {
                            return true;
                        }
                    }
                }
            }
            out.extend_from_slice(format!(":{count}\r\n").as_bytes());
        }
        "INFO" => bulk(out, info_text(shard).as_bytes()),
        "COMMAND" => out.extend_from_slice(b"*0\r\n"),
        "CONFIG" if args.len() == 3 && args[1].eq_ignore_ascii_case(b"GET") => {
            let key = String::from_utf8_lossy(args[2]).to_ascii_lowercase();
            let value = match key.as_str() {
                "save" => Some(String::new()),
                "appendonly" => Some("no".into()),
                "databases" => Some("1".into()),
                "maxmemory" => Some("0".into()),
                _ => None,
            };
            match value {
                Some(v) => {
                    out.extend_from_slice(b"*2\r\n");
                    bulk(out, key.as_bytes());
                    bulk(out, v.as_bytes());
                }
                None => out.extend_from_slice(b"*0\r\n"),
            }
        }
        "SELECT" if arity(2) => {
            if args[1] == b"0" {
                out.extend_from_slice(b"+OK\r\n");
            } else {
                error(out, "ERR DB index is out of range (dynkv has database 0 only)");
            }
        }
        "QUIT" => {
            out.extend_from_slice(b"+OK\r\n");
            return false;
        }
        "PING" | "ECHO" | "GET" | "SET" | "MSET" | "MGET" | "DEL" | "EXISTS" | "SELECT" | "CONFIG" => error(
            out,
            &format!(
                "ERR wrong number of arguments for '{}' command",
                name.to_ascii_lowercase()
            ),
        ),
        _ => {
            let first = args
                .get(1)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_default();
            error(
                out,
                &format!("ERR unknown command '{name}', with args beginning with: '{first}'"),
            );
        }
    }
    true
}

/// A batch's commands another shard alone holds the keys of, on their way
/// to it.
#[derive(Default)]
struct Away {
    commands: Vec<u8>,
    count: usize,
}

/// A batch's replies, back to back, with where each command's ends.
struct Answered {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// False after QUIT: the connection closes after these replies.
    keep_open: bool,
}

/// The shard of this node that alone holds the key of a GET or SET, if
/// that is not this one: the command can be sent there with others.
fn away_owner(shard: &Shard, args: &[&[u8]]) -> Option<usize> {
    let single_key = match args.first() {
        Some(name) if args.len() == 2 => name.eq_ignore_ascii_case(b"GET"),
        Some(name) if args.len() == 3 => name.eq_ignore_ascii_case(b"SET"),
        _ => false,
    };
    if !single_key {
        return None;
    }
    let (_, owner) = shard.sole_local_replica(args[1])?;
    (owner != shard.id).then_some(owner)
}

/// Answers a batch of pipelined commands (each with its RESP bytes) as
/// Redis answers a connection's commands, in order:
/// - GETs and SETs this shard can finish without waiting are done now,
///   without a future each;
/// - with `forward`, GETs and SETs of keys another shard of this node
///   alone holds go to that shard as one batch per shard, which it answers
///   the same way, instead of one message, channel and future each;
/// - the rest run in waves (`join_in_waves`).
///
/// None may overtake a command before it that runs later and touches its
/// key: such a command runs later too, and commands run later wait for the
/// batches sent away if one of those touches their keys.
async fn answer_batch(shard: &Rc<Shard>, commands: &[(Vec<&[u8]>, &[u8])], forward: bool) -> Answered {
    if commands.len() > 1 {
        // The key of GET, SET, DEL and the rest (see Shard::prefetch).
        for (args, _) in commands {
            if let Some(key) = args.get(1) {
                shard.prefetch(key);
            }
        }
    }
    let started = Instant::now();
    let mut now = Vec::new();
    // SETs answered at once under `sync=always`: their replies wait for
    // this before they leave.
    let mut durable = None;
    let mut answered_now = 0;
    let mut order = Vec::with_capacity(commands.len());
    let mut later = Vec::new();
    let mut touched_later = KeyConflicts::default();
    let mut away: Vec<Away> = Vec::new();
    // What the commands sent away touch, made into a `KeyConflicts` only
    // if a command runs later (most batches run nothing later).
    let mut away_touches: Vec<(Access, &[u8])> = Vec::new();
    let mut touched_away: Option<KeyConflicts> = None;
    let mut later_waits_for_away = false;
    for (args, raw) in commands {
        if args.first().is_some_and(|name| name.eq_ignore_ascii_case(b"QUIT")) {
            // As in Redis, nothing after QUIT runs: the connection closes
            // once it is answered.
            later.push(args);
            order.push(Reply::Later);
            break;
        }
        let begin = now.len();
        let (access, keys) = access(args);
        let free = !touched_later.conflicts(access, keys.clone());
        if free && (get_now(shard, args, &mut now) || set_now(shard, args, &mut now, &mut durable)) {
            order.push(Reply::Now(begin..now.len()));
            answered_now += 1;
            continue;
        }
        if let Some(owner) = away_owner(shard, args).filter(|_| free && forward) {
            if away.len() <= owner {
                away.resize_with(owner + 1, Away::default);
            }
            let batch = &mut away[owner];
            batch.commands.extend_from_slice(raw);
            order.push(Reply::Away(owner, batch.count));
            batch.count += 1;
            match touched_away.as_mut() {
                Some(touched) => touched.note(access, std::iter::once(args[1])),
                None => away_touches.push((access, args[1])),
            }
            continue;
        }
        let touched_away = touched_away.get_or_insert_with(|| {
            let mut touched = KeyConflicts::default();
            for &(access, key) in &away_touches {
                touched.note(access, std::iter::once(key));
            }
            touched
        });
        later_waits_for_away |= touched_away.conflicts(access, keys.clone());
        touched_later.note(access, keys);
        later.push(args);
        order.push(Reply::Later);
    }
    let mut sent = Vec::new();
    for (owner, batch) in away.into_iter().enumerate().filter(|(_, b)| b.count > 0) {
        let forwarded = &shard.counters.forwarded;
        forwarded.set(forwarded.get() + batch.count as u64);
        let (reply, answer) = futures::channel::oneshot::channel();
        let msg = ShardMsg::Resp(RespBatch {
            commands: batch.commands,
            count: batch.count,
            reply,
        });
        // A shard that is gone drops the message, and with it `reply`.
        let _ = shard.senders.send_to(owner, msg).await;
        sent.push((owner, answer));
    }
    let away_replies = async {
        let mut replies: Vec<Option<RespReplies>> = Vec::new();
        for (owner, answer) in sent {
            if replies.len() <= owner {
                replies.resize_with(owner + 1, || None);
            }
            replies[owner] = answer.await.ok();
        }
        replies
    };
    let (replies, away_replies) = if later_waits_for_away {
        let away_replies = away_replies.await;
        (run_in_order(shard, &later).await, away_replies)
    } else {
        futures::future::join(run_in_order(shard, &later), away_replies).await
    };
    let mut answered = Answered {
        bytes: Vec::new(),
        ends: Vec::with_capacity(order.len()),
        keep_open: true,
    };
    if let Some(staged) = durable {
        if let Err(err) = shard.engine.wait_staged(staged).await {
            // Whether those SETs are durable is unknown: every command of
            // the batch is answered with the failure, and the connection
            // ends.
            for _ in &order {
                error(&mut answered.bytes, &format!("ERR the log failed: {err}"));
                answered.ends.push(answered.bytes.len());
            }
            answered.keep_open = false;
            return answered;
        }
    }
    shard.counters.stamp_batch(started.elapsed(), answered_now);
    if replies.is_empty() && away_replies.is_empty() {
        let mut end = 0;
        answered.ends.extend(order.iter().map(|reply| {
            if let Reply::Now(range) = reply {
                end = range.end;
            }
            end
        }));
        answered.bytes = now;
        return answered;
    }
    let out = &mut answered.bytes;
    let mut replies = replies.into_iter();
    for reply in order {
        match reply {
            Reply::Now(range) => out.extend_from_slice(&now[range]),
            Reply::Later => {
                let (reply, open) = replies.next().expect("one reply per command run later");
                out.extend_from_slice(&reply);
                answered.keep_open = open;
            }
            Reply::Away(owner, index) => match away_replies.get(owner).and_then(Option::as_ref) {
                Some(batch) if index < batch.ends.len() => {
                    let start = if index == 0 { 0 } else { batch.ends[index - 1] };
                    out.extend_from_slice(&batch.bytes[start..batch.ends[index]]);
                }
                _ => error(
                    out,
                    &format!("ERR ShuttingDown: shard {owner} is not accepting requests"),
                ),
            },
        }
        answered.ends.push(out.len());
        if !answered.keep_open {
            break;
        }
    }
    answered
}

/// Answers a batch of RESP commands another shard sent here (see
/// `answer_batch`), in place unless it must wait.
pub(crate) async fn serve_forwarded(shard: &Rc<Shard>, batch: RespBatch) {
    let shard = shard.clone();
    crate::server::eager::run_or_spawn(async move {
        let bulk_max = bulk_max(&shard);
        let mut commands = Vec::with_capacity(batch.count);
        let mut at = 0;
        while commands.len() < batch.count {
            match parse(&batch.commands[at..], bulk_max) {
                Parsed::Command(args, used) => {
                    commands.push((args, &batch.commands[at..at + used]));
                    at += used;
                }
                // The sender parsed these very bytes: it cannot happen.
                // If it did, the sender answers the commands with errors.
                Parsed::Incomplete | Parsed::Error(_) => return,
            }
        }
        let answered = answer_batch(&shard, &commands, false).await;
        // The sender may have given up; that is fine.
        let _ = batch.reply.send(RespReplies {
            bytes: answered.bytes,
            ends: answered.ends,
        });
    })
    .await;
}

/// The longest bulk string a command may carry.
fn bulk_max(shard: &Shard) -> usize {
    shard.config.value_max_bytes.max(shard.config.key_max_bytes) + 1
}

/// Serves one RESP connection.
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let bulk_max = bulk_max(&shard);
    let mut buf = RecvBuf::new();
    loop {
        let mut consumed = 0;
        let mut commands = Vec::new();
        let mut protocol_error = None;
        while commands.len() < PIPELINE_BATCH_MAX {
            let data = &buf.data()[consumed..];
            match parse(data, bulk_max) {
                Parsed::Command(args, used) => {
                    commands.push((args, &data[..used]));
                    consumed += used;
                }
                Parsed::Incomplete => break,
                Parsed::Error(message) => {
                    protocol_error = Some(message);
                    break;
                }
            }
        }
        if !commands.is_empty() || protocol_error.is_some() {
            let Answered {
                bytes: mut out,
                keep_open,
                ..
            } = answer_batch(&shard, &commands, true).await;
            drop(commands);
            let mut keep_open = keep_open;
            if let Some(message) = &protocol_error {
                error(&mut out, &format!("ERR Protocol error: {message}"));
                keep_open = false;
            }
            if stream.write_all(&out).await.is_err() || !keep_open {
                return;
            }
            buf.consume(consumed);
            // A client that keeps its pipeline full may find every batch
            // answered without a wait: let the shard's other tasks run.
            glommio::yield_if_needed().await;
            continue;
        }
        // A command larger than any value allowed cannot be completed.
        if buf.data().len() > bulk_max + 64 * 1024 {
            return;
        }
        if !buf.read_unless_stopping(&mut stream, &shard.stopping).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_upper_cased_whatever_their_length_or_encoding() {
        let mut buf = [0u8; 16];
        assert_eq!(command_name(b"get", &mut buf), "GET");
        let mut buf = [0u8; 16];
        assert_eq!(command_name(b"sEt", &mut buf), "SET");
        let long = b"averyveryverylongcommandname";
        let mut buf = [0u8; 16];
        assert_eq!(command_name(long, &mut buf), "AVERYVERYVERYLONGCOMMANDNAME");
        let mut buf = [0u8; 16];
        assert_eq!(command_name(b"g\xffx", &mut buf), "G\u{fffd}X");
        let mut buf = [0u8; 16];
        assert_eq!(command_name(b"", &mut buf), "");
    }

    #[test]
    fn lengths_parse_as_signed_decimals_and_nothing_else() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"123"), Some(123));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"999999999999999999"), Some(999_999_999_999_999_999));
        for bad in [&b""[..], b"-", b"+1", b"1a", b" 1", b"1.0", b"9999999999999999999"] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_arrays_inline_commands_and_partial_input() {
        let Parsed::Command(args, used) = parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest", 100) else {
            panic!()
        };
        assert_eq!((args, used), (vec![&b"GET"[..], &b"k"[..]], 20));
        let Parsed::Command(args, _) = parse(b"PING  hello\r\n", 100) else {
            panic!()
        };
        assert_eq!(args, vec![&b"PING"[..], &b"hello"[..]]);
        assert!(matches!(parse(b"*2\r\n$3\r\nGE", 100), Parsed::Incomplete));
        assert!(matches!(parse(b"*x\r\n", 100), Parsed::Error(_)));
        assert!(
            matches!(parse(b"*1\r\n$999\r\n", 100), Parsed::Error(_)),
            "bulk over the limit"
        );
        assert!(
            matches!(parse(b"*1\r\n$1\r\nab\r\n", 100), Parsed::Error(_)),
            "missing CRLF"
        );
    }
}
