//! Xen ELF notes: note types, the note parser, and the kernel parameters derived from
//! them with Xen's defaults and consistency checks.
//!
//! Sources: xen public/elfnote.h (types), common/libelf/libelf-dominfo.c (parsing,
//! defaults, refusals), libelf-tools.c (note layout).
//!
//! Typical use (the builder and `kxen inspect`):
//!
//! ```no_run
//! # fn demo(image: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use xen_abi::elfnote::parse_xen_notes;
//! use xen_abi::negotiate::{check_launch, LaunchMode};
//! let notes = parse_xen_notes(image)?; // fails only on a malformed image
//! for raw in notes.raw() { /* readelf -n style listing */ let _ = raw.type_name(); }
//! let params = notes.kernel_params()?; // Xen's defaults and refusals
//! check_launch(&params, LaunchMode::Unprivileged)?; // required features, privilege
//! # Ok(()) }
//! ```
//!
//! kxen's decisions where Xen is lenient (all documented at the rule):
//! - a numeric note whose size is not 1, 2, 4 or 8 is an error (Xen reads it as 0);
//! - a `SUPPORTED_FEATURES` note whose size is not a multiple of 4 is an error (Xen reads 0);
//! - a string note without a NUL inside its descriptor is taken whole (bounded by
//!   `descsz`); a string note that is not UTF-8 is an error;
//! - a `FEATURES` token longer than 63 characters is an error (Xen truncates and goes on);
//! - malformed note headers are errors (Xen stops walking the segment);
//! - `XEN_ELFNOTE_ENTRY` must be inside `[kstart, kend)` (Xen accepts `entry == kend`).

use core::fmt;

use crate::elf::{Elf, ElfError, PT_NOTE, SHT_NOTE};
use crate::features::{elfnote_feature_bit, FeatureSet, FEATURE_WORDS};

/// Note 0: informational, ignored.
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// Virtual entry point (numeric).
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the hypercall page (numeric).
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual base the kernel is mapped at (numeric).
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// Offset between virtual and ELF physical addresses (numeric).
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// Xen version the kernel was built for, "xen-3.0" (string).
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Guest OS name, e.g. "linux" (string).
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Guest OS version (string).
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader, e.g. "generic" (string).
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE mode: "yes", "no", "bimodal" (string).
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// Feature string, `|`-separated, `!` = required (string).
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// "yes" if the loader should load the BSD symbol table (string).
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest address the hypervisor hole may start at (numeric, 32-bit guests).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// Mask/value pairs telling which L1 entries hold valid MFNs (raw).
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// The kernel supports the suspend-cancel protocol (numeric).
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Virtual address where the initial p2m list should be mapped (numeric).
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// `start_info.mod_start` is a PFN, the initrd is not mapped (numeric).
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// Bitmap of `XENFEAT_*` the kernel supports (array of u32).
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// 32-bit physical entry point (PVH, numeric).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// PVH relocation constraints (raw).
pub const XEN_ELFNOTE_PHYS32_RELOC: u32 = 19;
/// Highest note type kxen knows; larger types are ignored.
pub const XEN_ELFNOTE_MAX: u32 = XEN_ELFNOTE_PHYS32_RELOC;

/// More notes than this (of any owner, in all note regions) marks the image broken.
// xen: libelf-private.h ELF_MAX_TOTAL_NOTE_COUNT
pub const MAX_TOTAL_NOTES: usize = 65536;
/// Longest `FEATURES` token, including a leading `!`.
// xen: libelf-dominfo.c elf_xen_parse_features, 64-byte buffer with its NUL
pub const MAX_FEATURE_TOKEN: usize = 63;
/// How many unknown required feature names are kept (the total is counted).
pub const MAX_UNKNOWN_REQUIRED: usize = 4;

const NOTE_NAMES: [&str; 20] = [
    "INFO",
    "ENTRY",
    "HYPERCALL_PAGE",
    "VIRT_BASE",
    "PADDR_OFFSET",
    "XEN_VERSION",
    "GUEST_OS",
    "GUEST_VERSION",
    "LOADER",
    "PAE_MODE",
    "FEATURES",
    "BSD_SYMTAB",
    "HV_START_LOW",
    "L1_MFN_VALID",
    "SUSPEND_CANCEL",
    "INIT_P2M",
    "MOD_START_PFN",
    "SUPPORTED_FEATURES",
    "PHYS32_ENTRY",
    "PHYS32_RELOC",
];

/// The name of a Xen note type without the `XEN_ELFNOTE_` prefix ("ENTRY", ...).
pub fn note_name(n_type: u32) -> Option<&'static str> {
    NOTE_NAMES.get(usize::try_from(n_type).ok()?).copied()
}

/// A short copy of a string from the image, for error messages (keeps errors `'static`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortStr {
    buf: [u8; ShortStr::CAP],
    len: u8,
    truncated: bool,
}

impl ShortStr {
    /// Bytes kept.
    pub const CAP: usize = 40;

