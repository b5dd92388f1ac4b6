//! Minimal zero-copy ELF64 little-endian x86_64 reader over a byte slice.
//!
//! Only what the Xen PV loader needs: the file header, program headers, section headers,
//! section names (through `.shstrtab`) and the file bytes of a segment or section.
//! Every offset, size and count read from the image is checked (including arithmetic
//! overflow) and reported as a typed [`ElfError`]; nothing here panics or allocates.

use core::fmt;

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of one ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Size of one ELF64 section header.
pub const SHDR_SIZE: usize = 64;

/// `e_ident[EI_CLASS]` for 32-bit objects.
pub const ELFCLASS32: u8 = 1;
/// `e_ident[EI_CLASS]` for 64-bit objects.
pub const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]` for little-endian objects.
pub const ELFDATA2LSB: u8 = 1;
/// `e_ident[EI_VERSION]` / `e_version` current version.
pub const EV_CURRENT: u8 = 1;
/// `e_type`: executable.
pub const ET_EXEC: u16 = 2;
/// `e_type`: shared object / position-independent executable.
pub const ET_DYN: u16 = 3;
/// `e_machine`: Intel 80386.
pub const EM_386: u16 = 3;
/// `e_machine`: AMD x86-64.
pub const EM_X86_64: u16 = 62;

/// Program header type: loadable segment.
pub const PT_LOAD: u32 = 1;
/// Program header type: note segment.
pub const PT_NOTE: u32 = 4;
/// Segment flag: executable.
pub const PF_X: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: readable.
pub const PF_R: u32 = 4;

/// Section type: string table.
pub const SHT_STRTAB: u32 = 3;
/// Section type: notes.
pub const SHT_NOTE: u32 = 7;
/// Section type: occupies no file space (`.bss`).
pub const SHT_NOBITS: u32 = 8;
/// Undefined section index (`e_shstrndx` when there is no name table).
pub const SHN_UNDEF: u16 = 0;

/// Which header table an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The program header table (`e_phoff`, `e_phnum`).
    ProgramHeaders,
    /// The section header table (`e_shoff`, `e_shnum`).
    SectionHeaders,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Table::ProgramHeaders => f.write_str("program header table (e_phoff/e_phnum)"),
            Table::SectionHeaders => f.write_str("section header table (e_shoff/e_shnum)"),
        }
    }
}

/// Why an image is not a usable ELF64 x86_64 little-endian executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// The image is shorter than the ELF header.
    TooShort {
        /// Image length in bytes.
        len: usize,
    },
    /// `e_ident[0..4]` is not `\x7fELF`.
    BadMagic {
        /// The first four bytes.
        magic: [u8; 4],
    },
    /// A 32-bit ELF: kxen runs 64-bit PV kernels only.
    Class32,
    /// `e_ident[EI_CLASS]` is neither 32- nor 64-bit.
    BadClass {
        /// The class byte.
        value: u8,
    },
    /// `e_ident[EI_DATA]` is not little-endian.
    NotLittleEndian {
        /// The data-encoding byte.
        value: u8,
    },
    /// `e_ident[EI_VERSION]` is not 1.
    BadVersion {
        /// The version byte.
        value: u8,
    },
    /// `e_machine` is not x86_64.
    BadMachine {
        /// The machine number.
        value: u16,
    },
    /// `e_type` is neither `ET_EXEC` nor `ET_DYN`.
    BadType {
        /// The type number.
        value: u16,
    },
    /// `e_phentsize`/`e_shentsize` is not the ELF64 size.
    BadEntrySize {
        /// `"e_phentsize"` or `"e_shentsize"`.
        field: &'static str,
        /// The value found.
        value: u16,
        /// The required value.
        expected: u16,
    },
    /// A header table does not lie inside the image (or its end overflows).
    TableOutOfBounds {
        /// Which table.
        table: Table,
        /// The table's file offset.
        offset: u64,
        /// The number of entries.
        count: u16,
        /// The image length.
        len: usize,
    },
    /// A segment's file bytes (`p_offset`, `p_filesz`) are not inside the image.
    SegmentOutOfBounds {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
        /// The image length.
        len: usize,
    },
    /// A section's file bytes (`sh_offset`, `sh_size`) are not inside the image.
    SectionOutOfBounds {
        /// Section header index.
        index: usize,
        /// `sh_offset`.
        offset: u64,
        /// `sh_size`.
        size: u64,
        /// The image length.
        len: usize,
    },
    /// A header index beyond the table.
    IndexOutOfRange {
        /// Which table.
        table: Table,
        /// The index asked for.
        index: usize,
        /// The number of entries.
        count: usize,
    },
    /// Section names were asked for but `e_shstrndx` names no valid section.
    BadShstrndx {
        /// `e_shstrndx`.
        value: u16,
        /// `e_shnum`.
        shnum: u16,
    },
    /// A section's `sh_name` points outside the name table, or the name is not
    /// NUL-terminated inside it.
    BadSectionName {
        /// Section header index.
        index: usize,
        /// `sh_name`.
        sh_name: u32,
    },
    /// A section name is not valid UTF-8.
    SectionNameNotUtf8 {
        /// Section header index.
        index: usize,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::TooShort { len } => {
                write!(f, "image is {len} bytes, shorter than the {EHDR_SIZE}-byte ELF64 header")
            }
            ElfError::BadMagic { magic } => write!(f, "not an ELF image: e_ident magic {magic:02x?}"),
            ElfError::Class32 => f.write_str(
                "e_ident[EI_CLASS] 1: 32-bit ELF kernels are not supported (kxen runs 64-bit PV kernels only)",
            ),
            ElfError::BadClass { value } => write!(f, "e_ident[EI_CLASS] {value} is not ELFCLASS64 (2)"),
            ElfError::NotLittleEndian { value } => {
                write!(f, "e_ident[EI_DATA] {value} is not ELFDATA2LSB (1, little-endian)")
            }
            ElfError::BadVersion { value } => write!(f, "e_ident[EI_VERSION] {value} is not 1"),
            ElfError::BadMachine { value } => {
                write!(f, "e_machine {value} is not EM_X86_64 ({EM_X86_64})")
            }
            ElfError::BadType { value } => {
                write!(f, "e_type {value} is not ET_EXEC ({ET_EXEC}) or ET_DYN ({ET_DYN})")
            }
            ElfError::BadEntrySize { field, value, expected } => {
                write!(f, "{field} {value} is not {expected}")
            }
            ElfError::TableOutOfBounds { table, offset, count, len } => write!(
                f,
                "{table} at offset {offset:#x} with {count} entries is outside the image ({len:#x} bytes)"
            ),
            ElfError::SegmentOutOfBounds { index, offset, size, len } => write!(
                f,
                "program header {index}: p_offset {offset:#x} + p_filesz {size:#x} is outside the image ({len:#x} bytes)"
            ),
            ElfError::SectionOutOfBounds { index, offset, size, len } => write!(
                f,
                "section header {index}: sh_offset {offset:#x} + sh_size {size:#x} is outside the image ({len:#x} bytes)"
            ),
            ElfError::IndexOutOfRange { table, index, count } => {
                write!(f, "{table}: index {index} out of range ({count} entries)")
            }
            ElfError::BadShstrndx { value, shnum } => {
                write!(f, "e_shstrndx {value} names no section (e_shnum {shnum})")
            }
            ElfError::BadSectionName { index, sh_name } => write!(
                f,
                "section header {index}: sh_name {sh_name:#x} is not a NUL-terminated name inside the name table"
            ),
            ElfError::SectionNameNotUtf8 { index } => {
                write!(f, "section header {index}: name is not valid UTF-8")
            }
        }
    }
}

impl core::error::Error for ElfError {}

// Little-endian field readers. Callers pass offsets they have already bounds-checked
// against the slice; `get` keeps even a wrong caller from panicking (it reads 0).
fn rd_u16(d: &[u8], off: usize) -> u16 {
    match d.get(off..off.wrapping_add(2)) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]),
        _ => 0,
    }
}

fn rd_u32(d: &[u8], off: usize) -> u32 {
    match d.get(off..off.wrapping_add(4)) {
        Some(&[a, b, c, e]) => u32::from_le_bytes([a, b, c, e]),
        _ => 0,
    }
}

fn rd_u64(d: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = d.get(off..off.wrapping_add(8)) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// `offset .. offset + size` as a checked range inside `len`, or `None`.
fn checked_range(offset: u64, size: u64, len: usize) -> Option<core::ops::Range<usize>> {
    let end = offset.checked_add(size)?;
    if end > len as u64 {
        return None;
    }
    // Both fit in usize because they are <= len.
    Some(offset as usize..end as usize)
}

/// The fields of the ELF64 file header kxen uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// `e_type` (`ET_EXEC` or `ET_DYN`).
    pub e_type: u16,
    /// `e_machine` (`EM_X86_64`).
    pub e_machine: u16,
    /// `e_version`.
    pub e_version: u32,
    /// `e_entry`: the entry point.
    pub e_entry: u64,
    /// `e_phoff`.
    pub e_phoff: u64,
    /// `e_shoff`.
    pub e_shoff: u64,
    /// `e_flags`.
    pub e_flags: u32,
    /// `e_phentsize`.
    pub e_phentsize: u16,
    /// `e_phnum`.
    pub e_phnum: u16,
    /// `e_shentsize`.
    pub e_shentsize: u16,
    /// `e_shnum`.
    pub e_shnum: u16,
    /// `e_shstrndx`.
    pub e_shstrndx: u16,
}

/// One ELF64 program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    /// Index in the program header table.
    pub index: usize,
    /// `p_type`.
    pub p_type: u32,
    /// `p_flags`.
    pub p_flags: u32,
    /// `p_offset`.
    pub p_offset: u64,
    /// `p_vaddr`.
    pub p_vaddr: u64,
    /// `p_paddr`.
    pub p_paddr: u64,
    /// `p_filesz`.
    pub p_filesz: u64,
    /// `p_memsz`.
    pub p_memsz: u64,
    /// `p_align`.
    pub p_align: u64,
}

impl ProgramHeader {
    /// A segment Xen loads: `PT_LOAD` with at least one of R/W/X.
    // xen: libelf-tools.c elf_phdr_is_loadable
    pub fn is_loadable(&self) -> bool {
        self.p_type == PT_LOAD && self.p_flags & (PF_R | PF_W | PF_X) != 0
    }
}

/// One ELF64 section header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionHeader {
    /// Index in the section header table.
    pub index: usize,
    /// `sh_name` (offset into the section name table).
    pub sh_name: u32,
    /// `sh_type`.
    pub sh_type: u32,
    /// `sh_flags`.
    pub sh_flags: u64,
    /// `sh_addr`.
    pub sh_addr: u64,
    /// `sh_offset`.
    pub sh_offset: u64,
    /// `sh_size`.
    pub sh_size: u64,
    /// `sh_link`.
    pub sh_link: u32,
    /// `sh_info`.
    pub sh_info: u32,
    /// `sh_addralign`.
    pub sh_addralign: u64,
    /// `sh_entsize`.
    pub sh_entsize: u64,
}

/// A validated ELF64 LE x86_64 image. Cheap to copy (a slice and the header).
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    data: &'a [u8],
    hdr: FileHeader,
    /// Byte offset of the program header table (validated).
    phoff: usize,
    /// Byte offset of the section header table (validated).
    shoff: usize,
}

impl<'a> Elf<'a> {
    /// Validates the file header and the bounds of both header tables.
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        if data.len() < EHDR_SIZE {
            return Err(ElfError::TooShort { len: data.len() });
        }
        let magic = [data[0], data[1], data[2], data[3]];
        if magic != *b"\x7fELF" {
            return Err(ElfError::BadMagic { magic });
        }
        match data[4] {
            ELFCLASS64 => {}
            ELFCLASS32 => return Err(ElfError::Class32),
            value => return Err(ElfError::BadClass { value }),
        }
        if data[5] != ELFDATA2LSB {
            return Err(ElfError::NotLittleEndian { value: data[5] });
        }
        if data[6] != EV_CURRENT {
            return Err(ElfError::BadVersion { value: data[6] });
        }
        let hdr = FileHeader {
            e_type: rd_u16(data, 16),
            e_machine: rd_u16(data, 18),
            e_version: rd_u32(data, 20),
            e_entry: rd_u64(data, 24),
            e_phoff: rd_u64(data, 32),
            e_shoff: rd_u64(data, 40),
            e_flags: rd_u32(data, 48),
            e_phentsize: rd_u16(data, 54),
            e_phnum: rd_u16(data, 56),
            e_shentsize: rd_u16(data, 58),
            e_shnum: rd_u16(data, 60),
            e_shstrndx: rd_u16(data, 62),
        };
        if hdr.e_machine != EM_X86_64 {
            return Err(ElfError::BadMachine {
                value: hdr.e_machine,
            });
        }
        if hdr.e_type != ET_EXEC && hdr.e_type != ET_DYN {
            return Err(ElfError::BadType { value: hdr.e_type });
        }
        let phoff = Self::table(
            data.len(),
            Table::ProgramHeaders,
            hdr.e_phoff,
            hdr.e_phnum,
            hdr.e_phentsize,
            "e_phentsize",
            PHDR_SIZE,
        )?;
        let shoff = Self::table(
            data.len(),
            Table::SectionHeaders,
            hdr.e_shoff,
            hdr.e_shnum,
            hdr.e_shentsize,
            "e_shentsize",
            SHDR_SIZE,
        )?;
        Ok(Elf {
            data,
            hdr,
            phoff,
            shoff,
        })
    }

    fn table(
        len: usize,
        table: Table,
        offset: u64,
        count: u16,
        entsize: u16,
        field: &'static str,
        expected: usize,
    ) -> Result<usize, ElfError> {
        if count == 0 {
            return Ok(0);
        }
        if usize::from(entsize) != expected {
            return Err(ElfError::BadEntrySize {
                field,
                value: entsize,
                expected: expected as u16,
            });
        }
        let size = u64::from(count) * expected as u64; // at most 0xffff * 64: no overflow
        checked_range(offset, size, len)
            .map(|r| r.start)
            .ok_or(ElfError::TableOutOfBounds {
                table,
                offset,
                count,
                len,
            })
    }

    /// The whole image.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The validated file header.
    pub fn header(&self) -> &FileHeader {
        &self.hdr
    }

    /// `e_entry`.
    pub fn entry(&self) -> u64 {
        self.hdr.e_entry
    }

    /// Number of program headers.
    pub fn phnum(&self) -> usize {
        usize::from(self.hdr.e_phnum)
    }

    /// Number of section headers.
    pub fn shnum(&self) -> usize {
        usize::from(self.hdr.e_shnum)
    }

    /// Program header `index`.
    pub fn program_header(&self, index: usize) -> Result<ProgramHeader, ElfError> {
        if index >= self.phnum() {
            return Err(ElfError::IndexOutOfRange {
                table: Table::ProgramHeaders,
                index,
                count: self.phnum(),
            });
        }
        let o = self.phoff + index * PHDR_SIZE; // inside the validated table
        let d = self.data;
        Ok(ProgramHeader {
            index,
            p_type: rd_u32(d, o),
            p_flags: rd_u32(d, o + 4),
            p_offset: rd_u64(d, o + 8),
            p_vaddr: rd_u64(d, o + 16),
            p_paddr: rd_u64(d, o + 24),
            p_filesz: rd_u64(d, o + 32),
            p_memsz: rd_u64(d, o + 40),
            p_align: rd_u64(d, o + 48),
        })
    }

    /// Section header `index`.
    pub fn section_header(&self, index: usize) -> Result<SectionHeader, ElfError> {
        if index >= self.shnum() {
            return Err(ElfError::IndexOutOfRange {
                table: Table::SectionHeaders,
                index,
                count: self.shnum(),
            });
        }
        let o = self.shoff + index * SHDR_SIZE;
        let d = self.data;
        Ok(SectionHeader {
            index,
            sh_name: rd_u32(d, o),
            sh_type: rd_u32(d, o + 4),
            sh_flags: rd_u64(d, o + 8),
            sh_addr: rd_u64(d, o + 16),
            sh_offset: rd_u64(d, o + 24),
            sh_size: rd_u64(d, o + 32),
            sh_link: rd_u32(d, o + 40),
            sh_info: rd_u32(d, o + 44),
            sh_addralign: rd_u64(d, o + 48),
            sh_entsize: rd_u64(d, o + 56),
        })
    }

    /// All program headers, in table order.
    pub fn program_headers(&self) -> ProgramHeaders<'a> {
        ProgramHeaders {
            elf: *self,
            next: 0,
        }
    }

    /// All section headers, in table order (including the null section 0).
    pub fn section_headers(&self) -> SectionHeaders<'a> {
        SectionHeaders {
            elf: *self,
            next: 0,
        }
    }

    /// The file bytes of a segment (`p_filesz` bytes at `p_offset`).
    pub fn segment_data(&self, ph: &ProgramHeader) -> Result<&'a [u8], ElfError> {
        checked_range(ph.p_offset, ph.p_filesz, self.data.len())
            .and_then(|r| self.data.get(r))
            .ok_or(ElfError::SegmentOutOfBounds {
                index: ph.index,
                offset: ph.p_offset,
                size: ph.p_filesz,
                len: self.data.len(),
            })
    }

    /// The file bytes of a section; empty for `SHT_NOBITS`.
    pub fn section_data(&self, sh: &SectionHeader) -> Result<&'a [u8], ElfError> {
        if sh.sh_type == SHT_NOBITS {
            return Ok(&[]);
        }
        checked_range(sh.sh_offset, sh.sh_size, self.data.len())
            .and_then(|r| self.data.get(r))
            .ok_or(ElfError::SectionOutOfBounds {
                index: sh.index,
                offset: sh.sh_offset,
                size: sh.sh_size,
                len: self.data.len(),
            })
    }

    /// The section name table (`e_shstrndx`).
    pub fn shstrtab(&self) -> Result<&'a [u8], ElfError> {
        let bad = ElfError::BadShstrndx {
            value: self.hdr.e_shstrndx,
            shnum: self.hdr.e_shnum,
        };
        let idx = usize::from(self.hdr.e_shstrndx);
        if self.hdr.e_shstrndx == SHN_UNDEF || idx >= self.shnum() {
            return Err(bad);
        }
        let sh = self.section_header(idx)?;
        if sh.sh_type == SHT_NOBITS {
            return Err(bad);
        }
        self.section_data(&sh)
    }

    /// The name of a section, through the section name table.
    pub fn section_name(&self, sh: &SectionHeader) -> Result<&'a str, ElfError> {
        let strtab = self.shstrtab()?;
        let bad = ElfError::BadSectionName {
            index: sh.index,
            sh_name: sh.sh_name,
        };
        let tail = usize::try_from(sh.sh_name)
            .ok()
            .and_then(|o| strtab.get(o..))
            .ok_or(bad)?;
        let nul = tail.iter().position(|&b| b == 0).ok_or(bad)?;
        core::str::from_utf8(&tail[..nul])
            .map_err(|_| ElfError::SectionNameNotUtf8 { index: sh.index })
    }

    /// The first section called `name`, if any. Sections whose names cannot be read
    /// are skipped; no sections or no name table (`e_shstrndx` 0) is `None`; a broken
    /// name table is an error.
    pub fn section_by_name(&self, name: &str) -> Result<Option<SectionHeader>, ElfError> {
        if self.shnum() == 0 || self.hdr.e_shstrndx == SHN_UNDEF {
            return Ok(None);
        }
        self.shstrtab()?;
        for sh in self.section_headers().skip(1) {
            if self.section_name(&sh).ok() == Some(name) {
                return Ok(Some(sh));
            }
        }
        Ok(None)
    }
}

/// Iterator over program headers.
#[derive(Debug, Clone)]
pub struct ProgramHeaders<'a> {
    elf: Elf<'a>,
    next: usize,
}

impl Iterator for ProgramHeaders<'_> {
    type Item = ProgramHeader;
    fn next(&mut self) -> Option<ProgramHeader> {
        let ph = self.elf.program_header(self.next).ok()?;
        self.next += 1;
        Some(ph)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.elf.phnum().saturating_sub(self.next);
        (n, Some(n))
    }
}

/// Iterator over section headers.
#[derive(Debug, Clone)]
pub struct SectionHeaders<'a> {
    elf: Elf<'a>,
    next: usize,
}

impl Iterator for SectionHeaders<'_> {
    type Item = SectionHeader;
    fn next(&mut self) -> Option<SectionHeader> {
        let sh = self.elf.section_header(self.next).ok()?;
        self.next += 1;
        Some(sh)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.elf.shnum().saturating_sub(self.next);
        (n, Some(n))
    }
}
