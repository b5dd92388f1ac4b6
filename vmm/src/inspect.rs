//! `kxen inspect`: what kxen would do with a kernel, without running it.
//!
//! [`inspect`] turns a kernel file into an [`InspectReport`]: the image format, the Xen
//! notes (decoded and raw, as `readelf -n` lists them), the declared features, the verdict
//! of both launch modes with the `XENVER_get_features` submap each would see, and the
//! start-of-day virtual layout for a given memory size. The report serialises to JSON with
//! stable field names (an interface: add fields, never rename) and renders for humans with
//! [`fmt::Display`].
//!
//! Addresses and bitmaps are JSON strings in `0x…` hex (64-bit values do not fit a JSON
//! number exactly); counts and frame numbers are numbers.

use std::fmt::{self, Write as _};

use serde::Serialize;
use thiserror::Error;
use xen_abi::elfnote::{self, KernelParams, NoteError, NoteSource, PaeMode, RawNote, XenNotes};
use xen_abi::features::{feature_name, FeatureSet};
use xen_abi::layout::{self, Layout, LayoutInput};
use xen_abi::negotiate::{self, LaunchMode, KXEN_IMPLEMENTED};

use crate::image::{self, Codec, Format, ImageError, KernelImage};

/// Why a file could not be inspected (it is not a kernel kxen could launch at all).
#[derive(Debug, Error)]
pub enum InspectError {
    /// Not a loadable image (format, compression, not ELF64 x86_64).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The ELF or its Xen notes are unusable.
    #[error("{}", note_message(.0))]
    Notes(#[from] NoteError),
    /// `--memory` too large to express in pages.
    #[error("--memory {0} MiB is too large")]
    MemoryTooLarge(u64),
}

fn note_message(e: &NoteError) -> String {
    match e {
        // Already says "not a Xen PV kernel".
        NoteError::NotXenKernel => e.to_string(),
        e => format!("not a Xen PV kernel: {e}"),
    }
}

/// A 64-bit value rendered as `0x…` hex (JSON string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Everything `kxen inspect` reports. Field names are a stable interface.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The image: how it was packaged.
    pub image: ImageReport,
    /// The Xen guest information from the notes (after Xen's defaults).
    pub guest: GuestReport,
    /// Declared features.
    pub features: FeaturesReport,
    /// Every note of the regions the Xen notes came from, in file order.
    pub notes: Vec<NoteReport>,
    /// The verdict and feature submap for each launch mode.
    pub launch: LaunchReport,
    /// The start-of-day virtual layout kxen would build.
    pub layout: LayoutSection,
}

/// How the kernel file was packaged.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// "elf", "bzimage" or "compressed_elf".
    pub format: &'static str,
    /// "gzip", "xz", "lzma", "lz4", "zstd", "bzip2", or null when not compressed.
    pub codec: Option<Codec>,
    /// Size of the input file in bytes.
    pub file_size: u64,
    /// Size of the (decompressed) ELF in bytes.
    pub elf_size: u64,
    /// Where the Xen information came from: "segments", "sections" or "legacy_guest_info".
    pub note_source: &'static str,
}

/// The kernel's Xen parameters.
#[derive(Debug, Clone, Serialize)]
pub struct GuestReport {
    /// `GUEST_OS`.
    pub guest_os: Option<String>,
    /// `GUEST_VERSION`.
    pub guest_version: Option<String>,
    /// `LOADER`.
    pub loader: Option<String>,
    /// `XEN_VERSION`.
    pub xen_version: Option<String>,
    /// Entry point (`ENTRY`, default `e_entry`).
    pub entry: Hex,
    /// `VIRT_BASE` (default 0).
    pub virt_base: Hex,
    /// `PADDR_OFFSET` (default 0).
    pub paddr_offset: Hex,
    /// First virtual address of the loaded kernel.
    pub virt_kstart: Hex,
    /// End (exclusive) of the loaded kernel.
    pub virt_kend: Hex,
    /// Hypercall page virtual address.
    pub hypercall_page: Option<Hex>,
    /// `HV_START_LOW`.
    pub hv_start_low: Option<Hex>,
    /// `INIT_P2M`: where the kernel wants the p2m list.
    pub init_p2m: Option<Hex>,
    /// "yes", "no", "bimodal", "yes[extended-cr3]" or "unset".
    pub pae_mode: &'static str,
    /// `MOD_START_PFN` set (initrd given by frame number, unmapped).
    pub mod_start_pfn: bool,
    /// `SUSPEND_CANCEL` set.
    pub suspend_cancel: bool,
    /// `BSD_SYMTAB` requested (kxen does not load BSD symbol tables).
    pub bsd_symtab: bool,
}