    /// Copies at most [`Self::CAP`] bytes of `s`, cut at a character boundary.
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(Self::CAP);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; Self::CAP];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        ShortStr {
            buf,
            len: end as u8,
            truncated: end < s.len(),
        }
    }

    /// The kept text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether the original was longer than what is kept.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Where a note lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// A `PT_NOTE` program header, by index.
    Segment(usize),
    /// A `SHT_NOTE` section, by index.
    Section(usize),
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Segment(i) => write!(f, "PT_NOTE segment {i}"),
            Region::Section(i) => write!(f, "SHT_NOTE section {i}"),
        }
    }
}

/// Where the Xen information came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteSource {
    /// No Xen notes and no `__xen_guest` section: not a Xen PV kernel.
    None,
    /// Notes in `PT_NOTE` segments.
    Segments,
    /// Notes in `SHT_NOTE` sections (no Xen note in any segment).
    Sections,
    /// The legacy `__xen_guest` section string.
    LegacyGuestInfo,
}

/// The PAE mode a kernel declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaeMode {
    /// No `PAE_MODE` note.
    Unset,
    /// "no".
    No,
    /// "yes".
    Yes,
    /// "bimodal".
    Bimodal,
    /// Legacy `PAE=yes[extended-cr3]`.
    YesExtendedCr3,
}

/// Why a kernel's notes cannot be parsed, or why the kernel is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteError {
    /// The ELF container is unusable.
    Elf(ElfError),
    /// Fewer than 12 bytes left for a note header.
    TruncatedHeader {
        /// Where.
        region: Region,
        /// Offset of the header inside the region.
        offset: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// `namesz` runs past the end of the region.
    NameOverflow {
        /// Where.
        region: Region,
        /// Offset of the note inside the region.
        offset: usize,
        /// `namesz`.
        namesz: u32,
        /// Bytes available after the header.
        available: usize,
    },
    /// `descsz` runs past the end of the region.
    DescOverflow {
        /// Where.
        region: Region,
        /// Offset of the note inside the region.
        offset: usize,
        /// `descsz`.
        descsz: u32,
        /// Bytes available after the (padded) name.
        available: usize,
    },
    /// More than [`MAX_TOTAL_NOTES`] notes.
    TooManyNotes,
    /// A numeric note whose size is not 1, 2, 4 or 8 (Xen would silently read 0).
    BadNumericSize {
        /// The note's name.
        note: &'static str,
        /// `descsz`.
        descsz: u32,
    },
    /// `SUPPORTED_FEATURES` whose size is not a multiple of 4 (Xen would read 0).
    BadBitmapSize {
        /// `descsz`.
        descsz: u32,
    },
    /// A string note (or `__xen_guest`) that is not UTF-8.
    NotUtf8 {
        /// The note's name.
        note: &'static str,
    },
    /// A `FEATURES` token longer than [`MAX_FEATURE_TOKEN`].
    FeatureTokenTooLong {
        /// Byte offset of the token in the string.
        offset: usize,
        /// Its length.
        len: usize,
        /// Its beginning.
        start: ShortStr,
    },
    /// A number in `__xen_guest` that does not parse.
    LegacyBadNumber {
        /// The key.
        key: &'static str,
        /// The value.
        value: ShortStr,
    },
    /// A value that overflows 64 bits (legacy `HYPERCALL_PAGE` PFN, kernel end).
    Overflow {
        /// What overflowed.
        what: &'static str,
        /// The value involved.
        value: u64,
    },
    /// No Xen notes and no `__xen_guest` section.
    NotXenKernel,
    /// Neither `LOADER` "generic*" nor `GUEST_OS` "linux*".
    BadLoader {
        /// `LOADER` ("" if absent).
        loader: ShortStr,
        /// `GUEST_OS` ("" if absent).
        guest_os: ShortStr,
    },
    /// `XEN_VERSION` is not "xen-3.0*".
    BadXenVersion {
        /// The value ("" if absent).
        value: ShortStr,
    },
    /// `PADDR_OFFSET` without `VIRT_BASE`.
    PaddrOffsetWithoutVirtBase {
        /// `PADDR_OFFSET`.
        paddr_offset: u64,
    },
    /// No loadable segment.
    NoLoadSegments,
    /// The kernel's start is above its end.
    KernelRange {
        /// Start.
        kstart: u64,
        /// End.
        kend: u64,
    },
    /// The entry point is outside the kernel.
    EntryOutside {
        /// Entry.
        entry: u64,
        /// Kernel start.
        kstart: u64,
        /// Kernel end.
        kend: u64,
    },
    /// `VIRT_BASE` above the kernel start.
    VirtBaseAboveKernel {
        /// `VIRT_BASE`.
        virt_base: u64,
        /// Kernel start.
        kstart: u64,
    },
    /// `INIT_P2M` inside the kernel.
    InitP2mInsideKernel {
        /// `INIT_P2M`.
        init_p2m: u64,
        /// Kernel start.
        kstart: u64,
        /// Kernel end.
        kend: u64,
    },
    /// `HYPERCALL_PAGE` outside the kernel.
    HypercallPageOutside {
        /// `HYPERCALL_PAGE`.
        va: u64,
        /// Kernel start.
        kstart: u64,
        /// Kernel end.
        kend: u64,
    },
    /// `PAE_MODE` is not yes/no/bimodal.
    BadPaeMode {
        /// The value.
        value: ShortStr,
    },
}

