//! A connection's unsent output: whole WebSocket frames, appended during a loop turn and
//! written to the socket once, at the end of it.
//!
//! The buffer is bounded: messages from the core count against the per-connection cap
//! (`--max-output`), and passing it closes the connection with 1008. The one unsent client
//! list a connection may hold is tracked separately and not counted: lists can legitimately
//! be bigger than the cap, and [`Output::has_unsent_list`] keeps them to one.

use std::io::{self, Write};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Above this capacity an emptied buffer is freed rather than kept: idle clients should
/// cost as little memory as possible.
const KEEP_CAPACITY: usize = 1024;

#[derive(Default)]
pub struct Output {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written to the socket.
    written: usize,
    /// The byte range of the last client list put in `buf`, if any.
    list: Option<(usize, usize)>,
}

/// The write side of a turn: did everything reach the kernel?
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    Done,
    /// The socket would block; wait for WRITABLE.
    Pending,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.written == self.buf.len()
    }

    /// Unsent bytes, the client list excluded.
    pub fn unsent_counted(&self) -> usize {
        self.buf.len() - self.written - self.unsent_list_bytes()
    }

    fn unsent_list_bytes(&self) -> usize {
        match self.list {
            Some((start, end)) if end > self.written => end - start.max(self.written),
            _ => 0,
        }
    }

    pub fn has_unsent_list(&self) -> bool {
        self.unsent_list_bytes() > 0
    }

    /// Appends one unmasked, unfragmented text frame.
    pub fn push_text(&mut self, payload: &[u8]) {
        let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
        // Writing into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(payload);
    }

    pub fn push_list(&mut self, payload: &[u8]) {
        let start = self.buf.len();
        self.push_text(payload);
        self.list = Some((start, self.buf.len()));
    }

    /// Appends bytes tungstenite produced (the 101 response, pongs, pings, close frames).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes as much as the socket takes.
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<Flush> {
        while self.written < self.buf.len() {
            match socket.write(&self.buf[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    return Ok(Flush::Pending);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.clear();
        Ok(Flush::Done)
    }

    fn clear(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.written = 0;
        self.list = None;
    }

    /// Drops the written prefix once it is most of the buffer, so a slow reader does not
    /// make every append move the whole backlog.
    fn compact(&mut self) {
        if self.written > 0 && self.written >= self.buf.len() / 2 {
            self.buf.drain(..self.written);
            self.list = self.list.and_then(|(start, end)| {
                (end > self.written).then(|| (start.saturating_sub(self.written), end - self.written))
            });
            self.written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `budget` bytes, then blocks.
    struct Trickle {
        taken: Vec<u8>,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_have_the_right_headers() {
        let mut out = Output::default();
        out.push_text(b"hi");
        out.push_text(&[b'x'; 200]);
        out.push_text(&vec![b'y'; 70_000]);
        let mut sock = Trickle { taken: Vec::new(), budget: usize::MAX };
        assert_eq!(out.write_to(&mut sock).expect("writes"), Flush::Done);
        assert_eq!(&sock.taken[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&sock.taken[4..8], &[0x81, 126, 0, 200]);
        let big = 4 + 4 + 200;
        assert_eq!(&sock.taken[big..big + 10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert!(out.is_empty());
    }

    #[test]
    fn partial_writes_resume_and_the_list_is_tracked() {
        let mut out = Output::default();
        out.push_text(b"relay");
        out.push_list(b"{\"cmd\":\"clu\",\"list\":[]}");
        assert!(out.has_unsent_list());
        assert_eq!(out.unsent_counted(), 7);
        let mut sock = Trickle { taken: Vec::new(), budget: 10 };
        assert_eq!(out.write_to(&mut sock).expect("writes"), Flush::Pending);
        assert!(out.has_unsent_list());
        assert_eq!(out.unsent_counted(), 0);
        sock.budget = usize::MAX;
        assert_eq!(out.write_to(&mut sock).expect("writes"), Flush::Done);
        assert!(!out.has_unsent_list());
        assert_eq!(sock.taken.len(), 7 + 25);
    }

    #[test]
    fn write_errors_surface() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::default();
        out.push_text(b"x");
        assert!(out.write_to(&mut Broken).is_err());
    }
}