/// Declared features.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesReport {
    /// The `FEATURES` string note as written, if any.
    pub features_note: Option<String>,
    /// Supported features (`FEATURES` names and `SUPPORTED_FEATURES` bits), by name
    /// (`bit_N` for bits kxen has no name for).
    pub supported: Vec<String>,
    /// Required features (`!name` in `FEATURES`), by name.
    pub required: Vec<String>,
    /// Required names neither Xen nor kxen knows.
    pub unknown_required: Vec<String>,
    /// The `SUPPORTED_FEATURES` bitmap (all submaps, as one hex number), null if absent.
    pub supported_features: Option<String>,
}

/// One ELF note, as `readelf -n` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct NoteReport {
    /// Owner name ("Xen", "GNU", "Linux", …).
    pub owner: String,
    /// Note type number.
    #[serde(rename = "type")]
    pub n_type: u32,
    /// Xen note name without `XEN_ELFNOTE_` (null for unknown types and other owners).
    pub type_name: Option<&'static str>,
    /// Descriptor size in bytes.
    pub desc_size: u64,
    /// Descriptor bytes as space-separated lowercase hex (readelf's format).
    pub desc_hex: String,
    /// Decoded value for Xen notes (string, hex number, …), null when not decodable.
    pub value: Option<String>,
}

/// Both launch modes.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchReport {
    /// The mode `kxen inspect` was asked about ("unprivileged" or "privileged").
    pub requested: &'static str,
    /// The verdict for an ordinary domain.
    pub unprivileged: LaunchVerdict,
    /// The verdict for a privileged (dom0-like) domain.
    pub privileged: LaunchVerdict,
}

/// One launch mode's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchVerdict {
    /// kxen would launch the kernel in this mode.
    pub allowed: bool,
    /// Why not, when refused.
    pub refusal: Option<String>,
    /// `XENVER_get_features` submap 0 the guest would see (hex).
    pub features_submap0: Hex,
    /// The names of that submap's bits.
    pub features_submap0_names: Vec<String>,
}

/// The start-of-day layout, or why it cannot be built for this memory size.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutSection {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Guest pages.
    pub nr_pages: u64,
    /// The layout, null when it cannot be built.
    pub start_of_day: Option<LayoutReport>,
    /// Why it cannot be built.
    pub error: Option<String>,
}

/// A run of pages in the layout.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    /// First virtual address.
    pub vstart: Hex,
    /// End virtual address (exclusive).
    pub vend: Hex,
    /// First pseudo-physical frame.
    pub pfn: u64,
    /// Pages.
    pub pages: u64,
}

/// One virtually contiguous mapping and its page tables.
#[derive(Debug, Clone, Serialize)]
pub struct MappingReport {
    /// First virtual address mapped.
    pub from: Hex,
    /// Last virtual address mapped (inclusive).
    pub to: Hex,
    /// Frame mapped at `from`.
    pub pfn: u64,
    /// Page-table pages for this mapping.
    pub tables: u64,
    /// Table pages per level, L1 first.
    pub tables_per_level: [u64; 4],
}