impl From<ElfError> for NoteError {
    fn from(e: ElfError) -> Self {
        NoteError::Elf(e)
    }
}

impl fmt::Display for NoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoteError::Elf(e) => write!(f, "ELF: {e}"),
            NoteError::TruncatedHeader { region, offset, remaining } => write!(
                f,
                "{region}: truncated note header at offset {offset:#x} ({remaining} bytes left, 12 needed)"
            ),
            NoteError::NameOverflow { region, offset, namesz, available } => write!(
                f,
                "{region}: note at offset {offset:#x}: namesz {namesz:#x} overflows the region ({available:#x} bytes left)"
            ),
            NoteError::DescOverflow { region, offset, descsz, available } => write!(
                f,
                "{region}: note at offset {offset:#x}: descsz {descsz:#x} overflows the region ({available:#x} bytes left)"
            ),
            NoteError::TooManyNotes => {
                write!(f, "more than {MAX_TOTAL_NOTES} ELF notes: image is broken")
            }
            NoteError::BadNumericSize { note, descsz } => write!(
                f,
                "XEN_ELFNOTE_{note}: numeric note of {descsz} bytes (must be 1, 2, 4 or 8; Xen would read 0, kxen refuses)"
            ),
            NoteError::BadBitmapSize { descsz } => write!(
                f,
                "XEN_ELFNOTE_SUPPORTED_FEATURES: size {descsz} is not a multiple of 4"
            ),
            NoteError::NotUtf8 { note } => write!(f, "{note}: string is not valid UTF-8"),
            NoteError::FeatureTokenTooLong { offset, len, start } => write!(
                f,
                "XEN_ELFNOTE_FEATURES: token at offset {offset} is {len} characters (max {MAX_FEATURE_TOKEN}): \"{start}\""
            ),
            NoteError::LegacyBadNumber { key, value } => {
                write!(f, "__xen_guest: {key}=\"{value}\" is not a number")
            }
            NoteError::Overflow { what, value } => write!(f, "{what} {value:#x} overflows 64 bits"),
            NoteError::NotXenKernel => f.write_str(
                "not a Xen PV kernel: no Xen ELF notes and no __xen_guest section",
            ),
            NoteError::BadLoader { loader, guest_os } => write!(
                f,
                "XEN_ELFNOTE_LOADER \"{loader}\" is not \"generic\" and XEN_ELFNOTE_GUEST_OS \"{guest_os}\" is not \"linux\""
            ),
            NoteError::BadXenVersion { value } => {
                write!(f, "XEN_ELFNOTE_XEN_VERSION \"{value}\" is not \"xen-3.0\"")
            }
            NoteError::PaddrOffsetWithoutVirtBase { paddr_offset } => write!(
                f,
                "XEN_ELFNOTE_PADDR_OFFSET {paddr_offset:#x} is set but XEN_ELFNOTE_VIRT_BASE is not"
            ),
            NoteError::NoLoadSegments => f.write_str("the kernel has no loadable (PT_LOAD) segment"),
            NoteError::KernelRange { kstart, kend } => {
                write!(f, "kernel start {kstart:#x} is above its end {kend:#x}")
            }
            NoteError::EntryOutside { entry, kstart, kend } => write!(
                f,
                "XEN_ELFNOTE_ENTRY {entry:#x} is outside the kernel [{kstart:#x},{kend:#x})"
            ),
            NoteError::VirtBaseAboveKernel { virt_base, kstart } => write!(
                f,
                "XEN_ELFNOTE_VIRT_BASE {virt_base:#x} is above the kernel start {kstart:#x}"
            ),
            NoteError::InitP2mInsideKernel { init_p2m, kstart, kend } => write!(
                f,
                "XEN_ELFNOTE_INIT_P2M {init_p2m:#x} is inside the kernel [{kstart:#x},{kend:#x})"
            ),
            NoteError::HypercallPageOutside { va, kstart, kend } => write!(
                f,
                "XEN_ELFNOTE_HYPERCALL_PAGE {va:#x} is outside the kernel [{kstart:#x},{kend:#x})"
            ),
            NoteError::BadPaeMode { value } => write!(
                f,
                "XEN_ELFNOTE_PAE_MODE \"{value}\" is not \"yes\", \"bimodal\" or \"no\""
            ),
        }
    }
}

impl core::error::Error for NoteError {}

/// One note as stored in the image (any owner), for `readelf -n`-like display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawNote<'a> {
    /// Where it is.
    pub region: Region,
    /// Offset of its header inside the region.
    pub offset: usize,
    /// The owner name, cut at its first NUL ("Xen").
    pub name: &'a [u8],
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor (`descsz` bytes, without padding).
    pub desc: &'a [u8],
}

impl RawNote<'_> {
    /// Whether the owner is "Xen".
    pub fn is_xen(&self) -> bool {
        self.name == b"Xen"
    }

    /// The Xen type name if this is a Xen note of a known type.
    pub fn type_name(&self) -> Option<&'static str> {
        if self.is_xen() {
            note_name(self.n_type)
        } else {
            None
        }
    }
}

