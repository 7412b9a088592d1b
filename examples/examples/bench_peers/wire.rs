//! The floor's transport: a hand-written WebSocket client over one TCP stream, with one
//! reused read buffer and one reused write buffer. Frames are masked in place, a word at a
//! time; reads parse frames out of the buffer without copying or allocating; writes are
//! batched until [`Wire::flush`]. Only what the echo and flood servers send is supported:
//! unfragmented text and binary frames, pings, and close (anything else is an error, never a panic).
//!
//! A [`Wire`] reads through the runtime (readiness from epoll); [`Wire::into_polled`] turns it
//! into a [`Polled`] one, taken out of the runtime's epoll set, that reads only when asked
//! ([`Polled::fill_now`]): a client that polls on a timer is not woken per TCP segment.

use std::io::{Read as _, Write as _};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::measure::BoxError;

/// The read buffer's size: one read takes up to this much.
const READ_BUFFER: usize = 256 * 1024;

/// The socket's receive buffer (`SO_RCVBUF`; Linux caps it at `net.core.rmem_max`).
const SOCKET_RECV_BUFFER: u32 = 4 * 1024 * 1024;

/// The largest frame the floor accepts (the read buffer grows up to it).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A client WebSocket connection over `S`: a [`TcpStream`] read through the runtime, or a
/// [`std::net::TcpStream`] read when polled ([`Polled`]).
pub(crate) struct Wire<S = TcpStream> {
    stream: S,
    /// The read buffer, initialized once: `read[start..end]` is read and not yet parsed.
    read: Vec<u8>,
    start: usize,
    end: usize,
    /// Frames written since the last flush.
    write: Vec<u8>,
    /// The xorshift state the masking keys come from.
    mask_state: u32,
}

/// A connection out of the runtime's epoll set, read only by [`Polled::fill_now`].
pub(crate) type Polled = Wire<std::net::TcpStream>;

/// A frame read from the server: its opcode and its payload's range in the read buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    opcode: u8,
    from: usize,
    to: usize,
}

impl Wire {
    /// Connects to `url` (`ws://HOST:PORT/PATH`) and completes the WebSocket handshake.
    pub(crate) async fn connect(url: &str) -> Result<Self, BoxError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("the floor speaks ws:// only, not {url:?}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| format!("{authority:?} resolves to no address"))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Room for what piles up between two polls (a window of 4 KiB replies), which the
        // kernel's autotuning, sized by what one read takes, would not give.
        socket.set_recv_buffer_size(SOCKET_RECV_BUFFER)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0x9e37_79b9);
        // Both buffers are written through once here, before any measurement starts, so
        // that their pages count in the resident set already (the channels workload measures
        // its growth): zeros would come from untouched pages.
        let mut write = vec![0xff; READ_BUFFER];
        write.clear();
        let mut wire = Self {
            stream,
            read: vec![0xff; READ_BUFFER],
            start: 0,
            end: 0,
            write,
            mask_state: seed | 1,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        wire.stream.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(at) = wire.unparsed().windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if wire.end > 16 * 1024 {
                return Err("the handshake response is too long".into());
            }
            wire.fill().await?;
        };
        let head = String::from_utf8_lossy(&wire.unparsed()[..end]);
        if !head.starts_with("HTTP/1.1 101") {
            let line = head.lines().next().unwrap_or_default();
            return Err(format!("the server refused the upgrade: {line}").into());
        }
        wire.start = end;
        Ok(wire)
    }

    /// Writes every frame appended since the last flush, in one write where the kernel
    /// takes it.
    pub(crate) async fn flush(&mut self) -> Result<(), BoxError> {
        self.stream.write_all(&self.write).await?;
        self.write.clear();
        Ok(())
    }

    /// The next text or binary frame, reading from the socket only when the buffer holds no complete
    /// frame. Pings are answered (at the next flush); a close frame is an error.
    pub(crate) async fn next(&mut self) -> Result<Frame, BoxError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Waits until the socket is readable, then reads once, as much as the buffer takes;
    /// returns how many bytes.
    pub(crate) async fn fill(&mut self) -> Result<usize, BoxError> {
        self.make_room()?;
        match self.stream.read(&mut self.read[self.end..]).await? {
            0 => Err("connection closed".into()),
            n => {
                self.end += n;
                Ok(n)
            }
        }
    }

    /// This connection taken out of the runtime's epoll set (the runtime no longer wakes on
    /// its segments), to be read by [`Polled::fill_now`]; the buffers stay.
    pub(crate) fn into_polled(self) -> Result<Polled, BoxError> {
        let stream = self.stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(Wire {
            stream,
            read: self.read,
            start: self.start,
            end: self.end,
            write: self.write,
            mask_state: self.mask_state,
        })
    }
}