/// The layout kxen's domain builder would produce (xen-abi `layout::compute`).
#[derive(Debug, Clone, Serialize)]
pub struct LayoutReport {
    /// The kernel image.
    pub kernel: SegmentReport,
    /// The p2m list.
    pub p2m: SegmentReport,
    /// start_info page (virtual address, frame).
    pub start_info: PageReport,
    /// xenstore ring page.
    pub xenstore: PageReport,
    /// console ring page.
    pub console: PageReport,
    /// The initial page tables (first page = L4).
    pub page_tables: SegmentReport,
    /// The boot stack page.
    pub boot_stack: PageReport,
    /// End (exclusive) of the initial mapping.
    pub virt_pgtab_end: Hex,
    /// The mappings: the initial one, then the separate p2m mapping if any.
    pub mappings: Vec<MappingReport>,
    /// First frame the builder does not use.
    pub pfn_alloc_end: u64,
}

/// A single page in the layout.
#[derive(Debug, Clone, Serialize)]
pub struct PageReport {
    /// Its virtual address.
    pub va: Hex,
    /// Its frame.
    pub pfn: u64,
}

/// Inspect a kernel file's bytes for a launch in `mode` with `memory_mib` MiB of RAM.
pub fn inspect(
    bytes: &[u8],
    mode: LaunchMode,
    memory_mib: u64,
) -> Result<InspectReport, InspectError> {
    let img = image::load_kernel_image(bytes)?;
    inspect_image(&img, bytes.len() as u64, mode, memory_mib)
}

/// [`inspect`] for an already loaded image.
pub fn inspect_image(
    img: &KernelImage,
    file_size: u64,
    mode: LaunchMode,
    memory_mib: u64,
) -> Result<InspectReport, InspectError> {
    let notes = elfnote::parse_xen_notes(&img.elf)?;
    let params = notes.kernel_params()?;
    let nr_pages = memory_mib
        .checked_mul(256)
        .ok_or(InspectError::MemoryTooLarge(memory_mib))?;
    Ok(InspectReport {
        image: ImageReport {
            format: match img.format {
                Format::Elf => "elf",
                Format::BzImage => "bzimage",
                Format::CompressedElf => "compressed_elf",
            },
            codec: img.codec,
            file_size,
            elf_size: img.elf.len() as u64,
            note_source: match notes.source {
                NoteSource::None => "none",
                NoteSource::Segments => "segments",
                NoteSource::Sections => "sections",
                NoteSource::LegacyGuestInfo => "legacy_guest_info",
            },
        },
        guest: guest_report(&params),
        features: features_report(&notes, &params),
        notes: notes.raw().map(|n| note_report(&n)).collect(),
        launch: LaunchReport {
            requested: mode_name(mode),
            unprivileged: verdict(&params, LaunchMode::Unprivileged),
            privileged: verdict(&params, LaunchMode::Privileged),
        },
        layout: layout_section(&params, memory_mib, nr_pages),
    })
}

impl InspectReport {
    /// The verdict for `mode`.
    pub fn verdict(&self, mode: LaunchMode) -> &LaunchVerdict {
        match mode {
            LaunchMode::Unprivileged => &self.launch.unprivileged,
            LaunchMode::Privileged => &self.launch.privileged,
        }
    }
}

/// "unprivileged" or "privileged".
pub fn mode_name(mode: LaunchMode) -> &'static str {
    match mode {
        LaunchMode::Unprivileged => "unprivileged",
        LaunchMode::Privileged => "privileged",
    }
}

fn guest_report(p: &KernelParams<'_>) -> GuestReport {
    GuestReport {
        guest_os: p.guest_os.map(str::to_owned),
        guest_version: p.guest_version.map(str::to_owned),
        loader: p.loader.map(str::to_owned),
        xen_version: p.xen_version.map(str::to_owned),
        entry: Hex(p.virt_entry),
        virt_base: Hex(p.virt_base),
        paddr_offset: Hex(p.paddr_offset),
        virt_kstart: Hex(p.virt_kstart),
        virt_kend: Hex(p.virt_kend),
        hypercall_page: p.virt_hypercall.map(Hex),
        hv_start_low: p.hv_start_low.map(Hex),
        init_p2m: p.init_p2m.map(Hex),
        pae_mode: match p.pae {
            PaeMode::Unset => "unset",
            PaeMode::No => "no",
            PaeMode::Yes => "yes",
            PaeMode::Bimodal => "bimodal",
            PaeMode::YesExtendedCr3 => "yes[extended-cr3]",
        },
        mod_start_pfn: p.mod_start_pfn,
        suspend_cancel: p.suspend_cancel,
        bsd_symtab: p.bsd_symtab,
    }
}