fn align4(x: u32) -> usize {
    // Saturates (then fails the bounds checks) where usize is 32 bits.
    usize::try_from(x).unwrap_or(usize::MAX).saturating_add(3) & !3
}

/// Walks the notes of one region; stops after the first error.
#[derive(Debug, Clone)]
pub struct NoteIter<'a> {
    data: &'a [u8],
    pos: usize,
    region: Region,
    failed: bool,
}

impl<'a> NoteIter<'a> {
    /// Notes in `data`, which is the content of `region`.
    pub fn new(data: &'a [u8], region: Region) -> Self {
        NoteIter {
            data,
            pos: 0,
            region,
            failed: false,
        }
    }

    fn step(&mut self) -> Result<RawNote<'a>, NoteError> {
        let (d, pos, region) = (self.data, self.pos, self.region);
        let rd = |o: usize| -> u32 {
            match d.get(o..o + 4) {
                Some(&[a, b, c, e]) => u32::from_le_bytes([a, b, c, e]),
                _ => 0,
            }
        };
        let remaining = d.len() - pos;
        if remaining < 12 {
            return Err(NoteError::TruncatedHeader {
                region,
                offset: pos,
                remaining,
            });
        }
        let (namesz, descsz, n_type) = (rd(pos), rd(pos + 4), rd(pos + 8));
        let name_start = pos + 12;
        let available = d.len() - name_start;
        if namesz as usize > available {
            return Err(NoteError::NameOverflow {
                region,
                offset: pos,
                namesz,
                available,
            });
        }
        let name = &d[name_start..name_start + namesz as usize];
        let name = name
            .iter()
            .position(|&b| b == 0)
            .map_or(name, |n| &name[..n]);
        // xen: libelf-tools.c elf_note_desc/elf_note_next: name and desc padded to 4.
        let desc_start = name_start.saturating_add(align4(namesz));
        let desc = if descsz == 0 {
            &[][..]
        } else {
            let available = d.len().saturating_sub(desc_start);
            if descsz as usize > available {
                return Err(NoteError::DescOverflow {
                    region,
                    offset: pos,
                    descsz,
                    available,
                });
            }
            &d[desc_start..desc_start + descsz as usize]
        };
        // The last note's padding may be missing; clamp to the region's end.
        self.pos = desc_start.saturating_add(align4(descsz)).min(d.len());
        Ok(RawNote {
            region,
            offset: pos,
            name,
            n_type,
            desc,
        })
    }
}

impl<'a> Iterator for NoteIter<'a> {
    type Item = Result<RawNote<'a>, NoteError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let r = self.step();
        self.failed = r.is_err();
        Some(r)
    }
}

/// What the `FEATURES` string (and, in [`KernelParams`], `SUPPORTED_FEATURES`) declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureDecl<'a> {
    /// Supported features (required ones included, as in Xen).
    pub supported: FeatureSet,
    /// Required features (`!name`).
    pub required: FeatureSet,
    unknown_required: [&'a str; MAX_UNKNOWN_REQUIRED],
    unknown_required_total: usize,
}

impl<'a> FeatureDecl<'a> {
    /// The first [`MAX_UNKNOWN_REQUIRED`] unknown required names (without `!`).
    pub fn unknown_required(&self) -> &[&'a str] {
        &self.unknown_required[..self.unknown_required_total.min(MAX_UNKNOWN_REQUIRED)]
    }

    /// How many unknown required names there were in all.
    pub fn unknown_required_total(&self) -> usize {
        self.unknown_required_total
    }