impl Polled {
    /// Writes as much of the frames appended since the last flush as the socket takes now,
    /// in one write (where the kernel takes it all), without waiting; the rest stays for the
    /// next flush. Returns whether everything was written.
    pub(crate) fn flush_now(&mut self) -> Result<bool, BoxError> {
        let mut written = 0;
        while written < self.write.len() {
            match self.stream.write(&self.write[written..]) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.write.drain(..written);
        Ok(self.write.is_empty())
    }

    /// Reads what the socket holds now, without waiting: one read, as much as the buffer
    /// takes; 0 when nothing was there.
    pub(crate) fn fill_now(&mut self) -> Result<usize, BoxError> {
        self.make_room()?;
        match self.stream.read(&mut self.read[self.end..]) {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.end += n;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl<S> Wire<S> {
    /// Appends one masked text frame whose payload is `parts` concatenated (sent at the next
    /// [`Wire::flush`]).
    pub(crate) fn text(&mut self, parts: &[&[u8]]) {
        self.frame(0x1, parts);
    }

    /// Appends one masked binary frame (MessagePack, `vsn=3.0.0`) whose payload is `parts`
    /// concatenated.
    pub(crate) fn binary(&mut self, parts: &[&[u8]]) {
        self.frame(0x2, parts);
    }

    fn frame(&mut self, opcode: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let w = &mut self.write;
        w.push(0x80 | opcode);
        if len < 126 {
            w.push(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            w.push(0x80 | 126);
            w.extend_from_slice(&len.to_be_bytes());
        } else {
            w.push(0x80 | 127);
            w.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: a fresh masking key per frame.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let key = x.to_ne_bytes();
        w.extend_from_slice(&key);
        let at = w.len();
        for part in parts {
            w.extend_from_slice(part);
        }
        mask(&mut w[at..], key);
    }

    /// The next text or binary frame already in the buffer, without reading from the socket.
    pub(crate) fn buffered(&mut self) -> Result<Option<Frame>, BoxError> {
        self.parse()
    }

    /// The payload of `frame` (valid until the next read).
    pub(crate) fn payload(&self, frame: Frame) -> &[u8] {
        &self.read[frame.from..frame.to]
    }

    /// The bytes read and not yet parsed.
    fn unparsed(&self) -> &[u8] {
        &self.read[self.start..self.end]
    }

    /// Frees the buffer's tail for the next read: drops the parsed bytes (moving a partial
    /// frame to the front), and doubles the buffer when a partial frame fills it.
    fn make_room(&mut self) -> Result<(), BoxError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 && self.read.len() - self.end < self.read.len() / 4 {
            self.read.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.read.len() {
            if self.read.len() >= MAX_FRAME {
                return Err(format!("a frame longer than {MAX_FRAME} bytes").into());
            }
            self.read.resize(self.read.len() * 2, 0);
        }
        Ok(())
    }

    fn parse(&mut self) -> Result<Option<Frame>, BoxError> {
        loop {
            let buf = &self.read[self.start..self.end];
            let [b0, b1, ..] = *buf else {
                return Ok(None);
            };
            if b1 & 0x80 != 0 {
                return Err("the server sent a masked frame".into());
            }
            let (len, header) = match b1 & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&buf[2..10]);
                    (usize::try_from(u64::from_be_bytes(be))?, 10)
                }
                126 | 127 => return Ok(None),
                n => (usize::from(n), 2),
            };
            if len > MAX_FRAME {
                return Err(format!("a frame of {len} bytes (the floor takes {MAX_FRAME})").into());
            }
            if buf.len() < header + len {
                return Ok(None);
            }
            let from = self.start + header;
            let frame = Frame {
                opcode: b0 & 0x0f,
                from,
                to: from + len,
            };
            self.start = frame.to;
            if b0 & 0x80 == 0 {
                return Err("the server sent a fragmented frame (unsupported by the floor)".into());
            }
            match frame.opcode {
                0x1 | 0x2 => return Ok(Some(frame)),
                0x9 => {
                    let ping = self.read[frame.from..frame.to].to_vec();
                    self.frame(0xA, &[&ping]);
                }
                0xA => {}
                0x8 => return Err("the server closed the connection".into()),
                other => return Err(format!("unsupported frame opcode {other}").into()),
            }
        }
    }
}

/// XORs `data` with the repeated 4-byte `key`, eight bytes at a time.
fn mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// The ref of a MessagePack reply `[JOIN_REF, "REF", ...]` (a fixarray of 5 whose second
/// element is a short string of digits); `None` for anything else (broadcasts have `nil`
/// refs).
pub(crate) fn msgpack_reply_ref(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(&[0x95])?;
    // The join ref: nil or a short string.
    let rest = match *rest.first()? {
        0xc0 => &rest[1..],
        b @ 0xa0..=0xbf => rest.get(1 + usize::from(b & 0x1f)..)?,
        _ => return None,
    };
    let len = match *rest.first()? {
        b @ 0xa1..=0xbf => usize::from(b & 0x1f),
        _ => return None,
    };
    digits(rest.get(1..1 + len)?)
}

/// A run of ASCII digits as a number.
fn digits(digits: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The ref of a reply `["JOIN_REF","REF",...` when it is a number; `None` for anything else
/// (broadcasts have `null` refs).
pub(crate) fn reply_ref(text: &[u8]) -> Option<u64> {
    let rest = text.strip_prefix(b"[\"")?;
    let rest = &rest[rest.iter().position(|&b| b == b'"')? + 1..];
    let rest = rest.strip_prefix(b",\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    if end == 0 {
        return None;
    }
    digits(&rest[..end])
}
