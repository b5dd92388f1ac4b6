//! Kernel image formats: a raw ELF64 x86_64 kernel, a bzImage whose payload is a compressed
//! (or plain) vmlinux ELF, and a compressed ELF (gzip, as Xen's toolstack accepts, or any
//! other codec kxen decodes).
//!
//! The result is always the ELF bytes of the kernel: loading its segments into guest memory
//! is the domain builder's job. Every input is hostile: offsets are checked against the file,
//! decompressed output is capped ([`MAX_ELF_SIZE`]), and every failure is an [`ImageError`].

mod bzimage;
mod decompress;

use std::fmt;

use serde::Serialize;
use thiserror::Error;

pub use bzimage::{BzImageError, BzImageHeader};
pub use decompress::{Codec, DecompressError};

/// Largest decompressed kernel ELF kxen accepts (decompression-bomb cap).
pub const MAX_ELF_SIZE: usize = 512 << 20;

/// How the kernel file was packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A raw ELF64 x86_64 file (e.g. `vmlinux`, PV-GRUB, XTF).
    Elf,
    /// An x86 boot-protocol bzImage; the ELF is its (usually compressed) payload.
    #[serde(rename = "bzimage")]
    BzImage,
    /// A compressed ELF file (e.g. `vmlinux.gz`).
    CompressedElf,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Elf => "ELF",
            Format::BzImage => "bzImage",
            Format::CompressedElf => "compressed ELF",
        })
    }
}

/// A kernel image reduced to its ELF64 x86_64 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// How the file was packaged.
    pub format: Format,
    /// The codec the ELF was compressed with, if any.
    pub codec: Option<Codec>,
    /// The kernel ELF (checked: ELF64, little-endian, x86_64).
    pub elf: Vec<u8>,
}

impl fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelImage")
            .field("format", &self.format)
            .field("codec", &self.codec)
            .field("elf_len", &self.elf.len())
            .finish()
    }
}

impl fmt::Display for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.format, self.codec) {
            (Format::BzImage, Some(c)) => write!(f, "bzImage ({c} payload)"),
            (Format::BzImage, None) => f.write_str("bzImage (uncompressed payload)"),
            (Format::CompressedElf, Some(c)) => write!(f, "{c}-compressed ELF"),
            (fmt, _) => write!(f, "{fmt}"),
        }
    }
}