    /// Parses a `FEATURES` string into `self` (accumulating, as Xen does for repeated
    /// notes). Unknown names are ignored; unknown required names are recorded.
    // xen: libelf-dominfo.c elf_xen_parse_features
    pub fn parse_into(&mut self, s: &'a str) -> Result<(), NoteError> {
        let mut offset = 0usize;
        for token in s.split('|') {
            let start = offset;
            offset = offset.saturating_add(token.len() + 1);
            if token.is_empty() {
                continue;
            }
            if token.len() > MAX_FEATURE_TOKEN {
                return Err(NoteError::FeatureTokenTooLong {
                    offset: start,
                    len: token.len(),
                    start: ShortStr::new(token),
                });
            }
            let (required, name) = match token.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, token),
            };
            match elfnote_feature_bit(name) {
                Some(bit) => {
                    self.supported.set(bit);
                    if required {
                        self.required.set(bit);
                    }
                }
                None if required => {
                    if let Some(slot) = self.unknown_required.get_mut(self.unknown_required_total) {
                        *slot = name;
                    }
                    self.unknown_required_total += 1;
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// Everything a kernel's Xen notes (or `__xen_guest`) say, before defaults and checks.
#[derive(Debug, Clone, Copy)]
pub struct XenNotes<'a> {
    elf: Elf<'a>,
    /// Where the information came from.
    pub source: NoteSource,
    /// Notes walked (any owner).
    pub total_notes: usize,
    /// Xen notes used.
    pub xen_notes: usize,
    /// `ENTRY` (legacy `VIRT_ENTRY`).
    pub entry: Option<u64>,
    /// `HYPERCALL_PAGE`, as a virtual address (legacy PFN already converted).
    pub hypercall_page: Option<u64>,
    /// `VIRT_BASE`.
    pub virt_base: Option<u64>,
    /// `PADDR_OFFSET` (legacy `ELF_PADDR_OFFSET`).
    pub paddr_offset: Option<u64>,
    /// `XEN_VERSION` (legacy `XEN_VER`).
    pub xen_version: Option<&'a str>,
    /// `GUEST_OS`.
    pub guest_os: Option<&'a str>,
    /// `GUEST_VERSION` (legacy `GUEST_VER`).
    pub guest_version: Option<&'a str>,
    /// `LOADER`.
    pub loader: Option<&'a str>,
    /// `PAE_MODE` (legacy `PAE`).
    pub pae_mode: Option<&'a str>,
    /// The last `FEATURES` string.
    pub features_str: Option<&'a str>,
    /// All `FEATURES` strings, parsed and accumulated.
    pub features: FeatureDecl<'a>,
    /// `BSD_SYMTAB` "yes" (legacy: key present).
    pub bsd_symtab: bool,
    /// `HV_START_LOW`.
    pub hv_start_low: Option<u64>,
    /// `L1_MFN_VALID` descriptor.
    pub l1_mfn_valid: Option<&'a [u8]>,
    /// `SUSPEND_CANCEL`.
    pub suspend_cancel: Option<u64>,
    /// `INIT_P2M`.
    pub init_p2m: Option<u64>,
    /// `MOD_START_PFN`.
    pub mod_start_pfn: Option<u64>,
    /// `SUPPORTED_FEATURES`, `None` if there was no such note (accumulated if repeated).
    pub supported_features: Option<FeatureSet>,
    /// `PHYS32_ENTRY`.
    pub phys32_entry: Option<u64>,
    /// `PHYS32_RELOC` descriptor.
    pub phys32_reloc: Option<&'a [u8]>,
    /// The legacy `__xen_guest` string, when that was the source.
    pub legacy_guest_info: Option<&'a str>,
}

/// Parses the Xen notes of an ELF image. See [`XenNotes::from_elf`].
pub fn parse_xen_notes(image: &[u8]) -> Result<XenNotes<'_>, NoteError> {
    XenNotes::from_elf(&Elf::parse(image)?)
}

fn numeric(note: &'static str, desc: &[u8]) -> Result<u64, NoteError> {
    // xen: libelf-tools.c elf_note_numeric (1, 2, 4, 8 bytes, little-endian here)
    if !matches!(desc.len(), 1 | 2 | 4 | 8) {
        return Err(NoteError::BadNumericSize {
            note,
            descsz: desc.len() as u32,
        });
    }
    let mut b = [0u8; 8];
    b[..desc.len()].copy_from_slice(desc);
    Ok(u64::from_le_bytes(b))
}

fn string<'a>(note: &'static str, desc: &'a [u8]) -> Result<&'a str, NoteError> {
    // Up to the first NUL; a descriptor without NUL is taken whole (bounded by descsz).
    let s = desc
        .iter()
        .position(|&b| b == 0)
        .map_or(desc, |n| &desc[..n]);
    core::str::from_utf8(s).map_err(|_| NoteError::NotUtf8 { note })
}

/// Parses a C-style unsigned number as `strtoull(s, NULL, 0)` would, but strictly.
fn parse_c_number(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || digits.starts_with('+') {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

impl<'a> XenNotes<'a> {
    fn empty(elf: &Elf<'a>) -> Self {
        XenNotes {
            elf: *elf,
            source: NoteSource::None,
            total_notes: 0,
            xen_notes: 0,
            entry: None,
            hypercall_page: None,
            virt_base: None,
            paddr_offset: None,
            xen_version: None,
            guest_os: None,
            guest_version: None,
            loader: None,
            pae_mode: None,
            features_str: None,
            features: FeatureDecl::default(),
            bsd_symtab: false,
            hv_start_low: None,
            l1_mfn_valid: None,
            suspend_cancel: None,
            init_p2m: None,
            mod_start_pfn: None,
            supported_features: None,
            phys32_entry: None,
            phys32_reloc: None,
            legacy_guest_info: None,
        }
    }

    /// Collects the Xen information of `elf`: notes from `PT_NOTE` segments (skipping
    /// `p_offset == 0`); if none of them is a Xen note, from `SHT_NOTE` sections; if
    /// still none, from the legacy `__xen_guest` section.
    // xen: libelf-dominfo.c elf_xen_parse
    pub fn from_elf(elf: &Elf<'a>) -> Result<Self, NoteError> {
        let mut n = Self::empty(elf);
        for ph in elf.program_headers() {
            // Some binutils leave p_offset 0 in note segments: skip them, as Xen does.
            if ph.p_type != PT_NOTE || ph.p_offset == 0 {
                continue;
            }
            n.walk(NoteIter::new(
                elf.segment_data(&ph)?,
                Region::Segment(ph.index),
            ))?;
        }
        if n.xen_notes > 0 {
            n.source = NoteSource::Segments;
            return Ok(n);
        }
        for sh in elf.section_headers().skip(1) {
            if sh.sh_type != SHT_NOTE {
                continue;
            }
            n.walk(NoteIter::new(
                elf.section_data(&sh)?,
                Region::Section(sh.index),
            ))?;
        }
        if n.xen_notes > 0 {
            n.source = NoteSource::Sections;
            return Ok(n);
        }
        if let Some(sh) = elf.section_by_name("__xen_guest")? {
            let data = elf.section_data(&sh)?;
            n.parse_legacy(string("__xen_guest", data)?)?;
            n.source = NoteSource::LegacyGuestInfo;
        }
        Ok(n)
    }

    /// The ELF image these notes came from.
    pub fn elf(&self) -> &Elf<'a> {
        &self.elf
    }

    /// All notes (any owner) of the regions the Xen notes came from, in image order;
    /// empty for `None` and `LegacyGuestInfo` sources.
    pub fn raw(&self) -> RawNotes<'a> {
        RawNotes {
            elf: self.elf,
            source: self.source,
            next_header: 0,
            cur: None,
        }
    }

    fn walk(&mut self, iter: NoteIter<'a>) -> Result<(), NoteError> {
        for note in iter {
            // xen: libelf-dominfo.c elf_xen_parse_notes, count checked before each note
            if self.total_notes >= MAX_TOTAL_NOTES {
                return Err(NoteError::TooManyNotes);
            }
            self.total_notes += 1;
            let note = note?;
            if note.is_xen() {
                self.apply(&note)?;
                self.xen_notes += 1;
            }
        }
        Ok(())
    }

    fn apply(&mut self, note: &RawNote<'a>) -> Result<(), NoteError> {
        let Some(name) = note_name(note.n_type) else {
            return Ok(()); // unknown type: ignored, as in Xen
        };
        let d = note.desc;
        match note.n_type {
            XEN_ELFNOTE_ENTRY => self.entry = Some(numeric(name, d)?),
            XEN_ELFNOTE_HYPERCALL_PAGE => self.hypercall_page = Some(numeric(name, d)?),
            XEN_ELFNOTE_VIRT_BASE => self.virt_base = Some(numeric(name, d)?),
            XEN_ELFNOTE_PADDR_OFFSET => self.paddr_offset = Some(numeric(name, d)?),
            XEN_ELFNOTE_XEN_VERSION => self.xen_version = Some(string(name, d)?),
            XEN_ELFNOTE_GUEST_OS => self.guest_os = Some(string(name, d)?),
            XEN_ELFNOTE_GUEST_VERSION => self.guest_version = Some(string(name, d)?),
            XEN_ELFNOTE_LOADER => self.loader = Some(string(name, d)?),
            XEN_ELFNOTE_PAE_MODE => self.pae_mode = Some(string(name, d)?),
            XEN_ELFNOTE_FEATURES => {
                let s = string(name, d)?;
                self.features.parse_into(s)?;
                self.features_str = Some(s);
            }
            XEN_ELFNOTE_BSD_SYMTAB => self.bsd_symtab = string(name, d)? == "yes",
            XEN_ELFNOTE_HV_START_LOW => self.hv_start_low = Some(numeric(name, d)?),
            XEN_ELFNOTE_L1_MFN_VALID => self.l1_mfn_valid = Some(d),
            XEN_ELFNOTE_SUSPEND_CANCEL => self.suspend_cancel = Some(numeric(name, d)?),
            XEN_ELFNOTE_INIT_P2M => self.init_p2m = Some(numeric(name, d)?),
            XEN_ELFNOTE_MOD_START_PFN => self.mod_start_pfn = Some(numeric(name, d)?),
            XEN_ELFNOTE_SUPPORTED_FEATURES => {
                // Any number of u32 words; kxen keeps the first FEATURE_WORDS (Xen reads
                // XENFEAT_NR_SUBMAPS = 1); extra words are ignored (forward compatible).
                if d.len() & 3 != 0 {
                    return Err(NoteError::BadBitmapSize {
                        descsz: d.len() as u32,
                    });
                }
                let mut set = self.supported_features.unwrap_or_default();
                for (i, w) in d.chunks_exact(4).take(FEATURE_WORDS).enumerate() {
                    set.or_submap(i, u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
                }
                self.supported_features = Some(set);
            }
            XEN_ELFNOTE_PHYS32_ENTRY => self.phys32_entry = Some(numeric(name, d)?),
            XEN_ELFNOTE_PHYS32_RELOC => self.phys32_reloc = Some(d),
            _ => {} // INFO
        }
        Ok(())
    }

    /// The legacy `__xen_guest` string: comma-separated `NAME=VALUE`.
    // xen: libelf-dominfo.c elf_xen_parse_guest_info
    fn parse_legacy(&mut self, s: &'a str) -> Result<(), NoteError> {
        self.legacy_guest_info = Some(s);
        let mut hypercall_pfn = None;
        for item in s.split(',') {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let num = |k: &'static str| {
                parse_c_number(value).ok_or(NoteError::LegacyBadNumber {
                    key: k,
                    value: ShortStr::new(value),
                })
            };
            match key {
                "LOADER" => self.loader = Some(value),
                "GUEST_OS" => self.guest_os = Some(value),
                "GUEST_VER" => self.guest_version = Some(value),
                "XEN_VER" => self.xen_version = Some(value),
                "PAE" => self.pae_mode = Some(value),
                "BSD_SYMTAB" => self.bsd_symtab = true,
                "VIRT_BASE" => self.virt_base = Some(num("VIRT_BASE")?),
                "VIRT_ENTRY" => self.entry = Some(num("VIRT_ENTRY")?),
                "ELF_PADDR_OFFSET" => self.paddr_offset = Some(num("ELF_PADDR_OFFSET")?),
                "HYPERCALL_PAGE" => hypercall_pfn = Some(num("HYPERCALL_PAGE")?),
                "FEATURES" => {
                    self.features.parse_into(value)?;
                    self.features_str = Some(value);
                }
                _ => {}
            }
        }
        if let Some(pfn) = hypercall_pfn {
            // A PFN relative to VIRT_BASE (added after the whole string is read).
            let overflow = NoteError::Overflow {
                what: "__xen_guest HYPERCALL_PAGE",
                value: pfn,
            };
            let va = pfn
                .checked_mul(4096)
                .and_then(|a| a.checked_add(self.virt_base.unwrap_or(0)))
                .ok_or(overflow)?;
            self.hypercall_page = Some(va);
        }
        Ok(())
    }

    /// Applies Xen's defaults and consistency checks and returns what the domain
    /// builder needs. Required features and privilege are checked separately, by
    /// [`crate::negotiate::check_launch`]; both together are Xen's acceptance rules.
    // xen: libelf-dominfo.c elf_xen_note_check and elf_xen_addr_calc_check
    pub fn kernel_params(&self) -> Result<KernelParams<'a>, NoteError> {
        if self.source == NoteSource::None {
            return Err(NoteError::NotXenKernel);
        }
        let loader_ok = self.loader.is_some_and(|l| l.starts_with("generic"));
        let os_ok = self.guest_os.is_some_and(|o| o.starts_with("linux"));
        if !loader_ok && !os_ok {
            return Err(NoteError::BadLoader {
                loader: ShortStr::new(self.loader.unwrap_or("")),
                guest_os: ShortStr::new(self.guest_os.unwrap_or("")),
            });
        }
        if !self.xen_version.is_some_and(|v| v.starts_with("xen-3.0")) {
            return Err(NoteError::BadXenVersion {
                value: ShortStr::new(self.xen_version.unwrap_or("")),
            });
        }
        if let (Some(paddr_offset), None) = (self.paddr_offset, self.virt_base) {
            return Err(NoteError::PaddrOffsetWithoutVirtBase { paddr_offset });
        }
        let virt_base = self.virt_base.unwrap_or(0);
        // Legacy images set p_paddr to virtual addresses, hence the default.
        let paddr_offset = self.paddr_offset.unwrap_or(match self.source {
            NoteSource::LegacyGuestInfo => virt_base,
            _ => 0,
        });
        let (pstart, pend) = self.phys_range()?;
        // Xen's arithmetic is modulo 2^64 here (an offset may be "negative"); the
        // range checks below catch inconsistent results.
        let virt_offset = virt_base.wrapping_sub(paddr_offset);
        let kstart = pstart.wrapping_add(virt_offset);
        let kend = pend.wrapping_add(virt_offset);
        let entry = self.entry.unwrap_or(self.elf.entry());
        if kstart > kend {
            return Err(NoteError::KernelRange { kstart, kend });
        }
        // kxen: [kstart, kend) — Xen also accepts entry == kend, which is no code.
        if entry < kstart || entry >= kend {
            return Err(NoteError::EntryOutside {
                entry,
                kstart,
                kend,
            });
        }
        if virt_base > kstart {
            return Err(NoteError::VirtBaseAboveKernel { virt_base, kstart });
        }
        if let Some(p2m) = self.init_p2m {
            if p2m >= kstart && p2m < kend {
                return Err(NoteError::InitP2mInsideKernel {
                    init_p2m: p2m,
                    kstart,
                    kend,
                });
            }
        }
        if let Some(va) = self.hypercall_page {
            // xen: pv/dom0_build.c "Invalid HYPERCALL_PAGE field in ELF notes"; kxen
            // requires the kernel image itself, where Linux puts it.
            if va < kstart || va >= kend {
                return Err(NoteError::HypercallPageOutside { va, kstart, kend });
            }
        }
        let pae = match (self.pae_mode, self.source) {
            (None, _) => PaeMode::Unset,
            (Some("yes"), _) => PaeMode::Yes,
            (Some("no"), _) => PaeMode::No,
            (Some("bimodal"), _) => PaeMode::Bimodal,
            (Some("yes[extended-cr3]"), NoteSource::LegacyGuestInfo) => PaeMode::YesExtendedCr3,
            (Some(v), _) => {
                return Err(NoteError::BadPaeMode {
                    value: ShortStr::new(v),
                })
            }
        };
        let mut features = self.features;
        if let Some(s) = self.supported_features {
            features.supported = features.supported.union(s);
        }
        Ok(KernelParams {
            source: self.source,
            virt_base,
            paddr_offset,
            virt_offset,
            virt_entry: entry,
            virt_kstart: kstart,
            virt_kend: kend,
            virt_hypercall: self.hypercall_page,
            hv_start_low: self.hv_start_low,
            init_p2m: self.init_p2m,
            mod_start_pfn: self.mod_start_pfn.is_some_and(|v| v != 0),
            phys32_entry: self.phys32_entry,
            features,
            supported_note: self.supported_features,
            guest_os: self.guest_os,
            guest_version: self.guest_version,
            loader: self.loader,
            xen_version: self.xen_version,
            pae,
            suspend_cancel: self.suspend_cancel.is_some_and(|v| v != 0),
            bsd_symtab: self.bsd_symtab,
        })
    }

