//! The membership exchange, `/vpn-node/membership/1` (docs/protocol.md, section 11): on a
//! new connection each side sends its certificate (or none) and the other answers whether
//! it takes it for a member. It is the one protocol a connection carries before proof.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// The exchange's protocol.
pub const MEMBERSHIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/vpn-node/membership/1");
/// Largest certificate sent or read (as `vpn_wire::MAX_CERT_BYTES`).
pub(crate) const MAX_HELLO: usize = 8 * 1024;
/// Longest reason given with a refusal.
pub(crate) const MAX_REASON: usize = 200;

/// A side's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The asker is a member.
    Accepted,
    /// It is not, and why.
    Refused(String),
}

/// Reads and writes the exchange's two messages: the request is a big-endian `u16` length
/// and that many bytes of certificate (0: none); the answer one byte (0 accepted, 1
/// refused), and for a refusal a `u8` length and that many bytes of UTF-8 reason.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HelloCodec;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl request_response::Codec for HelloCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Verdict;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 2];
        io.read_exact(&mut len).await?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > MAX_HELLO {
            return Err(invalid("membership certificate over 8 KiB"));
        }
        let mut certificate = vec![0u8; len];
        io.read_exact(&mut certificate).await?;
        Ok(certificate)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Verdict>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut kind = [0u8; 1];
        io.read_exact(&mut kind).await?;
        match kind {
            [0] => Ok(Verdict::Accepted),
            [1] => {
                let mut len = [0u8; 1];
                io.read_exact(&mut len).await?;
                let mut reason = vec![0u8; usize::from(len[0])];
                io.read_exact(&mut reason).await?;
                Ok(Verdict::Refused(String::from_utf8_lossy(&reason).into_owned()))
            }
            _ => Err(invalid("membership answer of unknown kind")),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        certificate: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let len = u16::try_from(certificate.len())
            .ok()
            .filter(|len| usize::from(*len) <= MAX_HELLO)
            .ok_or_else(|| invalid("membership certificate over 8 KiB"))?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&certificate).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        verdict: Verdict,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match verdict {
            Verdict::Accepted => io.write_all(&[0]).await?,
            Verdict::Refused(reason) => {
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let reason = reason.get(..end).unwrap_or_default().as_bytes();
                // At most MAX_REASON (200) bytes: fits a u8.
                io.write_all(&[1, reason.len() as u8]).await?;
                io.write_all(reason).await?;
            }
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use request_response::Codec;

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn both_messages_round_trip_and_oversized_ones_are_refused() {
        let p = MEMBERSHIP_PROTOCOL;
        let mut wire = Cursor::new(Vec::new());
        block_on(HelloCodec.write_request(&p, &mut wire, vec![7; 300])).unwrap();
        let mut read = Cursor::new(wire.into_inner());
        assert_eq!(block_on(HelloCodec.read_request(&p, &mut read)).unwrap(), vec![7; 300]);

        let long = "é".repeat(150);
        for verdict in [Verdict::Accepted, Verdict::Refused(long.clone())] {
            let mut wire = Cursor::new(Vec::new());
            block_on(HelloCodec.write_response(&p, &mut wire, verdict.clone())).unwrap();
            let mut read = Cursor::new(wire.into_inner());
            let got = block_on(HelloCodec.read_response(&p, &mut read)).unwrap();
            match got {
                Verdict::Refused(reason) => {
                    assert!(reason.len() <= MAX_REASON && long.starts_with(&reason))
                }
                accepted => assert_eq!(accepted, verdict),
            }
        }

        let mut huge = Cursor::new(((MAX_HELLO + 1) as u16).to_be_bytes().to_vec());
        assert!(block_on(HelloCodec.read_request(&p, &mut huge)).is_err());
        assert!(
            block_on(HelloCodec.write_request(
                &p,
                &mut Cursor::new(Vec::new()),
                vec![0; MAX_HELLO + 1]
            ))
            .is_err()
        );
        let mut unknown = Cursor::new(vec![9]);
        assert!(block_on(HelloCodec.read_response(&p, &mut unknown)).is_err());
    }
}
