//! Internode authentication: both ends prove they know the cluster secret
//! with HMAC-SHA256 over two fresh nonces, before any other frame.
//!
//! ```text
//! dialer → listener  Handshake  value: dialer id u64 | nonce_d [32]
//! listener → dialer  Ok         value: listener id u64 | nonce_l [32] | mac_l [32]
//! dialer → listener  Handshake  value: mac_d [32]
//! listener → dialer  Ok (or Unauthorized, and the connection closes)
//! mac_x = HMAC(secret, role_x | dialer id | listener id | nonce_d | nonce_l)
//! ```
//!
//! Fresh nonces on both sides mean a recorded handshake cannot be replayed
//! in either direction, and the roles keep one side's proof from serving as
//! the other's. Traffic is not encrypted: run the internode ports on a
//! private network.

use std::time::Duration;

use dynkv_net::{decode, encode, Decoded, Frame, FrameLimits, Head, Opcode, Status};
use dynkv_ring::NodeId;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NONCE_BYTES: usize = 32;
const MAC_BYTES: usize = 32;
const ROLE_LISTENER: &[u8] = b"dynkv-listener-v1";
const ROLE_DIALER: &[u8] = b"dynkv-dialer-v1";
/// Handshake frames are tiny; anything larger is refused unread.
const HANDSHAKE_LIMITS: FrameLimits = FrameLimits {
    key_max_bytes: 0,
    context_max_bytes: 0,
    value_max_bytes: (8 + NONCE_BYTES + MAC_BYTES) as u32,
};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("the peer does not know the cluster secret")]
    BadProof,
    #[error("handshake I/O failed: {0}")]
    Io(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("the peer refused the handshake: {0}")]
    Refused(String),
}

fn mac(secret: &[u8], role: &[u8], dialer: NodeId, listener: NodeId, nonce_d: &[u8], nonce_l: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    for part in [
        role,
        &dialer.0.to_le_bytes(),
        &listener.0.to_le_bytes(),
        nonce_d,
        nonce_l,
    ] {
        mac.update(part);
    }
    mac
}

fn nonce() -> Result<[u8; NONCE_BYTES], AuthError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| AuthError::Io(format!("no randomness: {e}")))?;
    Ok(nonce)
}

