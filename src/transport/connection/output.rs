//! A connection's unsent output: whole WebSocket frames, appended during a loop turn and
//! written to the socket once, at the end of it.
//!
//! The buffer is bounded: messages from the core count against the per-connection cap
//! (`--max-output`), and passing it closes the connection with 1008. The one unsent client
//! list a connection may hold is tracked separately and not counted: lists can legitimately
//! be bigger than the cap, and [`Output::has_unsent_list`] keeps them to one.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Segments handed to one `writev`.
const MAX_IOVECS: usize = 16;

/// Queued output as a short run of segments: bytes of our own, and client lists shared with
/// every other connection they are queued on (a list can be hundreds of KiB and go to
/// thousands of clients; it is never copied per client).
#[derive(Default)]
pub struct Output {
    segments: VecDeque<Segment>,
    /// Bytes of the front segment already written to the socket.
    front_written: usize,
}

enum Segment {
    Owned(Vec<u8>),
    /// Frames of the replay after a resume: bounded by the core (three times
    /// `--max-output` at most), so they count against neither output limit (the soft one
    /// only for a while: see `Connection::track_output`).
    Replay(Vec<u8>),
    /// The frame header of the client list that follows (at most 10 bytes, then its length).
    ListHeader([u8; 10], u8),
    SharedList(Rc<[u8]>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(bytes) | Segment::Replay(bytes) => bytes,
            Segment::ListHeader(bytes, len) => &bytes[..usize::from(*len)],
            Segment::SharedList(bytes) => bytes,
        }
    }
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
        self.segments.is_empty()
    }

    /// Bytes held for the socket, client lists included: a list counts in full, since the
    /// whole shared allocation stays alive for as long as one connection still holds it.
    /// The soft output limit applies to this.
    pub fn held(&self) -> usize {
        let total: usize = self.segments.iter().map(|segment| segment.bytes().len()).sum();
        match self.segments.front() {
            Some(Segment::Owned(_) | Segment::Replay(_)) => total - self.front_written,
            _ => total,
        }
    }

    /// Unsent replay bytes (see [`Segment::Replay`]): part of [`held`](Self::held), but
    /// exempt from the soft limit.
    pub fn unsent_replay(&self) -> usize {
        self.unsent_in(|segment| matches!(segment, Segment::Replay(_)))
    }

    /// Drops the segments not yet started, keeping whatever cutting would break the
    /// framing: a front segment partly written, and a client list whose header is out
    /// (the header and its list are two segments). For a connection taken over by a newer
    /// one: what it has not sent reaches the client through the replay there. Frames that
    /// share the front segment with one in progress still go (they are one buffer).
    pub fn discard_unstarted(&mut self) {
        let keep = match self.segments.front() {
            Some(Segment::SharedList(_)) => 1,
            Some(Segment::ListHeader(..)) if self.front_written > 0 => 2,
            _ => usize::from(self.front_written > 0),
        };
        self.segments.truncate(keep);
    }

    /// Unsent bytes, client lists (and their headers) excluded. The hard output limit
    /// applies to this: a list may legitimately be larger than it.
    pub fn unsent_counted(&self) -> usize {
        self.unsent_in(|segment| matches!(segment, Segment::Owned(_)))
    }

    /// Unsent bytes of the segments `pick` chooses (lists are never among them).
    fn unsent_in(&self, pick: fn(&Segment) -> bool) -> usize {
        let mut total = 0;
        for (index, segment) in self.segments.iter().enumerate() {
            if pick(segment) {
                total += segment.bytes().len() - if index == 0 { self.front_written } else { 0 };
            }
        }
        total
    }

    fn owned_tail(&mut self) -> &mut Vec<u8> {
        self.tail(false)
    }

    /// The buffer to append our own frames to: the last segment if it is of that kind
    /// (`replay` or not) and not being written, else a new one. Never a segment being
    /// written: a reader that always lags a little would otherwise keep every byte ever
    /// sent in it (only whole segments are freed).
    fn tail(&mut self, replay: bool) -> &mut Vec<u8> {
        let front_in_progress = self.segments.len() == 1 && self.front_written > 0;
        let same_kind = match self.segments.back() {
            Some(Segment::Owned(_)) => !replay,
            Some(Segment::Replay(_)) => replay,
            _ => false,
        };
        if front_in_progress || !same_kind {
            let fresh = if replay { Segment::Replay(Vec::new()) } else { Segment::Owned(Vec::new()) };
            self.segments.push_back(fresh);
        }
        match self.segments.back_mut() {
            Some(Segment::Owned(bytes) | Segment::Replay(bytes)) => bytes,
            // Just ensured above.
            _ => unreachable!("the last segment is our own"),
        }
    }

    /// Appends one text frame of the replay after a resume (not counted by the limits).
    pub fn push_replay(&mut self, payload: &[u8]) {
        let tail = self.tail(true);
        push_text_header(tail, payload.len());
        tail.extend_from_slice(payload);
    }

    /// Appends one unmasked, unfragmented text frame.
    pub fn push_text(&mut self, payload: &[u8]) {
        let tail = self.owned_tail();
        push_text_header(tail, payload.len());
        tail.extend_from_slice(payload);
    }

    /// Appends one unmasked, unfragmented binary frame (the echo path only).
    pub fn push_binary(&mut self, payload: &[u8]) {
        let header = FrameHeader { opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
        let tail = self.owned_tail();
        // Writing into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, tail);
        tail.extend_from_slice(payload);
    }

    /// Queues a text frame whose payload is the shared client list, at the end. A list
    /// queued earlier and not yet started is withdrawn (a client holds at most one unsent
    /// list, and only the newest matters; it goes last so it follows every message produced
    /// before it). Returns `false` while an earlier list is partly written: the caller
    /// offers the newest one again later. With `may_withdraw` false an earlier list is
    /// never withdrawn: `false` while one is queued at all.
    pub fn push_list(&mut self, list: &Rc<[u8]>, may_withdraw: bool) -> bool {
        let mut header = Vec::with_capacity(10);
        push_text_header(&mut header, list.len());
        let mut fixed = [0u8; 10];
        fixed[..header.len()].copy_from_slice(&header);
        let header = Segment::ListHeader(fixed, header.len() as u8);
        let list = Segment::SharedList(Rc::clone(list));
        match self.segments.iter().position(|s| matches!(s, Segment::ListHeader(..))) {
            Some(at) if may_withdraw && (at > 0 || self.front_written == 0) => {
                self.segments.drain(at..at + 2);
                self.segments.push_back(header);
                self.segments.push_back(list);
                true
            }
            Some(_) => false,
            None if self.segments.iter().any(|s| matches!(s, Segment::SharedList(_))) => false,
            None => {
                self.segments.push_back(header);
                self.segments.push_back(list);
                true
            }
        }
    }

    /// Appends bytes tungstenite produced (the 101 response, pongs, pings, close frames).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.owned_tail().extend_from_slice(bytes);
    }

    /// Writes as much as the socket takes, all segments in one `writev` where possible,
    /// adding the bytes written to `sent`.
    pub fn write_to(&mut self, socket: &mut impl Write, sent: &mut u64) -> io::Result<Flush> {
        while !self.segments.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (index, segment) in self.segments.iter().take(MAX_IOVECS).enumerate() {
                let skip = if index == 0 { self.front_written } else { 0 };
                slices[count] = IoSlice::new(&segment.bytes()[skip..]);
                count += 1;
            }
            match socket.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    *sent += written as u64;
                    self.consume(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }

    /// The next unsent bytes, in order: what is left of the front segment, at most `max`.
    pub fn front(&self, max: usize) -> Option<&[u8]> {
        let rest = &self.segments.front()?.bytes()[self.front_written..];
        Some(&rest[..rest.len().min(max)])
    }

    /// `written` bytes from the front have been sent (or handed on, e.g. encrypted).
    pub fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.segments.front() else { return };
            let left = front.bytes().len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.front_written = 0;
            // Freed, not kept: an idle connection holds no output memory at all.
            self.segments.pop_front();
        }
    }
}

