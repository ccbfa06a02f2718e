//! A deliberately naive HTTP/2 client that writes frames byte for byte, for requests no real
//! client library will send (connection-specific headers, uppercase names, CR LF in values,
//! a `content-length` the DATA frames contradict). hyper and the `h2` crate refuse to build
//! them, which is exactly why a gate must not trust that nobody sends them.
//!
//! Header blocks use only HPACK literals without indexing and without Huffman coding, so what
//! is written is what the server decodes. Of the answer only what a test needs is read: the
//! `:status` of the response on stream 1 (an indexed static entry, or a literal, Huffman-coded
//! or not), a `RST_STREAM` or `GOAWAY`, or the connection closing; and, for
//! `whole_exchange`, the DATA frames up to the stream's end, which a real client may hide.
//!
//! `Raw` is the same client for many streams at once, as hostile clients use them: streams
//! reset a moment after they were opened, windows made to overflow, or hundreds of downloads
//! opened with huge windows on a socket that is then never read.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::tls_config;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
/// SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 §6.5.2).
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;
/// RST_STREAM's CANCEL, what a client sends for a request it no longer wants.
pub const CANCEL: u32 = 0x8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One frame to write on stream 1.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A header block, in order, names and values as bytes (pseudo-headers included).
    Headers {
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        end_stream: bool,
    },
    Data {
        bytes: Vec<u8>,
        end_stream: bool,
    },
    /// Not a frame: send what came before and wait, so the server acts on it first (the
    /// gate forwards a request head before its body has arrived).
    Pause(Duration),
}

impl Frame {
    /// A header block from text pairs.
    pub fn headers(fields: &[(&str, &str)], end_stream: bool) -> Frame {
        Frame::Headers {
            fields: fields
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            end_stream,
        }
    }

    pub fn data(bytes: &[u8], end_stream: bool) -> Frame {
        Frame::Data {
            bytes: bytes.to_vec(),
            end_stream,
        }
    }
}

/// How the server answered stream 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A response with this status.
    Status(u16),
    /// A response whose status this client could not decode (a dynamic-table reference).
    UndecodedHeaders,
    /// The stream was reset, with this error code (1 is PROTOCOL_ERROR).
    Reset(u32),
    /// The connection was shut down, with this error code.
    GoAway(u32),
    /// The connection closed, or nothing came back in time.
    Nothing,
}

impl Answer {
    /// True for every way of saying no: a 4xx, a reset stream, a closed connection.
    pub fn is_refusal(&self) -> bool {
        match self {
            Answer::Status(s) => (400..500).contains(s),
            Answer::Reset(_) | Answer::GoAway(_) | Answer::Nothing => true,
            Answer::UndecodedHeaders => false,
        }
    }
}

/// Opens a TLS connection offering only `h2`, writes the preface, SETTINGS and `frames` on
/// stream 1, and returns how stream 1 was answered.
pub async fn exchange(addr: SocketAddr, ca_pem: &Path, frames: &[Frame]) -> io::Result<Answer> {
    Ok(talk(addr, ca_pem, frames, false).await?.answer)
}

/// The whole of stream 1's answer: how it began, and the DATA bytes that came before the
/// stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeAnswer {
    pub answer: Answer,
    /// Payload bytes of every DATA frame on stream 1, padding included.
    pub data_bytes: usize,
    /// DATA frames on stream 1, empty ones included.
    pub data_frames: usize,
    /// The stream ended (END_STREAM) rather than being reset, cut off or left open.
    pub ended: bool,
}

/// Like `exchange`, but reads stream 1 to its end and counts what came in DATA frames: the
/// frames hyper's client would hide (it drops a body it knows a HEAD answer cannot have).
pub async fn whole_exchange(
    addr: SocketAddr,
    ca_pem: &Path,
    frames: &[Frame],
) -> io::Result<WholeAnswer> {
    talk(addr, ca_pem, frames, true).await
}