/// Reads exactly one frame, buffering at most the handshake limits.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u8, u8, Vec<u8>), AuthError> {
    loop {
        match decode(buf, &HANDSHAKE_LIMITS) {
            Ok(Decoded::Frame(Frame { header, value, .. }, used)) => {
                let out = (header.opcode, header.status, value.to_vec());
                buf.drain(..used);
                return Ok(out);
            }
            Ok(Decoded::NeedBytes(_)) => {}
            Err(err) => return Err(AuthError::Malformed(err.to_string())),
        }
        let mut chunk = [0u8; 256];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| AuthError::Io(e.to_string()))?;
        if n == 0 {
            return Err(AuthError::Io("connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn write_frame(stream: &mut TcpStream, head: Head, value: &[u8]) -> Result<(), AuthError> {
    let mut out = Vec::with_capacity(64 + value.len());
    encode(&mut out, &head, &[], &[], value);
    stream.write_all(&out).await.map_err(|e| AuthError::Io(e.to_string()))
}

async fn with_timeout<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, AuthError>>,
) -> Result<T, AuthError> {
    glommio::timer::timeout(timeout, async { Ok(work.await) })
        .await
        .map_err(|_| AuthError::Timeout)?
}

/// The dialing side. Returns the listener's node id, which must be
/// `expected` when given (and never this node's own).
pub(crate) async fn dial(
    stream: &mut TcpStream,
    secret: &[u8],
    me: NodeId,
    expected: Option<NodeId>,
    timeout: Duration,
) -> Result<NodeId, AuthError> {
    with_timeout(timeout, async {
        let nonce_d = nonce()?;
        let mut hello = Vec::with_capacity(8 + NONCE_BYTES);
        hello.extend_from_slice(&me.0.to_le_bytes());
        hello.extend_from_slice(&nonce_d);
        write_frame(stream, Head::request(Opcode::Handshake, 1), &hello).await?;
        let mut buf = Vec::new();
        let (_, status, value) = read_frame(stream, &mut buf).await?;
        if status != Status::Ok as u8 {
            return Err(AuthError::Refused(String::from_utf8_lossy(&value).into_owned()));
        }
        if value.len() != 8 + NONCE_BYTES + MAC_BYTES {
            return Err(AuthError::Malformed(format!("challenge of {} bytes", value.len())));
        }
        let listener = NodeId(u64::from_le_bytes(value[..8].try_into().expect("8 bytes")));
        if listener == me || expected.is_some_and(|e| e != listener) {
            return Err(AuthError::Malformed(format!(
                "the listener claims to be node {listener}, expected {}",
                expected.map_or("another node".to_string(), |e| e.to_string())
            )));
        }
        let nonce_l = &value[8..8 + NONCE_BYTES];
        mac(secret, ROLE_LISTENER, me, listener, &nonce_d, nonce_l)
            .verify_slice(&value[8 + NONCE_BYTES..])
            .map_err(|_| AuthError::BadProof)?;
        let proof = mac(secret, ROLE_DIALER, me, listener, &nonce_d, nonce_l)
            .finalize()
            .into_bytes();
        write_frame(stream, Head::request(Opcode::Handshake, 2), &proof).await?;
        let (_, status, value) = read_frame(stream, &mut buf).await?;
        if status != Status::Ok as u8 {
            return Err(AuthError::Refused(String::from_utf8_lossy(&value).into_owned()));
        }
        Ok(listener)
    })
    .await
}

/// The listening side. Returns the dialer's node id. On a bad proof the
/// dialer is told so before the caller closes the connection.
pub(crate) async fn accept(
    stream: &mut TcpStream,
    secret: &[u8],
    me: NodeId,
    timeout: Duration,
) -> Result<NodeId, AuthError> {
    with_timeout(timeout, async {
        let mut buf = Vec::new();
        let (opcode, _, hello) = read_frame(stream, &mut buf).await?;
        let refuse = |message: &str| {
            (
                Head::response(Opcode::Handshake as u8, 0, Status::Unauthorized),
                message.to_owned(),
            )
        };
        if opcode != Opcode::Handshake as u8 || hello.len() != 8 + NONCE_BYTES || secret.is_empty() {
            let (head, message) = refuse("handshake required; is cluster_secret set?");
            let _ = write_frame(stream, head, message.as_bytes()).await;
            return Err(AuthError::Malformed("no handshake".into()));
        }
        let dialer = NodeId(u64::from_le_bytes(hello[..8].try_into().expect("8 bytes")));
        let nonce_d = &hello[8..];
        let nonce_l = nonce()?;
        let mut challenge = Vec::with_capacity(8 + NONCE_BYTES + MAC_BYTES);
        challenge.extend_from_slice(&me.0.to_le_bytes());
        challenge.extend_from_slice(&nonce_l);
        challenge.extend_from_slice(
            &mac(secret, ROLE_LISTENER, dialer, me, nonce_d, &nonce_l)
                .finalize()
                .into_bytes(),
        );
        write_frame(
            stream,
            Head::response(Opcode::Handshake as u8, 1, Status::Ok),
            &challenge,
        )
        .await?;
        let (_, _, proof) = read_frame(stream, &mut buf).await?;
        if mac(secret, ROLE_DIALER, dialer, me, nonce_d, &nonce_l)
            .verify_slice(&proof)
            .is_err()
        {
            let (head, message) = refuse("wrong cluster secret");
            let _ = write_frame(stream, head, message.as_bytes()).await;
            return Err(AuthError::BadProof);
        }
        write_frame(stream, Head::response(Opcode::Handshake as u8, 2, Status::Ok), &[]).await?;
        Ok(dialer)
    })
    .await
}
