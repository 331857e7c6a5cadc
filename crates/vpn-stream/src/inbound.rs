//! The acceptor's side of a stream: decode frames, answer PINGs, hand packets on.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpn_api::VpnStream;
use vpn_wire::{Frame, FrameDecoder, FrameError};

/// Bytes of buffer kept ready for reads.
const READ_CHUNK: usize = 256 * 1024;
/// Most bytes asked for in one read: one largest frame's worth.
const READ_MOST: usize = 64 * 1024;
/// Fewest bytes asked for in one read.
const READ_LEAST: usize = 4 * 1024;

/// How much the next read asks for after one that returned `read` bytes. A read zeroes the
/// space it offers before filling it, so the offer follows what reads return: twice the
/// last one, within `READ_LEAST..=READ_MOST`. A ping's packet then costs a 4 KiB offer, not
/// 64 KiB, and a busy stream soon reads 64 KiB at a time.
fn next_offer(read: usize) -> usize {
    read.saturating_mul(2).clamp(READ_LEAST, READ_MOST)
}

/// How an inbound stream ended.
#[derive(Debug)]
pub enum InboundEnd {
    /// The opener closed it cleanly, between frames.
    Closed,
    /// The opener broke the wire protocol; the stream was reset.
    Protocol(FrameError),
    /// Reading or answering failed.
    Io(io::Error),
    /// The sink could not take what was read (the TUN device is gone); the stream was reset.
    Sink(io::Error),
    /// The opener sent nothing for [`InboundLimits::idle`]; the stream was reset.
    Idle,
    /// The opener did not take our reply within [`InboundLimits::write`]; the stream was
    /// reset.
    Stalled,
}

/// How long an inbound stream may keep its task and buffers without doing its part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Nothing read for this long ends the stream. Openers ping idle streams, so this is
    /// longer than their health-check interval.
    pub idle: Duration,
    /// A reply not taken within this long ends the stream.
    pub write: Duration,
}

impl Default for InboundLimits {
    /// The defaults of `[limits]`: 60 s idle, 10 s to take a reply.
    fn default() -> Self {
        Self { idle: Duration::from_secs(60), write: Duration::from_secs(10) }
    }
}

/// Where [`serve_inbound`] hands the frames it decodes.
///
/// `frame` takes each PACKET and SEGMENTED frame, in order; `flush` runs once all the frames
/// of one read have been handed over, before the next read, so a sink that writes them out
/// there holds back the stream (and through its flow control the sender) while it writes.
/// Any `FnMut(Frame)` is a sink whose `flush` does nothing.
pub trait InboundSink: Send {
    /// Takes one decoded frame.
    fn frame(&mut self, frame: Frame);

    /// Every frame of one read has been handed over. An error ends the stream.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl<F: FnMut(Frame) + Send> InboundSink for F {
    fn frame(&mut self, frame: Frame) {
        self(frame)
    }
}

/// Serves one stream a peer opened to us until it ends: decodes its frames in order,
/// answers each PING with a PONG, and hands every PACKET and SEGMENTED frame to `sink`
/// (which applies the receiver checks), flushing it after each read. Extension frames are
/// skipped; a stray PONG is ignored. A protocol error resets the stream; other streams are
/// not affected.
pub async fn serve_inbound(
    mut stream: Box<dyn VpnStream>,
    mut sink: impl InboundSink,
    limits: InboundLimits,
) -> InboundEnd {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut reply = BytesMut::new();
    let mut offer = READ_LEAST;
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let mut room = (&mut buf).limit(offer);
        let read = match tokio::time::timeout(limits.idle, stream.read_buf(&mut room)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return InboundEnd::Io(e),
            Err(_) => {
                stream.reset();
                return InboundEnd::Idle;
            }
        };
        offer = next_offer(read);
        let decoded =
            if read == 0 { decoder.decode_eof(&mut buf) } else { decoder.decode(&mut buf) };
        let mut next = decoded;
        loop {
            match next {
                Ok(Some(Frame::Ping(nonce))) => vpn_wire::encode_pong(&mut reply, nonce),
                Ok(Some(Frame::Pong(_))) => {}
                Ok(Some(frame)) => sink.frame(frame),
                Ok(None) => break,
                Err(e) => {
                    // What came before the error is still delivered.
                    let _ = sink.flush().await;
                    stream.reset();
                    return InboundEnd::Protocol(e);
                }
            }
            next = if read == 0 { decoder.decode_eof(&mut buf) } else { decoder.decode(&mut buf) };
        }
        if let Err(e) = sink.flush().await {
            stream.reset();
            return InboundEnd::Sink(e);
        }
        if !reply.is_empty() {
            let answer = reply.split();
            let write = async {
                stream.write_all(&answer).await?;
                stream.flush().await
            };
            match tokio::time::timeout(limits.write, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return InboundEnd::Io(e),
                Err(_) => {
                    stream.reset();
                    return InboundEnd::Stalled;
                }
            }
        }
        if read == 0 {
            return InboundEnd::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_offers_follow_what_reads_return() {
        assert_eq!(next_offer(0), READ_LEAST);
        assert_eq!(next_offer(100), READ_LEAST);
        assert_eq!(next_offer(READ_LEAST), 2 * READ_LEAST);
        assert_eq!(next_offer(20_000), 40_000);
        assert_eq!(next_offer(READ_MOST), READ_MOST);
        assert_eq!(next_offer(usize::MAX), READ_MOST);
    }
}