async fn talk(
    addr: SocketAddr,
    ca_pem: &Path,
    frames: &[Frame],
    whole: bool,
) -> io::Result<WholeAnswer> {
    let mut tls = connect_h2(addr, ca_pem).await?;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    for f in frames {
        match f {
            Frame::Headers { fields, end_stream } => {
                let mut block = Vec::new();
                for (name, value) in fields {
                    // Literal header field without indexing, new name (RFC 7541 §6.2.2).
                    block.push(0x00);
                    string(&mut block, name);
                    string(&mut block, value);
                }
                let flags = END_HEADERS | if *end_stream { END_STREAM } else { 0 };
                frame(&mut out, HEADERS, flags, 1, &block);
            }
            Frame::Data { bytes, end_stream } => {
                let flags = if *end_stream { END_STREAM } else { 0 };
                frame(&mut out, DATA, flags, 1, bytes);
            }
            Frame::Pause(wait) => {
                let _ = tls.write_all(&out).await;
                let _ = tls.flush().await;
                out.clear();
                tokio::time::sleep(*wait).await;
            }
        }
    }
    // The server may reset the stream before reading everything: a failed write is an answer
    // too, so read what it said rather than stop here.
    let _ = tls.write_all(&out).await;
    let _ = tls.flush().await;

    let mut buf = Vec::new();
    let mut seen = WholeAnswer {
        answer: Answer::Nothing,
        data_bytes: 0,
        data_frames: 0,
        ended: false,
    };
    let read = async {
        loop {
            while let Some((kind, flags, stream, payload, used)) = parse(&buf) {
                buf.drain(..used);
                match (kind, stream) {
                    (SETTINGS, 0) if flags & ACK == 0 => {
                        let mut ack = Vec::new();
                        frame(&mut ack, SETTINGS, ACK, 0, &[]);
                        let _ = tls.write_all(&ack).await;
                    }
                    (PING, 0) if flags & ACK == 0 => {
                        let mut pong = Vec::new();
                        frame(&mut pong, PING, ACK, 0, &payload);
                        let _ = tls.write_all(&pong).await;
                    }
                    (HEADERS, 1) => {
                        // A second header block is the trailers; the first has the status.
                        if seen.answer == Answer::Nothing {
                            seen.answer = status(&payload, flags);
                        }
                        seen.ended = flags & END_STREAM != 0;
                        if !whole || seen.ended {
                            return;
                        }
                    }
                    (DATA, 1) => {
                        seen.data_bytes += payload.len();
                        seen.data_frames += 1;
                        seen.ended = flags & END_STREAM != 0;
                        if seen.ended {
                            return;
                        }
                    }
                    (RST_STREAM, 1) => {
                        if seen.answer == Answer::Nothing {
                            seen.answer = Answer::Reset(u32_at(&payload, 0));
                        }
                        return;
                    }
                    (GOAWAY, 0) => {
                        if seen.answer == Answer::Nothing {
                            seen.answer = Answer::GoAway(u32_at(&payload, 4));
                        }
                        return;
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // Nothing more in time leaves what was seen so far: `Nothing`, or a stream not ended.
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    Ok(seen)
}

/// A raw HTTP/2 connection for many streams. Frames are queued with the methods below and
/// go out on `flush`; nothing is read unless `watch` is called.
pub struct Raw {
    writer: Arc<tokio::sync::Mutex<tokio::io::WriteHalf<TlsStream>>>,
    reader: Option<tokio::io::ReadHalf<TlsStream>>,
    out: Vec<u8>,
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the gate at `addr` that negotiated h2. Nagle's algorithm is off, so
/// each flush leaves at once: it would hold a reset back until the HEADERS before it were
/// acknowledged, turning a delayed reset into an immediate one.
async fn connect_h2(addr: SocketAddr, ca_pem: &Path) -> io::Result<TlsStream> {
    let mut config = tls_config(ca_pem);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector.connect(name, tcp).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(io::Error::other("the gate did not negotiate h2"));
    }
    Ok(tls)
}

/// What the server sent on a watched `Raw` connection.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The first GOAWAY: (last stream id, error code).
    pub goaway: Option<(u32, u32)>,
    /// The connection closed (or a read failed).
    pub closed: bool,
    /// The server's SETTINGS arrived: the connection is set up.
    pub settings: bool,
    /// HEADERS frames received (response heads) and RST_STREAM frames.
    pub heads: u64,
    pub resets: u64,
}

impl Raw {
    /// Opens a TLS connection offering only `h2` and queues the preface and a SETTINGS frame
    /// with `settings` (identifier, value).
    pub async fn connect(
        addr: SocketAddr,
        ca_pem: &Path,
        settings: &[(u16, u32)],
    ) -> io::Result<Raw> {
        let tls = connect_h2(addr, ca_pem).await?;
        let (reader, writer) = tokio::io::split(tls);
        let mut out = PREFACE.to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| {
                let mut entry = id.to_be_bytes().to_vec();
                entry.extend_from_slice(&value.to_be_bytes());
                entry
            })
            .collect();
        frame(&mut out, SETTINGS, 0, 0, &payload);
        Ok(Raw {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            reader: Some(reader),
            out,
        })
    }

    /// Queues a header block on `stream` (client streams are odd and rising).
    pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            string(&mut block, name.as_bytes());
            string(&mut block, value.as_bytes());
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(&mut self.out, HEADERS, flags, stream, &block);
    }

    pub fn rst_stream(&mut self, stream: u32, code: u32) {
        frame(&mut self.out, RST_STREAM, 0, stream, &code.to_be_bytes());
    }

    /// Queues a WINDOW_UPDATE; stream 0 is the connection.
    pub fn window_update(&mut self, stream: u32, increment: u32) {
        frame(
            &mut self.out,
            WINDOW_UPDATE,
            0,
            stream,
            &increment.to_be_bytes(),
        );
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        let mut writer = self.writer.lock().await;
        writer.write_all(&self.out).await?;
        self.out.clear();
        writer.flush().await
    }

    /// Reads the connection from now on, acknowledging SETTINGS and PINGs as a live client
    /// does, and keeps what it saw in the returned record.
    pub fn watch(&mut self) -> Arc<std::sync::Mutex<Seen>> {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let Some(mut reader) = self.reader.take() else {
            return seen;
        };
        let writer = self.writer.clone();
        let record = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                while let Some((kind, flags, stream, payload, used)) = parse(&buf) {
                    buf.drain(..used);
                    let mut reply = Vec::new();
                    {
                        let mut seen = record.lock().expect("seen lock");
                        match (kind, stream) {
                            (SETTINGS, 0) if flags & ACK == 0 => {
                                seen.settings = true;
                                frame(&mut reply, SETTINGS, ACK, 0, &[]);
                            }
                            (PING, 0) if flags & ACK == 0 => {
                                frame(&mut reply, PING, ACK, 0, &payload)
                            }
                            (GOAWAY, 0) => {
                                let first =
                                    (u32_at(&payload, 0) & 0x7fff_ffff, u32_at(&payload, 4));
                                seen.goaway.get_or_insert(first);
                            }
                            (HEADERS, _) => seen.heads += 1,
                            (RST_STREAM, _) => seen.resets += 1,
                            _ => {}
                        }
                    }
                    if !reply.is_empty() {
                        let _ = writer.lock().await.write_all(&reply).await;
                    }
                }
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            record.lock().expect("seen lock").closed = true;
        });
        seen
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One whole frame at the start of `buf`: (type, flags, stream, payload, bytes used).
fn parse(buf: &[u8]) -> Option<(u8, u8, u32, Vec<u8>, usize)> {
    if buf.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
    if buf.len() < 9 + len {
        return None;
    }
    let stream = u32_at(buf, 5) & 0x7fff_ffff;
    Some((buf[3], buf[4], stream, buf[9..9 + len].to_vec(), 9 + len))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// The `:status` of a HEADERS payload; hyper writes it first.
fn status(payload: &[u8], flags: u8) -> Answer {
    let mut block = payload;
    if flags & 0x8 != 0 {
        // PADDED: pad length first, padding last.
        let pad = *block.first().unwrap_or(&0) as usize;
        block = block.get(1..block.len().saturating_sub(pad)).unwrap_or(&[]);
    }
    if flags & 0x20 != 0 {
        // PRIORITY: five bytes of dependency and weight.
        block = block.get(5..).unwrap_or(&[]);
    }
    let Some(&first) = block.first() else {
        return Answer::UndecodedHeaders;
    };
    // Indexed static entries 8..=14 are the statuses 200 204 206 304 400 404 500.
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    if (0x88..=0x8e).contains(&first) {
        return Answer::Status(STATIC[(first - 0x88) as usize]);
    }
    // A literal whose name is static entry 8..=14 (`:status`): with indexing (01xxxxxx),
    // without (0000xxxx) or never indexed (0001xxxx).
    let name_index = match first {
        0x40..=0x7f => first & 0x3f,
        0x00..=0x1f => first & 0x0f,
        _ => return Answer::UndecodedHeaders,
    };
    if !(8..=14).contains(&name_index) {
        return Answer::UndecodedHeaders;
    }
    let Some(&len_byte) = block.get(1) else {
        return Answer::UndecodedHeaders;
    };
    let len = (len_byte & 0x7f) as usize;
    let Some(value) = block.get(2..2 + len) else {
        return Answer::UndecodedHeaders;
    };
    let digits = if len_byte & 0x80 != 0 {
        huffman_digits(value)
    } else {
        Some(value.to_vec())
    };
    digits
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|s| s.parse().ok())
        .map(Answer::Status)
        .unwrap_or(Answer::UndecodedHeaders)
}

/// Decodes a Huffman-coded string of ASCII digits (a status code): '0'-'2' have 5-bit codes
/// 00000-00010, '3'-'9' 6-bit codes 011001-011111 (RFC 7541 Appendix B). Padding is all ones.
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| -> Option<u8> {
        let slice = bits.get(at..at + n)?;
        Some(slice.iter().fold(0u8, |acc, b| (acc << 1) | b))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < bits.len() {
        if bits[at..].iter().all(|b| *b == 1) && bits.len() - at < 8 {
            break;
        }
        let five = take(at, 5)?;
        if five <= 0b00010 {
            out.push(b'0' + five);
            at += 5;
            continue;
        }
        let six = take(at, 6)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push(b'3' + (six - 0b011001));
            at += 6;
            continue;
        }
        return None;
    }
    Some(out)
}