    /// Lowest `p_paddr` and highest `p_paddr + p_memsz` over loadable segments.
    // xen: libelf-loader.c elf_parse_binary (pstart/pend)
    fn phys_range(&self) -> Result<(u64, u64), NoteError> {
        let mut range: Option<(u64, u64)> = None;
        for ph in self.elf.program_headers().filter(|p| p.is_loadable()) {
            let end = ph
                .p_paddr
                .checked_add(ph.p_memsz)
                .ok_or(NoteError::Overflow {
                    what: "PT_LOAD p_paddr + p_memsz, p_paddr",
                    value: ph.p_paddr,
                })?;
            range = Some(match range {
                None => (ph.p_paddr, end),
                Some((s, e)) => (s.min(ph.p_paddr), e.max(end)),
            });
        }
        range.ok_or(NoteError::NoLoadSegments)
    }
}

/// Iterator over the raw notes of the regions a [`XenNotes`] came from.
#[derive(Debug, Clone)]
pub struct RawNotes<'a> {
    elf: Elf<'a>,
    source: NoteSource,
    next_header: usize,
    cur: Option<NoteIter<'a>>,
}

impl<'a> Iterator for RawNotes<'a> {
    type Item = RawNote<'a>;
    fn next(&mut self) -> Option<RawNote<'a>> {
        loop {
            if let Some(it) = self.cur.as_mut() {
                // The regions parsed without error once; a failure just ends them.
                if let Some(Ok(n)) = it.next() {
                    return Some(n);
                }
                self.cur = None;
            }
            let idx = self.next_header;
            self.next_header += 1;
            match self.source {
                NoteSource::Segments => {
                    let ph = self.elf.program_header(idx).ok()?;
                    if ph.p_type == PT_NOTE && ph.p_offset != 0 {
                        let data = self.elf.segment_data(&ph).ok()?;
                        self.cur = Some(NoteIter::new(data, Region::Segment(idx)));
                    }
                }
                NoteSource::Sections => {
                    let sh = self.elf.section_header(idx).ok()?;
                    if idx > 0 && sh.sh_type == SHT_NOTE {
                        let data = self.elf.section_data(&sh).ok()?;
                        self.cur = Some(NoteIter::new(data, Region::Section(idx)));
                    }
                }
                NoteSource::None | NoteSource::LegacyGuestInfo => return None,
            }
        }
    }
}

