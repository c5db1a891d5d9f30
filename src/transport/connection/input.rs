//! Where a connection's incoming bytes wait: the loop's fresh read, and the connection's own
//! leftover.
//!
//! The loop reads each ready socket into one large buffer shared by every connection, and
//! the machine takes its frames from there in small pieces, so no idle connection needs a
//! read buffer of its own. Bytes a connection leaves unread when its turn ends (it hit the
//! per-turn message budget) move to its [`Stash`], which is empty and unallocated nearly
//! always.

use std::io::{self, Read};

/// A connection's unread leftover bytes, read from the front without moving the rest.
#[derive(Default)]
pub struct Stash {
    bytes: Vec<u8>,
    read: usize,
}

impl Stash {
    pub fn push(&mut self, leftover: &[u8]) {
        if leftover.is_empty() {
            return;
        }
        self.bytes.drain(..self.read);
        self.read = 0;
        self.bytes.extend_from_slice(leftover);
    }

    pub fn is_empty(&self) -> bool {
        self.read == self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.read
    }
}

impl Read for Stash {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len());
        buf[..n].copy_from_slice(&self.bytes[self.read..self.read + n]);
        self.read += n;
        if self.is_empty() {
            // Freed, not kept: the stash is for the rare connection that had more than a
            // turn's worth of input.
            *self = Stash::default();
        }
        Ok(n)
    }
}

/// The bytes a connection can read now: its stash first (older), then the loop's fresh
/// read. Running out is `WouldBlock`, never end of file: the loop learns of EOF from the
/// socket and says so separately.
pub struct Pending<'a, 'b> {
    pub stash: &'a mut Stash,
    pub fresh: &'a mut &'b [u8],
}

impl Read for Pending<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.stash.is_empty() {
            return self.stash.read(buf);
        }
        if self.fresh.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.fresh.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stash_is_read_before_fresh_bytes_and_then_blocks() {
        let mut stash = Stash::default();
        stash.push(b"ab");
        let mut fresh: &[u8] = b"cd";
        let mut pending = Pending { stash: &mut stash, fresh: &mut fresh };
        let mut got = Vec::new();
        let mut buf = [0u8; 1];
        loop {
            match pending.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
        }
        assert_eq!(got, b"abcd");
        assert!(pending.stash.is_empty() && pending.fresh.is_empty());
        assert_eq!(stash.bytes.capacity(), 0, "an emptied stash holds no memory");
    }

    #[test]
    fn pushing_keeps_unread_bytes_in_order() {
        let mut stash = Stash::default();
        stash.push(b"1234");
        let mut two = [0u8; 2];
        assert_eq!(stash.read(&mut two).ok(), Some(2));
        stash.push(b"56");
        let mut rest = Vec::new();
        stash.read_to_end(&mut rest).ok();
        assert_eq!(rest, b"3456");
    }
}