/// Why a file is not a kernel kxen can load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// The file is empty.
    #[error("not a Xen PV kernel: the file is empty")]
    Empty,
    /// Neither ELF, bzImage nor a known compressed format.
    #[error("not a Xen PV kernel: unrecognised format (not ELF, bzImage or a compressed ELF)")]
    Unrecognized,
    /// The (decompressed) image is not an ELF64 little-endian x86_64 file.
    #[error("not a Xen PV kernel: {0}")]
    NotElf64X86(&'static str),
    /// The bzImage header is unusable.
    #[error(transparent)]
    BzImage(#[from] BzImageError),
    /// The payload could not be decompressed.
    #[error(transparent)]
    Decompress(#[from] DecompressError),
}

/// Load a kernel file: detect the format, extract and decompress as needed, and check that
/// the result is an ELF64 x86_64 image. Decompressed output is capped at [`MAX_ELF_SIZE`].
pub fn load_kernel_image(bytes: &[u8]) -> Result<KernelImage, ImageError> {
    load_kernel_image_with_limit(bytes, MAX_ELF_SIZE)
}

/// [`load_kernel_image`] with an explicit cap on the decompressed ELF size.
pub fn load_kernel_image_with_limit(
    bytes: &[u8],
    max_elf_size: usize,
) -> Result<KernelImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.starts_with(ELF_MAGIC) {
        check_elf64_x86_64(bytes)?;
        tracing::debug!(len = bytes.len(), "kernel is a raw ELF");
        return Ok(KernelImage {
            format: Format::Elf,
            codec: None,
            elf: bytes.to_vec(),
        });
    }
    if bzimage::is_bzimage(bytes) {
        let header = BzImageHeader::parse(bytes)?;
        let payload = header.payload(bytes)?;
        tracing::debug!(
            protocol = %format_args!("{}.{:02}", header.version >> 8, header.version & 0xff),
            payload_len = payload.len(),
            "kernel is a bzImage"
        );
        if payload.starts_with(ELF_MAGIC) {
            check_elf64_x86_64(payload)?;
            return Ok(KernelImage {
                format: Format::BzImage,
                codec: None,
                elf: payload.to_vec(),
            });
        }
        let codec = Codec::detect(payload).ok_or(BzImageError::UnknownPayload {
            magic: magic_of(payload),
        })?;
        let elf = decompress::decompress(codec, payload, max_elf_size)?;
        if !elf.starts_with(ELF_MAGIC) {
            return Err(ImageError::NotElf64X86(
                "the bzImage payload does not decompress to an ELF file",
            ));
        }
        check_elf64_x86_64(&elf)?;
        return Ok(KernelImage {
            format: Format::BzImage,
            codec: Some(codec),
            elf,
        });
    }
    if let Some(codec) = Codec::detect(bytes) {
        let elf = decompress::decompress(codec, bytes, max_elf_size)?;
        if !elf.starts_with(ELF_MAGIC) {
            return Err(ImageError::NotElf64X86(
                "the compressed file does not contain an ELF file",
            ));
        }
        check_elf64_x86_64(&elf)?;
        tracing::debug!(%codec, len = elf.len(), "kernel is a compressed ELF");
        return Ok(KernelImage {
            format: Format::CompressedElf,
            codec: Some(codec),
            elf,
        });
    }
    Err(ImageError::Unrecognized)
}

const ELF_MAGIC: &[u8] = b"\x7fELF";

fn magic_of(bytes: &[u8]) -> [u8; 4] {
    let mut m = [0u8; 4];
    for (dst, src) in m.iter_mut().zip(bytes) {
        *dst = *src;
    }
    m
}

/// Check the ELF identification and machine: ELF64, little-endian, current version, x86_64.
/// (The full ELF parse — program headers, notes — is xen-abi's.)
fn check_elf64_x86_64(elf: &[u8]) -> Result<(), ImageError> {
    // ELF64 header is 64 bytes; e_ident[EI_CLASS]=4, [EI_DATA]=5, [EI_VERSION]=6,
    // e_machine at 18..20.
    if !elf.starts_with(ELF_MAGIC) {
        return Err(ImageError::NotElf64X86("not an ELF file"));
    }
    let Some(header) = elf.get(..64) else {
        return Err(ImageError::NotElf64X86("truncated ELF header"));
    };
    match header[4] {
        2 => {}
        1 => {
            return Err(ImageError::NotElf64X86(
                "32-bit ELF (kxen runs 64-bit PV guests only)",
            ))
        }
        _ => return Err(ImageError::NotElf64X86("invalid ELF class")),
    }
    if header[5] != 1 {
        return Err(ImageError::NotElf64X86(
            "big-endian or invalid ELF data encoding",
        ));
    }
    if header[6] != 1 {
        return Err(ImageError::NotElf64X86("unknown ELF version"));
    }
    const EM_X86_64: u16 = 62;
    if u16::from_le_bytes([header[18], header[19]]) != EM_X86_64 {
        return Err(ImageError::NotElf64X86("ELF machine is not x86_64"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_elf(class: u8, machine: u16) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(ELF_MAGIC);
        e[4] = class;
        e[5] = 1;
        e[6] = 1;
        e[18..20].copy_from_slice(&machine.to_le_bytes());
        e
    }

    #[test]
    fn raw_elf64_x86_64_is_returned_unchanged() {
        let elf = minimal_elf(2, 62);
        let img = load_kernel_image(&elf).unwrap();
        assert_eq!(img.format, Format::Elf);
        assert_eq!(img.codec, None);
        assert_eq!(img.elf, elf);
        assert_eq!(img.to_string(), "ELF");
    }

    #[test]
    fn elf32_and_foreign_machines_are_refused() {
        assert_eq!(
            load_kernel_image(&minimal_elf(1, 3)),
            Err(ImageError::NotElf64X86(
                "32-bit ELF (kxen runs 64-bit PV guests only)"
            ))
        );
        assert_eq!(
            load_kernel_image(&minimal_elf(2, 183)),
            Err(ImageError::NotElf64X86("ELF machine is not x86_64"))
        );
        assert_eq!(
            load_kernel_image(b"\x7fELF\x02\x01"),
            Err(ImageError::NotElf64X86("truncated ELF header"))
        );
    }

    #[test]
    fn empty_and_garbage_are_typed_errors() {
        assert_eq!(load_kernel_image(&[]), Err(ImageError::Empty));
        assert_eq!(
            load_kernel_image(b"hello, world"),
            Err(ImageError::Unrecognized)
        );
    }

    #[test]
    fn gzip_elf_is_decompressed() {
        use std::io::Write;
        let elf = minimal_elf(2, 62);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&elf).unwrap();
        let gz = enc.finish().unwrap();
        let img = load_kernel_image(&gz).unwrap();
        assert_eq!(img.format, Format::CompressedElf);
        assert_eq!(img.codec, Some(Codec::Gzip));
        assert_eq!(img.elf, elf);
        assert_eq!(img.to_string(), "gzip-compressed ELF");
    }

    #[test]
    fn gzip_of_non_elf_is_not_a_kernel() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"just some text").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(
            load_kernel_image(&gz),
            Err(ImageError::NotElf64X86(
                "the compressed file does not contain an ELF file"
            ))
        );
    }
}