/// A kernel's parameters after Xen's defaults and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelParams<'a> {
    /// Where the information came from.
    pub source: NoteSource,
    /// `VIRT_BASE` (default 0).
    pub virt_base: u64,
    /// `PADDR_OFFSET` (default 0 with notes, `virt_base` with `__xen_guest`).
    pub paddr_offset: u64,
    /// `virt_base - paddr_offset` (mod 2^64): add to a `p_paddr` to get its virtual address.
    pub virt_offset: u64,
    /// Entry point (`ENTRY`, default `e_entry`).
    pub virt_entry: u64,
    /// Virtual start of the loaded kernel.
    pub virt_kstart: u64,
    /// Virtual end (exclusive) of the loaded kernel.
    pub virt_kend: u64,
    /// Hypercall page virtual address.
    pub virt_hypercall: Option<u64>,
    /// `HV_START_LOW`.
    pub hv_start_low: Option<u64>,
    /// `INIT_P2M`: where to map the p2m list.
    pub init_p2m: Option<u64>,
    /// `MOD_START_PFN` non-zero.
    pub mod_start_pfn: bool,
    /// `PHYS32_ENTRY`.
    pub phys32_entry: Option<u64>,
    /// Supported (`FEATURES` names | `SUPPORTED_FEATURES` bits) and required features.
    pub features: FeatureDecl<'a>,
    /// The `SUPPORTED_FEATURES` note alone, `None` if absent.
    pub supported_note: Option<FeatureSet>,
    /// `GUEST_OS`.
    pub guest_os: Option<&'a str>,
    /// `GUEST_VERSION`.
    pub guest_version: Option<&'a str>,
    /// `LOADER`.
    pub loader: Option<&'a str>,
    /// `XEN_VERSION`.
    pub xen_version: Option<&'a str>,
    /// PAE mode (informational for 64-bit guests).
    pub pae: PaeMode,
    /// `SUSPEND_CANCEL` non-zero.
    pub suspend_cancel: bool,
    /// `BSD_SYMTAB` requested (kxen does not load BSD symbol tables).
    pub bsd_symtab: bool,
}
