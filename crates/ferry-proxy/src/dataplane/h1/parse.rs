//! Pure parsing of the HTTP/1.1 fast path: request and response heads read in place (as
//! ranges of the connection's buffer, never copied into maps), the framing rules that
//! keep a request from being read two ways (smuggling), and the chunked-body scanner.

use std::ops::Range;

use http::header::HeaderName;

/// Longest request or response head the fast path reads (431 / 502 beyond).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a head (431 / 502 beyond).
pub(crate) const MAX_HEADERS: usize = 100;

/// One header line: its name and value as ranges of the head's buffer.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head; ranges index the buffer it was parsed from.
#[derive(Debug, Default)]
pub(crate) struct ReqHead {
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// HTTP/1.x minor version.
    pub minor: u8,
}

/// A parsed response head.
#[derive(Debug, Default)]
pub(crate) struct RespHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub minor: u8,
}

/// Why a head cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// More than [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    TooLarge,
    /// Not HTTP/1.x as the fast path reads it (bad syntax, obs-fold, HTTP/2 preface...).
    Malformed,
}

pub(crate) fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn lines_of(buf: &[u8], headers: &[httparse::Header<'_>], out: &mut Vec<Line>) {
    out.clear();
    out.extend(headers.iter().map(|h| Line {
        name: range_of(buf, h.name.as_bytes()),
        value: range_of(buf, h.value),
    }));
}

/// Parses a request head at the start of `buf`: `Ok(None)` while incomplete.
pub(crate) fn request(buf: &[u8], lines: &mut Vec<Line>) -> Result<Option<ReqHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version)
            else {
                return Err(HeadError::Malformed);
            };
            lines_of(buf, req.headers, lines);
            Ok(Some(ReqHead {
                len,
                method: range_of(buf, method.as_bytes()),
                target: range_of(buf, target.as_bytes()),
                minor,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Parses a response head at the start of `buf`: `Ok(None)` while incomplete.
pub(crate) fn response(buf: &[u8], lines: &mut Vec<Line>) -> Result<Option<RespHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let (Some(status), Some(minor)) = (resp.code, resp.version) else {
                return Err(HeadError::Malformed);
            };
            lines_of(buf, resp.headers, lines);
            Ok(Some(RespHead {
                len,
                status,
                reason: range_of(buf, resp.reason.unwrap_or("").as_bytes()),
                minor,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// The header lines of a head, read in place.
#[derive(Clone, Copy)]
pub(crate) struct HeadLines<'a> {
    pub buf: &'a [u8],
    pub lines: &'a [Line],
}

impl<'a> HeadLines<'a> {
    pub fn iter(self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.lines
            .iter()
            .map(move |l| (&self.buf[l.name.clone()], &self.buf[l.value.clone()]))
    }

    pub fn all(self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl crate::table::Headers for HeadLines<'_> {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    fn cookie(&self, name: &[u8]) -> Option<&[u8]> {
        self.all(b"cookie")
            .find_map(|v| crate::table::cookie_value(v, name))
    }
}

/// Comma-separated tokens of a header value, trimmed, empty ones skipped.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The header names the proxy treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// Hop-by-hop (RFC 9110 7.6.1 and the usual non-standard ones): never forwarded.
    HopByHop,
    Host,
    ForwardedFor,
    /// `X-Forwarded-Host` and `X-Forwarded-Proto`: set by the proxy.
    Forwarded,
    RequestId,
    Hsts,
    Date,
    /// `Expect`: answered by the proxy itself (`100 Continue`), never forwarded.
    Expect,
    /// `Ferry-Flags` (a response's: the flags it evaluated, counted and removed).
    FerryFlags,
    Other,
}

/// Classifies a header name (dispatching on its length first: most names are none).
pub(crate) fn classify(n: &[u8]) -> Name {
    let is = |s: &[u8]| n.eq_ignore_ascii_case(s);
    match n.len() {
        2 if is(b"te") => Name::HopByHop,
        4 if is(b"host") => Name::Host,
        4 if is(b"date") => Name::Date,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"trailer") || is(b"upgrade") => Name::HopByHop,
        10 if is(b"connection") || is(b"keep-alive") => Name::HopByHop,
        11 if is(b"ferry-flags") => Name::FerryFlags,
        12 if is(b"x-request-id") => Name::RequestId,
        15 if is(b"x-forwarded-for") => Name::ForwardedFor,
        16 if is(b"x-forwarded-host") => Name::Forwarded,
        16 if is(b"proxy-connection") => Name::HopByHop,
        17 if is(b"x-forwarded-proto") => Name::Forwarded,
        17 if is(b"transfer-encoding") => Name::HopByHop,
        18 if is(b"proxy-authenticate") => Name::HopByHop,
        19 if is(b"proxy-authorization") => Name::HopByHop,
        25 if is(b"strict-transport-security") => Name::Hsts,
        _ => Name::Other,
    }
}

pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    classify(name) == Name::HopByHop
}

/// What the proxy needs to know of a request's (or response's) header lines, gathered
/// in one pass.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// `Content-Length`, when there is exactly one valid one.
    pub content_length: Option<u64>,
    pub transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    pub chunked: bool,
    /// One `Transfer-Encoding` line, whose only coding is `chunked` (the one framing of a
    /// request body the fast path streams besides `Content-Length`).
    pub chunked_only: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive` (HTTP/1.0 peers).
    pub keep_alive: bool,
    /// `Connection` names headers other than the standard hop-by-hop ones.
    pub connection_lists_others: bool,
    pub upgrade: bool,
    pub expect: Expect,
    pub hosts: u8,
}

/// What a request's `Expect` header asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    #[default]
    Nothing,
    /// `100-continue` (one line, that token alone, any case).
    Continue,
    /// Anything else, or several lines.
    Other,
}

/// How a message's framing headers are wrong (a request is refused with 400 then, as
/// nginx does: reading it one way while a peer reads it another is request smuggling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndEncoding,
    /// More than one `Content-Length` line.
    DuplicateLength,
    /// A `Content-Length` that is not a plain decimal number.
    BadLength,
}

impl FramingError {
    pub fn message(self) -> &'static str {
        match self {
            FramingError::LengthAndEncoding => {
                "ferry-proxy: a request may not have both Content-Length and Transfer-Encoding\n"
            }
            FramingError::DuplicateLength => {
                "ferry-proxy: a request may have only one Content-Length\n"
            }
            FramingError::BadLength => "ferry-proxy: Content-Length is not a number\n",
        }
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One pass over the header lines; strict about the message's framing.
pub(crate) fn framing(h: HeadLines<'_>) -> Result<Framing, FramingError> {
    let mut f = Framing::default();
    let mut lengths = 0u32;
    for (name, value) in h.iter() {
        // Dispatch on length first: most lines are none of these.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => f.hosts = f.hosts.saturating_add(1),
            6 if name.eq_ignore_ascii_case(b"expect") => {
                f.expect = match f.expect {
                    Expect::Nothing if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") => {
                        Expect::Continue
                    }
                    _ => Expect::Other,
                };
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => f.upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if !is_hop_by_hop(t) {
                        f.connection_lists_others = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                f.content_length = Some(parse_length(value).ok_or(FramingError::BadLength)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                let first = !f.transfer_encoding;
                f.transfer_encoding = true;
                let is_chunked = |t: &[u8]| t.eq_ignore_ascii_case(b"chunked");
                f.chunked = tokens(value).last().is_some_and(is_chunked);
                f.chunked_only = first && f.chunked && tokens(value).count() == 1;
            }
            _ => {}
        }
    }
    if lengths > 1 {
        return Err(FramingError::DuplicateLength);
    }
    if lengths == 1 && f.transfer_encoding {
        return Err(FramingError::LengthAndEncoding);
    }
    Ok(f)
}

/// Whether `Connection` names this header (which is hop-by-hop then).
pub(crate) fn listed(name: &[u8], h: HeadLines<'_>, f: &Framing) -> bool {
    f.connection_lists_others
        && h.all(b"connection")
            .flat_map(tokens)
            .any(|t| t.eq_ignore_ascii_case(name))
}

/// Finds where a chunked body ends, fed the bytes as they arrive (they are forwarded
/// unchanged). Strict: hex sizes, CRLF after each chunk's data.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

/// A chunked body that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadChunk;

impl Chunked {
    /// Feeds `data`; returns `Some(n)` when the body ends after its first `n` bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err(BadChunk);
                        }
                        self.digits += 1;
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(BadChunk),
                },
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                    self.digits = 0;
                }
                Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = Size;
                }
                TrailerStart => match b {
                    b'\r' => self.state = EndLf,
                    b'\n' => return Err(BadChunk),
                    _ => self.state = TrailerLine,
                },
                TrailerLine => {
                    if b == b'\n' {
                        self.state = TrailerStart;
                    }
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = Done;
                    return Ok(Some(i + 1));
                }
                Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == Done).then_some(data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[u8]) -> Result<Option<(ReqHead, Vec<Line>)>, HeadError> {
        let mut lines = Vec::new();
        request(raw, &mut lines).map(|h| h.map(|h| (h, lines)))
    }

    fn framing_of(raw: &[u8]) -> Result<Framing, FramingError> {
        let (_, lines) = req(raw).expect("parses").expect("complete");
        framing(HeadLines {
            buf: raw,
            lines: &lines,
        })
    }

    #[test]
    fn request_heads_are_read_in_place() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nX-A:  1 \r\n\r\nrest";
        let (h, lines) = req(raw).unwrap().unwrap();
        assert_eq!(&raw[h.method.clone()], b"GET");
        assert_eq!(&raw[h.target.clone()], b"/a?b=1");
        assert_eq!((h.minor, h.len), (1, raw.len() - 4));
        let hl = HeadLines {
            buf: raw,
            lines: &lines,
        };
        let all: Vec<_> = hl.iter().collect();
        assert_eq!(all, [(&b"Host"[..], &b"shop"[..]), (b"X-A", b"1")]);
        assert!(req(b"GET / HTTP/1.1\r\nHost: shop\r\n").unwrap().is_none());
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        // Both framings: refused, whichever comes first.
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        ] {
            assert_eq!(framing_of(raw).unwrap_err(), FramingError::LengthAndEncoding);
        }
        // Two lengths, equal or not, or a list.
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
        ] {
            assert_eq!(framing_of(raw).unwrap_err(), FramingError::DuplicateLength);
        }
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(framing_of(raw).unwrap_err(), FramingError::BadLength);
        }
        // Obsolete line folding, a space before the colon, a bare CR: not a head.
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\rX-A: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        ] {
            assert_eq!(req(raw).unwrap_err(), HeadError::Malformed, "{raw:?}");
        }
        // The HTTP/2 preface is not HTTP/1.x (handed to hyper).
        assert_eq!(
            req(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap_err(),
            HeadError::Malformed
        );
        // Bare LF line ends are read (as nginx does) and the lines forwarded with CRLF.
        let f = framing_of(b"POST / HTTP/1.1\nHost: a\nContent-Length: 3\n\n").unwrap();
        assert_eq!(f.content_length, Some(3));
    }

    #[test]
    fn heads_are_bounded() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(req(&raw).unwrap_err(), HeadError::TooLarge);
        let mut raw = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        raw.resize(MAX_HEAD + 1, b'a');
        assert_eq!(req(&raw).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn connection_tokens() {
        let f = framing_of(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(f.close && f.keep_alive && !f.connection_lists_others);
        let raw = b"GET / HTTP/1.1\r\nConnection: x-secret, upgrade\r\nX-Secret: 1\r\nUpgrade: ws\r\n\r\n";
        let (_, lines) = req(raw).unwrap().unwrap();
        let hl = HeadLines {
            buf: raw,
            lines: &lines,
        };
        let f = framing(hl).unwrap();
        assert!(f.connection_lists_others && f.upgrade);
        assert!(listed(b"X-SECRET", hl, &f));
        assert!(is_hop_by_hop(b"Upgrade"));
        assert!(!listed(b"x-other", hl, &f) && !is_hop_by_hop(b"x-other"));
    }

    #[test]
    fn expectations_and_request_codings() {
        let f = |raw: &[u8]| framing_of(raw).unwrap();
        assert_eq!(f(b"PUT / HTTP/1.1\r\n\r\n").expect, Expect::Nothing);
        assert_eq!(
            f(b"PUT / HTTP/1.1\r\nExpect:  100-Continue \r\n\r\n").expect,
            Expect::Continue
        );
        for other in [
            &b"PUT / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\nExpect: 100-continue, x\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(f(other).expect, Expect::Other);
        }
        let te = f(b"PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(te.transfer_encoding && te.chunked && te.chunked_only);
        for not_only in [
            &b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            let g = f(not_only);
            assert!(g.transfer_encoding && !g.chunked_only);
        }
        assert_eq!(classify(b"DATE"), Name::Date);
        assert_eq!(classify(b"expect"), Name::Expect);
        assert_eq!(classify(b"Ferry-Flags"), Name::FerryFlags);
    }

    #[test]
    fn chunked_bodies_end_where_they_say() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        // Whole, and byte by byte.
        assert_eq!(Chunked::default().feed(body), Ok(Some(body.len() - 4)));
        let mut c = Chunked::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c.feed(std::slice::from_ref(b)).unwrap() {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len() - 4));
        // Trailers.
        let t = b"0\r\nx-sum: 1\r\n\r\n";
        assert_eq!(Chunked::default().feed(t), Ok(Some(t.len())));
        // Incomplete.
        assert_eq!(Chunked::default().feed(b"5\r\nhel"), Ok(None));
        // Bad sizes, missing CRLF after data, bare LF, oversized.
        for bad in [
            &b"ZZ\r\nhello\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(BadChunk), "{bad:?}");
        }
    }

    /// xorshift: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Mutated requests (bytes inserted, removed, lines doubled) never panic the parser,
    /// and whatever it accepts has one framing an independent reading agrees with: at
    /// most one length, never a length and an encoding together.
    #[test]
    fn mutated_heads_are_refused_or_read_one_way() {
        const TEMPLATE: &[u8] = b"POST /a HTTP/1.1\r\nHost: shop\r\nContent-Length: 4\r\n\
            Transfer-Encoding: chunked\r\nX-A: 1\r\n\r\nbody";
        const NOISE: &[&[u8]] = &[
            b"\r",
            b"\n",
            b" ",
            b"\t",
            b":",
            b"\0",
            b",",
            b"\r\n",
            b"\r\n ",
            b"Content-Length: 5\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\x7f",
            b"\xff",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut raw = TEMPLATE.to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(raw.len());
                match rng.below(3) {
                    0 => {
                        let n = NOISE[rng.below(NOISE.len())];
                        raw.splice(at..at, n.iter().copied());
                    }
                    1 => {
                        raw.remove(at);
                    }
                    _ => {
                        // Removes the Content-Length or the Transfer-Encoding line.
                        let line: &[u8] = if rng.below(2) == 0 {
                            b"Content-Length: 4\r\n"
                        } else {
                            b"Transfer-Encoding: chunked\r\n"
                        };
                        if let Some(i) = raw.windows(line.len()).position(|w| w == line) {
                            raw.drain(i..i + line.len());
                        }
                    }
                }
            }
            let mut lines = Vec::new();
            let Ok(Some(head)) = request(&raw, &mut lines) else {
                continue;
            };
            let hl = HeadLines {
                buf: &raw,
                lines: &lines,
            };
            let Ok(f) = framing(hl) else {
                continue;
            };
            accepted += 1;
            // Independent reading of the accepted head's lines.
            let named = |want: &str| {
                hl.iter()
                    .filter(|(n, _)| {
                        std::str::from_utf8(n).is_ok_and(|n| n.eq_ignore_ascii_case(want))
                    })
                    .count()
            };
            let (lengths, encodings) = (named("content-length"), named("transfer-encoding"));
            assert!(lengths <= 1, "{:?}", String::from_utf8_lossy(&raw));
            assert!(
                lengths == 0 || encodings == 0,
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
            assert_eq!(f.transfer_encoding, encodings > 0);
            assert_eq!(f.content_length.is_some(), lengths == 1);
            assert!(head.len <= raw.len());
            // Every name is a token: no whitespace, no colon, nothing a peer could split.
            for (n, v) in hl.iter() {
                assert!(!n.is_empty() && n.iter().all(|b| b.is_ascii_graphic() && *b != b':'));
                assert!(!v.contains(&b'\r') && !v.contains(&b'\n'), "{v:?}");
            }
        }
        assert!(
            accepted > 100,
            "the mutations left too few valid heads ({accepted})"
        );
    }

    /// A chunked body fed in random pieces ends where it ends when fed whole.
    #[test]
    fn chunked_bodies_end_in_the_same_place_however_they_arrive() {
        let body =
            b"1a;x=y\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /next";
        let end = Chunked::default().feed(body).unwrap().unwrap();
        assert_eq!(&body[end..], b"GET /next");
        let mut rng = Rng(42);
        for _ in 0..2_000 {
            let mut c = Chunked::default();
            let mut at = 0;
            let found = loop {
                let n = 1 + rng.below(8);
                let piece = &body[at..(at + n).min(body.len())];
                if let Some(k) = c.feed(piece).unwrap() {
                    break at + k;
                }
                at += piece.len();
            };
            assert_eq!(found, end);
        }
    }
}
