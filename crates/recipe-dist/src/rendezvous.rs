//! The one exchange ranks without MPI need before NCCL can start: rank 0's unique id, sent
//! over TCP to every other rank. Rank 0 listens on all interfaces at the rendezvous port; the
//! others connect to `MASTER_ADDR` there, say the world size they expect, and read the id.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// What a rank sends first, so that a stray connection is not taken for a rank.
const GREETING: &[u8; 16] = b"recipe-nccl-id/1";

/// How long ranks wait for each other: launchers start ranks seconds apart, and a first
/// rank may still be loading its data.
const PATIENCE: Duration = Duration::from_secs(600);

/// The port of the exchange: one above `MASTER_PORT`, which torchrun's own store holds.
pub fn port(master_port: u16) -> Result<u16> {
    master_port
        .checked_add(1)
        .ok_or_else(|| Error("MASTER_PORT is 65535; the rendezvous needs the port above it".into()))
}

/// On rank 0, send `payload` to the `world - 1` other ranks; on the others, receive it.
pub fn share<const N: usize>(
    rank: usize,
    world: usize,
    (addr, port): (&str, u16),
    payload: Option<[u8; N]>,
) -> Result<[u8; N]> {
    let fail = |what: &str, e: std::io::Error| Error(format!("rendezvous at {addr}:{port}: {what}: {e}"));
    if let Some(payload) = payload {
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| fail("cannot listen", e))?;
        let mut served = 0;
        while served < world - 1 {
            let (mut stream, _) = listener.accept().map_err(|e| fail("cannot accept", e))?;
            stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| fail("socket", e))?;
            let mut hello = [0u8; 24];
            if stream.read_exact(&mut hello).is_err() || &hello[..16] != GREETING {
                continue;
            }
            let expected = u64::from_le_bytes(hello[16..].try_into().expect("8 bytes"));
            if expected != world as u64 {
                return Err(Error(format!(
                    "rendezvous at {addr}:{port}: a rank expects {expected} ranks, this one {world}"
                )));
            }
            stream.write_all(&payload).map_err(|e| fail("cannot send", e))?;
            served += 1;
        }
        return Ok(payload);
    }
    let deadline = Instant::now() + PATIENCE;
    let target = (addr, port).to_socket_addrs().map_err(|e| fail("cannot resolve", e))?.collect::<Vec<_>>();
    loop {
        // Rank 0 may not listen yet: try again until it does.
        if let Ok(mut stream) = TcpStream::connect(&target[..]) {
            let mut hello = GREETING.to_vec();
            hello.extend((world as u64).to_le_bytes());
            stream.write_all(&hello).map_err(|e| fail("cannot greet", e))?;
            let mut out = [0u8; N];
            stream.read_exact(&mut out).map_err(|e| fail("no id came", e))?;
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(Error(format!(
                "rendezvous: rank {rank} waited {}s for rank 0 at {addr}:{port}",
                PATIENCE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_0s_payload_reaches_every_rank() {
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let ranks: Vec<_> = (0..4)
            .map(|rank| {
                std::thread::spawn(move || {
                    let payload = (rank == 0).then_some([7u8; 128]);
                    share(rank, 4, ("127.0.0.1", port), payload)
                })
            })
            .collect();
        for rank in ranks {
            assert_eq!(rank.join().unwrap(), Ok([7u8; 128]));
        }
    }
}
