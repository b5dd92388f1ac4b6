//! The xenstore wire protocol: message header, message types, error strings, limits, and an
//! incremental parser that assembles requests from a byte stream delivered in arbitrary pieces.
//!
//! xen: public/io/xs_wire.h. A message is a 16-byte header `xsd_sockmsg { type, req_id, tx_id,
//! len }` (native-endian `u32`s; x86 is little-endian) followed by `len` payload bytes,
//! generally NUL-terminated strings.

/// Size of the `xsd_sockmsg` header.
pub const HEADER_SIZE: usize = 16;
/// Largest payload a message may carry (xs_wire.h `XENSTORE_PAYLOAD_MAX`); a request header
/// announcing more is a protocol violation and xenstored stops serving the connection.
pub const PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (xs_wire.h `XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest path relative to a domain's home (xs_wire.h `XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;

/// xenstore message types (xs_wire.h `enum xsd_sockmsg_type`, in order from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT` (server to client only).
    WatchEvent = 15,
    /// `XS_ERROR` (server to client only).
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESTRICT` (obsolete).
    Restrict = 20,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
}

impl MsgType {
    /// The type for a raw header value, if it is one xs_wire.h defines.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            20 => Restrict,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// The errors xenstored reports, as the strings of xs_wire.h's `xsd_errors` table (the reply
/// is an `XS_ERROR` message whose payload is the name, NUL-terminated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[allow(clippy::upper_case_acronyms)]
pub enum XsError {
    /// Invalid argument.
    #[error("EINVAL")]
    EINVAL,
    /// Permission denied.
    #[error("EACCES")]
    EACCES,
    /// Already exists.
    #[error("EEXIST")]
    EEXIST,
    /// Is a directory.
    #[error("EISDIR")]
    EISDIR,
    /// No such node, transaction or watch.
    #[error("ENOENT")]
    ENOENT,
    /// Out of memory.
    #[error("ENOMEM")]
    ENOMEM,
    /// Quota exceeded.
    #[error("ENOSPC")]
    ENOSPC,
    /// I/O error.
    #[error("EIO")]
    EIO,
    /// Directory not empty.
    #[error("ENOTEMPTY")]
    ENOTEMPTY,
    /// Operation not supported.
    #[error("ENOSYS")]
    ENOSYS,
    /// Read-only.
    #[error("EROFS")]
    EROFS,
    /// Busy (e.g. a transaction inside a transaction).
    #[error("EBUSY")]
    EBUSY,
    /// Transaction conflict: retry.
    #[error("EAGAIN")]
    EAGAIN,
    /// Already connected.
    #[error("EISCONN")]
    EISCONN,
    /// Too big (e.g. too many watches, a reply larger than the payload limit).
    #[error("E2BIG")]
    E2BIG,
    /// Operation not permitted.
    #[error("EPERM")]
    EPERM,
}

impl XsError {
    /// The name sent on the wire (without the NUL).
    pub fn as_str(self) -> &'static str {
        use XsError::*;
        match self {
            EINVAL => "EINVAL",
            EACCES => "EACCES",
            EEXIST => "EEXIST",
            EISDIR => "EISDIR",
            ENOENT => "ENOENT",
            ENOMEM => "ENOMEM",
            ENOSPC => "ENOSPC",
            EIO => "EIO",
            ENOTEMPTY => "ENOTEMPTY",
            ENOSYS => "ENOSYS",
            EROFS => "EROFS",
            EBUSY => "EBUSY",
            EAGAIN => "EAGAIN",
            EISCONN => "EISCONN",
            E2BIG => "E2BIG",
            EPERM => "EPERM",
        }
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Raw message type (see [`MsgType`]).
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decode a header.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Header {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }

    /// Encode the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// A complete message: header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header (`len` equals `payload.len()`).
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message of type `ty` with the given ids and payload.
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            header: Header {
                ty: ty as u32,
                req_id,
                tx_id,
                // Payloads built by the server stay within PAYLOAD_MAX (plus an error name).
                len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            },
            payload,
        }
    }

    /// The message type, if known.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.header.ty)
    }

    /// Header and payload as one byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        v.extend_from_slice(&self.header.to_bytes());
        v.extend_from_slice(&self.payload);
        v
    }
}

/// A wire protocol violation by the client; xenstored stops serving such a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A header announced a payload longer than [`PAYLOAD_MAX`].
    #[error("request payload length {0} exceeds the {PAYLOAD_MAX}-byte maximum")]
    PayloadTooLong(u32),
    /// The ring page's indices were impossible.
    #[error("invalid ring indices")]
    RingIndices,
}

/// Incremental request parser: feed it bytes as they arrive; it yields complete messages.
#[derive(Debug, Default)]
pub struct MessageReader {
    hdr: [u8; HEADER_SIZE],
    hdr_len: usize,
    header: Option<Header>,
    payload: Vec<u8>,
}

impl MessageReader {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes the current message needs (header first, then payload). Never 0.
    pub fn wanted(&self) -> usize {
        match &self.header {
            None => HEADER_SIZE - self.hdr_len,
            Some(h) => (h.len as usize - self.payload.len()).max(1),
        }
    }

    /// Whether a message is partially received.
    pub fn is_partial(&self) -> bool {
        self.hdr_len != 0
    }

    /// Feed bytes; returns how many were consumed (at most [`MessageReader::wanted`], so at
    /// most one message completes per call) and the message if one completed. On error the
    /// parser is left unchanged apart from the consumed header bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Message>), WireError> {
        let mut used = 0;
        if self.header.is_none() {
            let n = data.len().min(HEADER_SIZE - self.hdr_len);
            self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
            self.hdr_len += n;
            used = n;
            if self.hdr_len < HEADER_SIZE {
                return Ok((used, None));
            }
            let h = Header::parse(&self.hdr);
            // xenstored: a header announcing more than XENSTORE_PAYLOAD_MAX is a bad client.
            if h.len as usize > PAYLOAD_MAX {
                return Err(WireError::PayloadTooLong(h.len));
            }
            self.payload = Vec::with_capacity(h.len as usize);
            self.header = Some(h);
        }
        let Some(h) = self.header else {
            return Ok((used, None));
        };
        let rest = &data[used..];
        let n = rest.len().min(h.len as usize - self.payload.len());
        self.payload.extend_from_slice(&rest[..n]);
        used += n;
        if self.payload.len() == h.len as usize {
            let payload = std::mem::take(&mut self.payload);
            self.header = None;
            self.hdr_len = 0;
            return Ok((used, Some(Message { header: h, payload })));
        }
        Ok((used, None))
    }

    /// Drop any partial message.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Split a payload into its NUL-terminated strings. The payload must end with a NUL (an
/// unterminated trailing string is an error, as in xenstored's argument parsing).
pub fn split_strings(payload: &[u8]) -> Option<Vec<&[u8]>> {
    if payload.last() != Some(&0) {
        return None;
    }
    let body = &payload[..payload.len() - 1];
    Some(body.split(|&b| b == 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Header {
            ty,
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        }
        .to_bytes()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn feed_all(r: &mut MessageReader, mut data: &[u8]) -> Result<Vec<Message>, WireError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (n, m) = r.feed(data)?;
            assert!(n > 0, "feed must make progress");
            data = &data[n..];
            out.extend(m);
        }
        Ok(out)
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            ty: 2,
            req_id: 0x01020304,
            tx_id: 7,
            len: 9,
        };
        let b = h.to_bytes();
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(Header::parse(&b), h);
    }

    #[test]
    fn reader_assembles_messages_fed_byte_by_byte() {
        let bytes = req(2, 5, b"name\0");
        let mut r = MessageReader::new();
        let mut got = Vec::new();
        for b in &bytes {
            let (n, m) = r.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(n, 1);
            got.extend(m);
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header.req_id, 5);
        assert_eq!(got[0].payload, b"name\0");
        assert!(!r.is_partial());
    }

    #[test]
    fn reader_splits_concatenated_messages() {
        let mut bytes = req(2, 1, b"a\0");
        bytes.extend(req(1, 2, b""));
        bytes.extend(req(11, 3, b"x\0val"));
        let mut r = MessageReader::new();
        let msgs = feed_all(&mut r, &bytes).unwrap();
        let ids: Vec<u32> = msgs.iter().map(|m| m.header.req_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(msgs[1].payload, b"");
        assert_eq!(msgs[2].payload, b"x\0val");
    }

    #[test]
    fn reader_accepts_max_payload_and_rejects_one_more() {
        let mut r = MessageReader::new();
        let ok = req(11, 1, &[b'a'; PAYLOAD_MAX]);
        assert_eq!(feed_all(&mut r, &ok).unwrap().len(), 1);
        let mut h = Header {
            ty: 11,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        }
        .to_bytes();
        assert_eq!(
            r.feed(&h).unwrap_err(),
            WireError::PayloadTooLong(PAYLOAD_MAX as u32 + 1)
        );
        r.reset();
        h[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(r.feed(&h).is_err());
    }

    #[test]
    fn split_strings_requires_terminating_nul() {
        assert_eq!(split_strings(b"a\0b\0").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(split_strings(b"\0").unwrap(), vec![&b""[..]]);
        assert!(split_strings(b"a").is_none());
        assert!(split_strings(b"").is_none());
    }

    #[test]
    fn msg_type_numbers_follow_xs_wire_order() {
        assert_eq!(MsgType::from_u32(0), Some(MsgType::Control));
        assert_eq!(MsgType::from_u32(15), Some(MsgType::WatchEvent));
        assert_eq!(MsgType::from_u32(22), Some(MsgType::DirectoryPart));
        assert_eq!(MsgType::from_u32(23), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
        for v in 0..23 {
            assert_eq!(MsgType::from_u32(v).unwrap() as u32, v);
        }
    }
}