fn push_text_header(out: &mut Vec<u8>, len: usize) {
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    // Writing into a Vec cannot fail.
    let _ = header.format(len as u64, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

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
        assert_eq!(out.write_to(&mut sock, &mut 0).expect("writes"), Flush::Done);
        assert_eq!(&sock.taken[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&sock.taken[4..8], &[0x81, 126, 0, 200]);
        let big = 4 + 4 + 200;
        assert_eq!(&sock.taken[big..big + 10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert!(out.is_empty());
    }

    fn list(text: &str) -> Rc<[u8]> {
        Rc::from(text.as_bytes())
    }

    #[test]
    fn partial_writes_resume_and_lists_are_not_counted() {
        let mut out = Output::default();
        out.push_text(b"relay");
        assert!(out.push_list(&list(r#"{"cmd":"clu","list":[]}"#), true));
        assert_eq!(out.unsent_counted(), 7);
        let mut sock = Trickle { taken: Vec::new(), budget: 10 };
        assert_eq!(out.write_to(&mut sock, &mut 0).expect("writes"), Flush::Pending);
        assert_eq!(out.unsent_counted(), 0);
        sock.budget = usize::MAX;
        assert_eq!(out.write_to(&mut sock, &mut 0).expect("writes"), Flush::Done);
        assert_eq!(sock.taken.len(), 7 + 2 + 23);
        assert!(out.is_empty());
    }

    #[test]
    fn a_newer_list_replaces_an_unstarted_one_and_goes_last() {
        let mut out = Output::default();
        out.push_text(b"a");
        assert!(out.push_list(&list("[1]"), true));
        out.push_text(b"b");
        assert!(out.push_list(&list("[1,2]"), true));
        let mut sock = Trickle { taken: Vec::new(), budget: usize::MAX };
        out.write_to(&mut sock, &mut 0).expect("writes");
        assert_eq!(sock.taken, [&[0x81, 1][..], b"a", &[0x81, 1], b"b", &[0x81, 5], b"[1,2]"].concat());
    }

    #[test]
    fn a_replay_counts_against_neither_limit_and_keeps_its_place() {
        let mut out = Output::default();
        out.push_text(b"reply");
        out.push_replay(&[b'r'; 1000]);
        out.push_replay(b"second");
        out.push_text(b"next");
        assert_eq!(out.unsent_counted(), 7 + 6);
        assert_eq!(out.unsent_replay(), 1004 + 8);
        assert_eq!(out.held(), 7 + 1004 + 8 + 6);
        let mut sock = Trickle { taken: Vec::new(), budget: 500 };
        let _ = out.write_to(&mut sock, &mut 0);
        assert_eq!(out.unsent_replay(), 1004 + 8 - (500 - 7));
        sock.budget = usize::MAX;
        out.write_to(&mut sock, &mut 0).expect("writes");
        let expected = [
            &[0x81, 5][..],
            b"reply",
            &[0x81, 126, 3, 0xe8],
            &[b'r'; 1000],
            &[0x81, 6],
            b"second",
            &[0x81, 4],
            b"next",
        ]
        .concat();
        assert_eq!(sock.taken, expected);
    }

    #[test]
    fn a_takeover_drops_what_has_not_started_and_finishes_what_has() {
        let mut out = Output::default();
        out.push_text(b"started");
        assert!(out.push_list(&list("[1]"), true));
        out.push_text(b"later");
        let mut sock = Trickle { taken: Vec::new(), budget: 3 };
        let _ = out.write_to(&mut sock, &mut 0);
        out.discard_unstarted();
        out.push_raw(b"CLOSE");
        sock.budget = usize::MAX;
        out.write_to(&mut sock, &mut 0).expect("writes");
        assert_eq!(sock.taken, [&[0x81, 7][..], b"started", b"CLOSE"].concat());
        let mut idle = Output::default();
        idle.push_text(b"never started");
        idle.discard_unstarted();
        assert!(idle.is_empty());
    }

    #[test]
    fn a_takeover_after_a_list_header_was_written_keeps_the_frame_whole() {
        for budget in [1, 2] {
            let mut out = Output::default();
            assert!(out.push_list(&list("[1]"), false));
            // The socket takes the list's header (2 bytes) or part of it, then blocks.
            let mut sock = Trickle { taken: Vec::new(), budget };
            let _ = out.write_to(&mut sock, &mut 0);
            out.discard_unstarted();
            out.push_raw(b"CLOSE");
            sock.budget = usize::MAX;
            out.write_to(&mut sock, &mut 0).expect("writes");
            assert_eq!(
                sock.taken,
                [&[0x81, 3][..], b"[1]", b"CLOSE"].concat(),
                "budget {budget}: the header promised 3 bytes of list; the close frame became its payload"
            );
        }
    }

    #[test]
    fn a_list_for_a_counting_client_is_never_withdrawn_or_moved() {
        let mut out = Output::default();
        out.push_text(b"a");
        assert!(out.push_list(&list("[1]"), false));
        out.push_text(b"b");
        assert!(!out.push_list(&list("[1,2]"), false), "one is queued: offer again later");
        let mut sock = Trickle { taken: Vec::new(), budget: usize::MAX };
        out.write_to(&mut sock, &mut 0).expect("writes");
        assert_eq!(sock.taken, [&[0x81, 1][..], b"a", &[0x81, 3], b"[1]", &[0x81, 1], b"b"].concat());
        assert!(out.push_list(&list("[1,2]"), false), "written out: the next may follow");
    }

    #[test]
    fn a_lagging_reader_does_not_keep_what_it_has_read() {
        let mut out = Output::default();
        let mut sock = Trickle { taken: Vec::new(), budget: 0 };
        for _ in 0..1000 {
            out.push_text(&[b'x'; 1000]);
            sock.budget = 1000;
            out.write_to(&mut sock, &mut 0).expect("writes");
        }
        // Whatever is held is (nearly) what is still unsent, not the 1 MB that went out.
        let held: usize = out.segments.iter().map(|segment| segment.bytes().len()).sum();
        assert!(held <= out.unsent_counted() + 1004, "{held} bytes held for {} unsent", out.unsent_counted());
    }

    #[test]
    fn a_list_being_written_is_not_replaced() {
        let mut out = Output::default();
        assert!(out.push_list(&list("[1,2,3]"), true));
        let mut sock = Trickle { taken: Vec::new(), budget: 4 };
        assert_eq!(out.write_to(&mut sock, &mut 0).expect("writes"), Flush::Pending);
        assert!(!out.push_list(&list("[4]"), true), "the first list is half written");
        sock.budget = usize::MAX;
        out.write_to(&mut sock, &mut 0).expect("writes");
        assert!(out.push_list(&list("[4]"), true), "written out: a new list may follow");
        out.write_to(&mut sock, &mut 0).expect("writes");
        assert_eq!(sock.taken, [&[0x81, 7][..], b"[1,2,3]", &[0x81, 3], b"[4]"].concat());
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
        assert!(out.write_to(&mut Broken, &mut 0).is_err());
    }
}