fn set_names(set: &FeatureSet) -> Vec<String> {
    set.iter()
        .map(|bit| feature_name(bit).map_or_else(|| format!("bit_{bit}"), str::to_owned))
        .collect()
}

fn bitmap_hex(set: &FeatureSet) -> String {
    let v = set
        .words()
        .iter()
        .rev()
        .fold(0u128, |acc, &w| (acc << 32) | u128::from(w));
    format!("{v:#x}")
}

fn features_report(notes: &XenNotes<'_>, p: &KernelParams<'_>) -> FeaturesReport {
    FeaturesReport {
        features_note: notes.features_str.map(str::to_owned),
        supported: set_names(&p.features.supported),
        required: set_names(&p.features.required),
        unknown_required: p
            .features
            .unknown_required()
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        supported_features: p.supported_note.as_ref().map(bitmap_hex),
    }
}

fn hex_bytes(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn le_number(b: &[u8]) -> Option<u64> {
    if !matches!(b.len(), 1 | 2 | 4 | 8) {
        return None;
    }
    let mut w = [0u8; 8];
    w.get_mut(..b.len())?.copy_from_slice(b);
    Some(u64::from_le_bytes(w))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or_default()).into_owned()
}

fn note_report(n: &RawNote<'_>) -> NoteReport {
    let type_name = n.type_name();
    let value = match type_name {
        None => None,
        Some(
            "XEN_VERSION" | "GUEST_OS" | "GUEST_VERSION" | "LOADER" | "PAE_MODE" | "FEATURES"
            | "BSD_SYMTAB",
        ) => Some(c_string(n.desc)),
        Some("L1_MFN_VALID") => match n.desc.len() {
            16 => {
                let mask = le_number(n.desc.get(..8).unwrap_or_default());
                let val = le_number(n.desc.get(8..).unwrap_or_default());
                mask.zip(val)
                    .map(|(m, v)| format!("mask {m:#x} value {v:#x}"))
            }
            _ => le_number(n.desc).map(|m| format!("mask {m:#x}")),
        },
        Some("SUPPORTED_FEATURES") if n.desc.len() & 3 == 0 && n.desc.len() <= 16 => {
            let mut words = [0u32; 4];
            for (w, c) in words.iter_mut().zip(n.desc.chunks_exact(4)) {
                *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            Some(bitmap_hex(&FeatureSet::from_words(words)))
        }
        Some("PHYS32_RELOC") => Some(hex_bytes(n.desc)),
        Some(_) => le_number(n.desc).map(|v| format!("{v:#x}")),
    };
    NoteReport {
        owner: String::from_utf8_lossy(n.name.strip_suffix(b"\0").unwrap_or(n.name)).into_owned(),
        n_type: n.n_type,
        type_name,
        desc_size: n.desc.len() as u64,
        desc_hex: hex_bytes(n.desc),
        value,
    }
}

fn verdict(p: &KernelParams<'_>, mode: LaunchMode) -> LaunchVerdict {
    let refusal = negotiate::check_launch(p, mode)
        .err()
        .map(|r| r.to_string());
    // Submap 0 always exists (only other indices fail).
    let submap = negotiate::features_submap(mode, p, KXEN_IMPLEMENTED, 0).unwrap_or(0);
    LaunchVerdict {
        allowed: refusal.is_none(),
        refusal,
        features_submap0: Hex(u64::from(submap)),
        features_submap0_names: set_names(&FeatureSet::from_words([submap, 0, 0, 0])),
    }
}

fn seg(s: &layout::Segment) -> SegmentReport {
    SegmentReport {
        vstart: Hex(s.vstart),
        vend: Hex(s.vend()),
        pfn: s.pfn,
        pages: s.pages,
    }
}

fn layout_section(p: &KernelParams<'_>, memory_mib: u64, nr_pages: u64) -> LayoutSection {
    let input = LayoutInput {
        virt_base: p.virt_base,
        virt_kstart: p.virt_kstart,
        virt_kend: p.virt_kend,
        nr_pages,
        initrd_len: 0,
        unmapped_initrd: p.mod_start_pfn,
        p2m_base: p.init_p2m,
    };
    match layout::compute(&input) {
        Ok(l) => LayoutSection {
            memory_mib,
            nr_pages,
            start_of_day: Some(layout_report(&l)),
            error: None,
        },
        Err(e) => LayoutSection {
            memory_mib,
            nr_pages,
            start_of_day: None,
            error: Some(e.to_string()),
        },
    }
}

/// Sign-extend a 48-bit virtual address (the layout keeps mapping bounds masked to 48 bits,
/// as libxenguest does) to its canonical form.
fn canonical(va: u64) -> u64 {
    if va & (1 << 47) != 0 {
        va | 0xffff_0000_0000_0000
    } else {
        va & 0x0000_ffff_ffff_ffff
    }
}

fn layout_report(l: &Layout) -> LayoutReport {
    let page = |pfn: u64| PageReport {
        va: Hex(l.pfn_to_virt(pfn)),
        pfn,
    };
    LayoutReport {
        kernel: seg(&l.kernel),
        p2m: seg(&l.p2m),
        start_info: page(l.start_info_pfn),
        xenstore: page(l.xenstore_pfn),
        console: page(l.console_pfn),
        page_tables: seg(&l.page_tables),
        boot_stack: page(l.bootstack_pfn),
        virt_pgtab_end: Hex(l.virt_pgtab_end),
        mappings: l
            .mappings
            .iter()
            .take(l.n_mappings)
            .map(|m| MappingReport {
                from: Hex(canonical(m.from)),
                to: Hex(canonical(m.to)),
                pfn: m.pfn,
                tables: m.tables,
                tables_per_level: m.levels.map(|lv| lv.tables),
            })
            .collect(),
        pfn_alloc_end: l.pfn_alloc_end,
    }
}

/// Width of the key column in the human rendering.
const KEY: usize = 20;

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(", ")
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kv = |f: &mut fmt::Formatter<'_>, k: &str, v: &dyn fmt::Display| {
            writeln!(f, "  {k:<KEY$} {v}")
        };
        let i = &self.image;
        writeln!(f, "Image")?;
        let packaging = match (i.format, i.codec) {
            ("bzimage", Some(c)) => format!("bzImage, {c} payload"),
            ("bzimage", None) => "bzImage, uncompressed payload".to_owned(),
            ("compressed_elf", Some(c)) => format!("{c}-compressed ELF"),
            _ => "ELF".to_owned(),
        };
        kv(f, "format", &packaging)?;
        kv(f, "file size", &i.file_size)?;
        kv(f, "ELF size", &i.elf_size)?;
        kv(f, "notes from", &i.note_source)?;

        let g = &self.guest;
        writeln!(f, "\nXen guest")?;
        kv(f, "guest OS", &opt(&g.guest_os))?;
        kv(f, "guest version", &opt(&g.guest_version))?;
        kv(f, "loader", &opt(&g.loader))?;
        kv(f, "Xen version", &opt(&g.xen_version))?;
        kv(f, "entry", &g.entry)?;
        kv(f, "virt_base", &g.virt_base)?;
        kv(f, "paddr_offset", &g.paddr_offset)?;
        kv(
            f,
            "kernel",
            &format_args!("{} - {}", g.virt_kstart, g.virt_kend),
        )?;
        kv(f, "hypercall page", &opt(&g.hypercall_page))?;
        kv(f, "HV_START_LOW", &opt(&g.hv_start_low))?;
        kv(f, "INIT_P2M", &opt(&g.init_p2m))?;
        kv(f, "PAE mode", &g.pae_mode)?;
        let flags: Vec<String> = [
            ("mod_start_pfn", g.mod_start_pfn),
            ("suspend_cancel", g.suspend_cancel),
            ("bsd_symtab", g.bsd_symtab),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| (*n).to_owned())
        .collect();
        kv(f, "flags", &list(&flags))?;

        let ft = &self.features;
        writeln!(f, "\nFeatures")?;
        kv(f, "FEATURES note", &opt(&ft.features_note))?;
        kv(f, "supported", &list(&ft.supported))?;
        kv(f, "required", &list(&ft.required))?;
        if !ft.unknown_required.is_empty() {
            kv(f, "unknown required", &list(&ft.unknown_required))?;
        }
        kv(f, "SUPPORTED_FEATURES", &opt(&ft.supported_features))?;

        writeln!(f, "\nLaunch (requested: {})", self.launch.requested)?;
        for (name, v) in [
            ("unprivileged", &self.launch.unprivileged),
            ("privileged", &self.launch.privileged),
        ] {
            match &v.refusal {
                None => kv(f, name, &"allowed")?,
                Some(r) => kv(f, name, &format_args!("REFUSED: {r}"))?,
            }
            kv(
                f,
                "  features submap 0",
                &format_args!(
                    "{} ({})",
                    v.features_submap0,
                    list(&v.features_submap0_names)
                ),
            )?;
        }

        let l = &self.layout;
        writeln!(
            f,
            "\nStart-of-day layout ({} MiB, {} pages)",
            l.memory_mib, l.nr_pages
        )?;
        match (&l.start_of_day, &l.error) {
            (Some(s), _) => {
                let segline = |s: &SegmentReport| {
                    format!(
                        "{} - {}  pfn {:#x}, {} pages",
                        s.vstart, s.vend, s.pfn, s.pages
                    )
                };
                let pageline = |p: &PageReport| format!("{}  pfn {:#x}", p.va, p.pfn);
                kv(f, "kernel", &segline(&s.kernel))?;
                kv(f, "p2m list", &segline(&s.p2m))?;
                kv(f, "start_info", &pageline(&s.start_info))?;
                kv(f, "xenstore page", &pageline(&s.xenstore))?;
                kv(f, "console page", &pageline(&s.console))?;
                kv(f, "page tables", &segline(&s.page_tables))?;
                kv(f, "boot stack", &pageline(&s.boot_stack))?;
                kv(f, "mapping end", &s.virt_pgtab_end)?;
                for (n, m) in s.mappings.iter().enumerate() {
                    kv(
                        f,
                        &format!("mapping {n}"),
                        &format_args!(
                            "{} - {}  pfn {:#x}, {} tables (L1..L4 {:?})",
                            m.from, m.to, m.pfn, m.tables, m.tables_per_level
                        ),
                    )?;
                }
                kv(f, "frames used", &s.pfn_alloc_end)?;
            }
            (None, e) => kv(f, "cannot be built", &opt(e))?,
        }

        writeln!(f, "\nNotes ({})", self.notes.len())?;
        for n in &self.notes {
            let ty = n
                .type_name
                .map_or_else(|| format!("{:#x}", n.n_type), str::to_owned);
            write!(f, "  {:<6} {:<20} {:>4} bytes", n.owner, ty, n.desc_size)?;
            match &n.value {
                Some(v) => writeln!(f, "  {v}")?,
                None => writeln!(f, "  [{}]", n.desc_hex)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_bounds_are_shown_canonical() {
        assert_eq!(canonical(0xffff_8000_0000), 0xffff_ffff_8000_0000);
        assert_eq!(canonical(0x80_0000_0000), 0x80_0000_0000);
    }

    #[test]
    fn hex_bytes_match_readelf_format() {
        assert_eq!(hex_bytes(&[0x6c, 0x00, 0xff]), "6c 00 ff");
        assert_eq!(hex_bytes(&[]), "");
    }

    #[test]
    fn bitmap_hex_spans_all_submaps() {
        assert_eq!(
            bitmap_hex(&FeatureSet::from_words([0x8801, 0, 0, 0])),
            "0x8801"
        );
        assert_eq!(
            bitmap_hex(&FeatureSet::from_words([1, 2, 0, 0])),
            "0x200000001"
        );
    }

    #[test]
    fn hex_serializes_as_string() {
        assert_eq!(
            serde_json::to_string(&Hex(0xffff_ffff_8000_0000)).unwrap(),
            "\"0xffffffff80000000\""
        );
    }
}
