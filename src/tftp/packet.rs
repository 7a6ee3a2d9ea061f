//! TFTP packets (RFC 1350) and option negotiation (RFC 2347, 2348, 2349, 7440): pure
//! functions, no I/O, strict about lengths so hostile input can only produce an error.

/// Read request.
pub const RRQ: u16 = 1;
/// Write request.
pub const WRQ: u16 = 2;
/// Data block.
pub const DATA: u16 = 3;
/// Acknowledgement.
pub const ACK: u16 = 4;
/// Error.
pub const ERROR: u16 = 5;
/// Option acknowledgement.
pub const OACK: u16 = 6;

/// Error code 0: not defined, see the message.
pub const E_UNDEFINED: u16 = 0;
/// Error code 1: file not found.
pub const E_NOT_FOUND: u16 = 1;
/// Error code 2: access violation.
pub const E_ACCESS: u16 = 2;
/// Error code 4: illegal TFTP operation.
pub const E_ILLEGAL: u16 = 4;
/// Error code 8: option negotiation refused (RFC 2347).
pub const E_OPTION: u16 = 8;

/// Block size without the blksize option.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest and largest blksize RFC 2348 allows.
pub const BLKSIZE_RANGE: std::ops::RangeInclusive<u16> = 8..=65464;
/// Largest windowsize this server grants (RFC 7440 allows 65535; more buys nothing here).
pub const MAX_WINDOWSIZE: u16 = 64;
/// Options beyond this many in one request are ignored (nobody needs more than a handful).
const MAX_OPTIONS: usize = 16;

/// Why a packet does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than its fixed part.
    #[error("packet too short ({0} bytes)")]
    Short(usize),
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    Opcode(u16),
    /// A string field lacks its terminating NUL.
    #[error("unterminated string")]
    Unterminated,
    /// A string field is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// Option names and values do not come in pairs.
    #[error("option without a value")]
    OddOptions,
    /// Transfer mode other than octet or netascii.
    #[error("unsupported transfer mode {0:?}")]
    Mode(String),
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The requested file name, exactly as sent (sanitise before use).
    pub filename: String,
    /// Transfer mode, lower-cased (`octet` or `netascii`).
    pub mode: String,
    /// Options in request order, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// RRQ.
    Read(Request),
    /// WRQ.
    Write(Request),
    /// DATA (block, payload).
    Data(u16, Vec<u8>),
    /// ACK (block).
    Ack(u16),
    /// ERROR (code, message).
    Error(u16, String),
    /// OACK (options).
    Oack(Vec<(String, String)>),
}

