//! The x86 boot-protocol header of a bzImage, as far as kxen needs it: where the payload
//! (the compressed vmlinux ELF) lies in the file.
//!
//! Layout (Linux Documentation/arch/x86/boot.rst): `setup_sects` at 0x1f1 (0 means 4),
//! the "HdrS" signature at 0x202, the protocol version at 0x206, and since protocol 2.08
//! `payload_offset` (0x248) and `payload_length` (0x24c). The payload starts at
//! `(setup_sects + 1) * 512 + payload_offset` in the file (the protected-mode code begins
//! after the boot sector and the setup sectors; the offset is relative to it).

use thiserror::Error;

const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// The file must hold the header up to the end of `payload_length`.
const HEADER_END: usize = PAYLOAD_LENGTH + 4;
/// First protocol version with `payload_offset` / `payload_length`.
const MIN_VERSION: u16 = 0x0208;

/// A problem with the bzImage header or payload location.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BzImageError {
    /// The file ends inside the setup header.
    #[error("bad bzImage: the file ({len} bytes) ends inside the setup header")]
    TruncatedHeader {
        /// The file length.
        len: usize,
    },
    /// Boot protocol too old to locate the payload.
    #[error(
        "bad bzImage: boot protocol {}.{:02} is older than 2.08 (no payload fields)",
        version >> 8,
        version & 0xff
    )]
    OldProtocol {
        /// The header's protocol version.
        version: u16,
    },
    /// The payload is empty.
    #[error("bad bzImage: the payload is empty")]
    EmptyPayload,
    /// The payload lies (partly) outside the file.
    #[error(
        "bad bzImage: the payload (file offset {start:#x}, length {length:#x}) lies outside \
         the {file_len}-byte file"
    )]
    PayloadOutOfBounds {
        /// The payload's computed file offset.
        start: u64,
        /// The header's `payload_length`.
        length: u64,
        /// The file length.
        file_len: usize,
    },
    /// The payload has no known compression magic and is not an ELF.
    #[error(
        "bad bzImage: unknown payload format (magic {:02x} {:02x} {:02x} {:02x})",
        magic[0], magic[1], magic[2], magic[3]
    )]
    UnknownPayload {
        /// The payload's first bytes.
        magic: [u8; 4],
    },
}

/// The fields of the setup header kxen reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageHeader {
    /// Setup sectors after the boot sector (0 in the file means 4).
    pub setup_sects: u8,
    /// Boot protocol version (major << 8 | minor).
    pub version: u16,
    /// Payload offset relative to the protected-mode code.
    pub payload_offset: u32,
    /// Payload length in bytes.
    pub payload_length: u32,
}

/// Does the file carry the "HdrS" setup-header signature?
pub(super) fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(HEADER_MAGIC..HEADER_MAGIC + 4) == Some(b"HdrS")
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl BzImageHeader {
    /// Parse the header fields; the file must reach at least the end of `payload_length`.
    pub fn parse(bytes: &[u8]) -> Result<Self, BzImageError> {
        let truncated = BzImageError::TruncatedHeader { len: bytes.len() };
        if bytes.len() < HEADER_END || !is_bzimage(bytes) {
            return Err(truncated);
        }
        let version = u16_at(bytes, VERSION).ok_or(truncated.clone())?;
        if version < MIN_VERSION {
            return Err(BzImageError::OldProtocol { version });
        }
        let setup_sects = match bytes.get(SETUP_SECTS).copied().ok_or(truncated.clone())? {
            0 => 4,
            n => n,
        };
        Ok(BzImageHeader {
            setup_sects,
            version,
            payload_offset: u32_at(bytes, PAYLOAD_OFFSET).ok_or(truncated.clone())?,
            payload_length: u32_at(bytes, PAYLOAD_LENGTH).ok_or(truncated)?,
        })
    }

    /// The payload's byte range in the file, checked against the file length.
    pub fn payload_range(&self, file_len: usize) -> Result<core::ops::Range<usize>, BzImageError> {
        if self.payload_length == 0 {
            return Err(BzImageError::EmptyPayload);
        }
        // All in u64: (255 + 1) * 512 + u32::MAX + u32::MAX cannot overflow.
        let start = (u64::from(self.setup_sects) + 1) * 512 + u64::from(self.payload_offset);
        let length = u64::from(self.payload_length);
        let end = start + length;
        let oob = BzImageError::PayloadOutOfBounds {
            start,
            length,
            file_len,
        };
        if end > file_len as u64 {
            return Err(oob);
        }
        let start = usize::try_from(start).map_err(|_| oob.clone())?;
        let end = usize::try_from(end).map_err(|_| oob)?;
        Ok(start..end)
    }

    /// The payload bytes.
    pub fn payload<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], BzImageError> {
        let range = self.payload_range(bytes.len())?;
        // payload_range checked the range against bytes.len().
        bytes.get(range).ok_or(BzImageError::PayloadOutOfBounds {
            start: 0,
            length: 0,
            file_len: bytes.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(setup_sects: u8, version: u16, off: u32, len: u32, file_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; file_len];
        f[SETUP_SECTS] = setup_sects;
        f[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        f[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
        f[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&off.to_le_bytes());
        f[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        f
    }

    #[test]
    fn payload_starts_after_setup_sectors_plus_offset() {
        let f = header(2, 0x020f, 0x10, 0x20, 4096);
        let h = BzImageHeader::parse(&f).unwrap();
        assert_eq!(
            h.payload_range(f.len()).unwrap(),
            3 * 512 + 0x10..3 * 512 + 0x30
        );
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let f = header(0, 0x020f, 0, 0x20, 4096);
        let h = BzImageHeader::parse(&f).unwrap();
        assert_eq!(h.setup_sects, 4);
        assert_eq!(h.payload_range(f.len()).unwrap().start, 5 * 512);
    }

    #[test]
    fn old_protocol_is_refused() {
        let f = header(4, 0x0206, 0, 0x20, 4096);
        assert_eq!(
            BzImageHeader::parse(&f),
            Err(BzImageError::OldProtocol { version: 0x0206 })
        );
        assert!(BzImageError::OldProtocol { version: 0x0206 }
            .to_string()
            .contains("2.06"));
    }

    #[test]
    fn payload_outside_file_is_refused_without_overflow() {
        let f = header(255, 0x020f, u32::MAX, u32::MAX, 4096);
        let h = BzImageHeader::parse(&f).unwrap();
        assert!(matches!(
            h.payload(&f),
            Err(BzImageError::PayloadOutOfBounds { .. })
        ));
        let f = header(1, 0x020f, 0, 4096 - 1024 + 1, 4096);
        let h = BzImageHeader::parse(&f).unwrap();
        assert!(matches!(
            h.payload(&f),
            Err(BzImageError::PayloadOutOfBounds { .. })
        ));
        let f = header(1, 0x020f, 0, 4096 - 1024, 4096);
        assert_eq!(
            BzImageHeader::parse(&f).unwrap().payload(&f).unwrap().len(),
            3072
        );
    }

    #[test]
    fn truncated_header_and_empty_payload_are_refused() {
        let f = header(1, 0x020f, 0, 16, 4096);
        assert_eq!(
            BzImageHeader::parse(&f[..HEADER_END - 1]),
            Err(BzImageError::TruncatedHeader {
                len: HEADER_END - 1
            })
        );
        let f = header(1, 0x020f, 0, 0, 4096);
        assert_eq!(
            BzImageHeader::parse(&f).unwrap().payload(&f),
            Err(BzImageError::EmptyPayload)
        );
    }
}