/// The opcode of a datagram, if it has one.
pub fn opcode(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Split NUL-terminated strings; the buffer must end with a NUL.
fn strings(b: &[u8]) -> Result<Vec<String>, PacketError> {
    if b.last() != Some(&0) {
        return Err(PacketError::Unterminated);
    }
    b[..b.len() - 1]
        .split(|&c| c == 0)
        .map(|s| String::from_utf8(s.to_vec()).map_err(|_| PacketError::NotUtf8))
        .collect()
}

fn options(fields: &[String]) -> Result<Vec<(String, String)>, PacketError> {
    if !fields.len().is_multiple_of(2) {
        return Err(PacketError::OddOptions);
    }
    Ok(fields.chunks(2).take(MAX_OPTIONS).map(|p| (p[0].to_ascii_lowercase(), p[1].clone())).collect())
}

fn request(body: &[u8]) -> Result<Request, PacketError> {
    let f = strings(body)?;
    if f.len() < 2 {
        return Err(PacketError::Unterminated);
    }
    let mode = f[1].to_ascii_lowercase();
    if mode != "octet" && mode != "netascii" {
        return Err(PacketError::Mode(f[1].clone()));
    }
    Ok(Request { filename: f[0].clone(), mode, options: options(&f[2..])? })
}

/// Decode one datagram.
pub fn decode(b: &[u8]) -> Result<Packet, PacketError> {
    let op = opcode(b).ok_or(PacketError::Short(b.len()))?;
    let body = &b[2..];
    let word = || -> Result<u16, PacketError> {
        if body.len() < 2 {
            return Err(PacketError::Short(b.len()));
        }
        Ok(u16::from_be_bytes([body[0], body[1]]))
    };
    match op {
        RRQ => Ok(Packet::Read(request(body)?)),
        WRQ => Ok(Packet::Write(request(body)?)),
        DATA => Ok(Packet::Data(word()?, body[2..].to_vec())),
        ACK if body.len() == 2 => Ok(Packet::Ack(word()?)),
        ACK => Err(PacketError::Short(b.len())),
        ERROR => {
            let code = word()?;
            // Some clients omit the message's NUL; the code alone is what matters.
            let msg = &body[2..];
            let msg = msg.strip_suffix(&[0]).unwrap_or(msg);
            Ok(Packet::Error(code, String::from_utf8_lossy(msg).into_owned()))
        }
        OACK => Ok(Packet::Oack(options(&strings(body)?)?)),
        other => Err(PacketError::Opcode(other)),
    }
}

/// Write a DATA header into the first 4 bytes of `buf`.
pub fn data_header(buf: &mut [u8], block: u16) {
    buf[..2].copy_from_slice(&DATA.to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

/// Encode an ERROR packet.
pub fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + msg.len());
    v.extend_from_slice(&ERROR.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend(msg.bytes().filter(|&c| c != 0));
    v.push(0);
    v
}

/// Encode an ACK packet.
pub fn ack(block: u16) -> Vec<u8> {
    let mut v = ACK.to_be_bytes().to_vec();
    v.extend_from_slice(&block.to_be_bytes());
    v
}

fn with_strings(op: u16, fields: &[&str]) -> Vec<u8> {
    let mut v = op.to_be_bytes().to_vec();
    for f in fields {
        v.extend(f.bytes().filter(|&c| c != 0));
        v.push(0);
    }
    v
}

/// Encode an OACK packet.
pub fn oack(opts: &[(String, String)]) -> Vec<u8> {
    let fields: Vec<&str> = opts.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]).collect();
    with_strings(OACK, &fields)
}

/// Encode a read (or, with `write`, write) request; used by tests.
pub fn request_bytes(write: bool, filename: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![filename, mode];
    fields.extend(opts.iter().flat_map(|(k, v)| [*k, *v]));
    with_strings(if write { WRQ } else { RRQ }, &fields)
}

/// The server's limits for option negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted.
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
}

/// What a transfer runs with after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout the client asked for, in seconds.
    pub timeout_secs: Option<u8>,
    /// The OACK to send; empty means no option was accepted and DATA starts at once.
    pub oack: Vec<(String, String)>,
}

/// Negotiate the options of a read request for a file of `size` bytes. Unknown or
/// out-of-range options are left out of the OACK, which RFC 2347 defines as refusing them.
pub fn negotiate(req: &[(String, String)], size: u64, lim: Limits) -> Negotiated {
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout_secs: None, oack: Vec::new() };
    let mut seen = std::collections::HashSet::new();
    for (k, v) in req {
        // The first occurrence of an option counts; repeats are ignored.
        if !seen.insert(k.as_str()) {
            continue;
        }
        let num = v.trim().parse::<u64>().ok();
        match (k.as_str(), num) {
            ("blksize", Some(b)) if b >= u64::from(*BLKSIZE_RANGE.start()) => {
                // RFC 2348: the server may answer with a smaller size than asked.
                let b = b.min(u64::from(lim.max_blksize)).min(u64::from(*BLKSIZE_RANGE.end())) as u16;
                n.blksize = b;
                n.oack.push((k.clone(), b.to_string()));
            }
            ("tsize", Some(_)) => n.oack.push((k.clone(), size.to_string())),
            ("timeout", Some(t @ 1..=255)) => {
                n.timeout_secs = Some(t as u8);
                n.oack.push((k.clone(), t.to_string()));
            }
            ("windowsize", Some(w @ 1..=65535)) => {
                let w = (w as u16).min(lim.max_windowsize).max(1);
                n.windowsize = w;
                n.oack.push((k.clone(), w.to_string()));
            }
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits { max_blksize: 1468, max_windowsize: MAX_WINDOWSIZE };

    fn opts(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn requests_round_trip() {
        let b = request_bytes(false, "pxe/grubx64.efi", "OCTET", &[("BlkSize", "1468"), ("tsize", "0")]);
        let Packet::Read(r) = decode(&b).unwrap() else { panic!("not a read") };
        assert_eq!(r.filename, "pxe/grubx64.efi");
        assert_eq!(r.mode, "octet");
        assert_eq!(r.options, opts(&[("blksize", "1468"), ("tsize", "0")]));
        assert!(matches!(decode(&request_bytes(true, "x", "netascii", &[])), Ok(Packet::Write(_))));
    }

    #[test]
    fn malformed_packets_are_errors() {
        for b in [
            &[][..],
            &[0],
            &[0, 1],
            &[0, 1, b'a', 0],
            &[0, 1, b'a', 0, b'o', b'c', b't', b'e', b't'],
            &[0, 1, b'a', 0, b'm', b'a', b'i', b'l', 0],
            &[0, 1, b'a', 0, b'o', b'c', b't', b'e', b't', 0, b'k', 0],
            &[0, 1, 0xff, 0, b'o', b'c', b't', b'e', b't', 0],
            &[0, 4, 0],
            &[0, 4, 0, 1, 2],
            &[0, 3, 0],
            &[0, 5, 0],
            &[0, 9, 0, 0],
            &[0, 6, b'x'],
        ] {
            assert!(decode(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn fixed_packets() {
        assert_eq!(decode(&ack(65535)).unwrap(), Packet::Ack(65535));
        assert_eq!(decode(&error(8, "no\0pe")).unwrap(), Packet::Error(8, "nope".into()));
        assert_eq!(decode(&[0, 5, 0, 8]).unwrap(), Packet::Error(8, String::new()));
        assert_eq!(decode(&[0, 3, 0, 7, 1, 2]).unwrap(), Packet::Data(7, vec![1, 2]));
        let o = opts(&[("blksize", "1468")]);
        assert_eq!(decode(&oack(&o)).unwrap(), Packet::Oack(o));
        let mut h = [9u8; 6];
        data_header(&mut h, 258);
        assert_eq!(h, [0, 3, 1, 2, 9, 9]);
    }

    #[test]
    fn negotiation_clamps_and_answers() {
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("tsize", "0"), ("timeout", "3"), ("windowsize", "500"), ("foo", "1")]),
            1234,
            LIM,
        );
        assert_eq!((n.blksize, n.windowsize, n.timeout_secs), (1468, 64, Some(3)));
        assert_eq!(n.oack, opts(&[("blksize", "1468"), ("tsize", "1234"), ("timeout", "3"), ("windowsize", "64")]));
        // Out of range or not numbers: refused by omission.
        let n = negotiate(
            &opts(&[("blksize", "7"), ("timeout", "0"), ("timeout", "256"), ("windowsize", "0"), ("tsize", "x")]),
            1,
            LIM,
        );
        assert_eq!((n.blksize, n.windowsize, n.timeout_secs), (DEFAULT_BLKSIZE, 1, None));
        assert!(n.oack.is_empty());
        let n = negotiate(&opts(&[("blksize", "512"), ("blksize", "1024")]), 0, LIM);
        assert_eq!(n.oack, opts(&[("blksize", "512")]));
        let n = negotiate(&opts(&[("blksize", "99999999999999999999999")]), 0, LIM);
        assert!(n.oack.is_empty());
    }
}
