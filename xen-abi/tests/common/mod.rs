//! A small ELF64 image builder for tests: PT_LOAD segments, PT_NOTE segments, SHT_NOTE
//! sections and arbitrary named sections (e.g. `__xen_guest`).
#![allow(dead_code)]

pub const XEN: &[u8] = b"Xen";

/// One note: name (NUL added), type, descriptor; name and desc padded to 4.
pub fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
    let namesz = if name.is_empty() { 0 } else { name.len() + 1 };
    let mut v = Vec::new();
    v.extend_from_slice(&(namesz as u32).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&n_type.to_le_bytes());
    v.extend_from_slice(name);
    if namesz > 0 {
        v.push(0);
    }
    pad4(&mut v);
    v.extend_from_slice(desc);
    pad4(&mut v);
    v
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() & 3 != 0 {
        v.push(0);
    }
}

/// A Xen note with an 8-byte numeric descriptor.
pub fn xnum(n_type: u32, value: u64) -> Vec<u8> {
    note(XEN, n_type, &value.to_le_bytes())
}

/// A Xen note with a NUL-terminated string descriptor.
pub fn xstr(n_type: u32, s: &str) -> Vec<u8> {
    let mut d = s.as_bytes().to_vec();
    d.push(0);
    note(XEN, n_type, &d)
}

/// A Xen note with raw descriptor bytes.
pub fn xraw(n_type: u32, desc: &[u8]) -> Vec<u8> {
    note(XEN, n_type, desc)
}

pub fn cat(notes: &[Vec<u8>]) -> Vec<u8> {
    notes.concat()
}

#[derive(Clone, Debug)]
pub struct Load {
    pub vaddr: u64,
    pub paddr: u64,
    pub memsz: u64,
    pub data: Vec<u8>,
    pub flags: u32,
}

#[derive(Clone, Debug)]
pub struct Builder {
    pub class: u8,
    pub data_enc: u8,
    pub machine: u16,
    pub e_type: u16,
    pub entry: u64,
    pub loads: Vec<Load>,
    /// PT_NOTE segments (raw bytes), also given a SHT_NOTE section each if
    /// `note_segment_sections` is set.
    pub note_segments: Vec<Vec<u8>>,
    pub note_segment_zero_offset: bool,
    /// SHT_NOTE sections not covered by a segment.
    pub note_sections: Vec<Vec<u8>>,
    /// Other sections: (name, type, bytes).
    pub sections: Vec<(String, u32, Vec<u8>)>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            class: 2,
            data_enc: 1,
            machine: 62,
            e_type: 2,
            entry: 0xffff_ffff_8100_0000,
            loads: vec![Load {
                vaddr: 0xffff_ffff_8100_0000,
                paddr: 0x100_0000,
                memsz: 0x20_0000,
                data: vec![0x90; 64],
                flags: 5,
            }],
            note_segments: Vec::new(),
            note_segment_zero_offset: false,
            note_sections: Vec::new(),
            sections: Vec::new(),
        }
    }
}

fn put16(v: &mut [u8], o: usize, x: u16) {
    v[o..o + 2].copy_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut [u8], o: usize, x: u32) {
    v[o..o + 4].copy_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut [u8], o: usize, x: u64) {
    v[o..o + 8].copy_from_slice(&x.to_le_bytes());
}

impl Builder {
    pub fn with_segment_notes(notes: Vec<u8>) -> Self {
        Builder {
            note_segments: vec![notes],
            ..Default::default()
        }
    }

    pub fn with_section_notes(notes: Vec<u8>) -> Self {
        Builder {
            note_sections: vec![notes],
            ..Default::default()
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let phnum = self.loads.len() + self.note_segments.len();
        let mut out = vec![0u8; 64 + phnum * 56];
        let blob = |out: &mut Vec<u8>, bytes: &[u8]| -> u64 {
            while out.len() & 7 != 0 {
                out.push(0);
            }
            let off = out.len() as u64;
            out.extend_from_slice(bytes);
            off
        };
        // Program headers.
        let mut phdrs = Vec::new();
        for l in &self.loads {
            let off = blob(&mut out, &l.data);
            phdrs.push((
                1u32,
                l.flags,
                off,
                l.vaddr,
                l.paddr,
                l.data.len() as u64,
                l.memsz,
            ));
        }
        let mut shdrs: Vec<(String, u32, u64, u64)> = Vec::new();
        for n in &self.note_segments {
            let off = blob(&mut out, n);
            let poff = if self.note_segment_zero_offset {
                0
            } else {
                off
            };
            phdrs.push((4, 4, poff, 0, 0, n.len() as u64, n.len() as u64));
            shdrs.push((".note.seg".into(), 7, off, n.len() as u64));
        }
        for n in &self.note_sections {
            let off = blob(&mut out, n);
            shdrs.push((".note.Xen".into(), 7, off, n.len() as u64));
        }
        for (name, ty, bytes) in &self.sections {
            let off = blob(&mut out, bytes);
            shdrs.push((name.clone(), *ty, off, bytes.len() as u64));
        }
        // Section name table.
        let mut strtab = vec![0u8];
        let mut name_offs = Vec::new();
        for (name, ..) in &shdrs {
            name_offs.push(strtab.len() as u32);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let shstr_name = strtab.len() as u32;
        strtab.extend_from_slice(b".shstrtab\0");
        let strtab_off = blob(&mut out, &strtab);
        while out.len() & 7 != 0 {
            out.push(0);
        }
        let shoff = out.len();
        let shnum = shdrs.len() + 2;
        out.resize(shoff + shnum * 64, 0);
        for (i, ((_, ty, off, size), name)) in shdrs.iter().zip(&name_offs).enumerate() {
            let o = shoff + (i + 1) * 64;
            put32(&mut out, o, *name);
            put32(&mut out, o + 4, *ty);
            put64(&mut out, o + 24, *off);
            put64(&mut out, o + 32, *size);
        }
        let o = shoff + (shnum - 1) * 64;
        put32(&mut out, o, shstr_name);
        put32(&mut out, o + 4, 3);
        put64(&mut out, o + 24, strtab_off);
        put64(&mut out, o + 32, strtab.len() as u64);
        for (i, p) in phdrs.iter().enumerate() {
            let o = 64 + i * 56;
            put32(&mut out, o, p.0);
            put32(&mut out, o + 4, p.1);
            put64(&mut out, o + 8, p.2);
            put64(&mut out, o + 16, p.3);
            put64(&mut out, o + 24, p.4);
            put64(&mut out, o + 32, p.5);
            put64(&mut out, o + 40, p.6);
            put64(&mut out, o + 48, 8);
        }
        // File header.
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = self.class;
        out[5] = self.data_enc;
        out[6] = 1;
        put16(&mut out, 16, self.e_type);
        put16(&mut out, 18, self.machine);
        put32(&mut out, 20, 1);
        put64(&mut out, 24, self.entry);
        put64(&mut out, 32, if phnum > 0 { 64 } else { 0 });
        put64(&mut out, 40, shoff as u64);
        put16(&mut out, 52, 64);
        put16(&mut out, 54, 56);
        put16(&mut out, 56, phnum as u16);
        put16(&mut out, 58, 64);
        put16(&mut out, 60, shnum as u16);
        put16(&mut out, 62, (shnum - 1) as u16);
        out
    }
}

use xen_abi::elfnote::*;

pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
pub const KSTART: u64 = 0xffff_ffff_8100_0000;
pub const KEND: u64 = 0xffff_ffff_8120_0000;

/// A Debian 6.1-like note set (as `readelf -n` shows for linux-image-6.1.0-cloud-amd64,
/// addresses adapted to the builder's default kernel).
pub fn debian_notes() -> Vec<Vec<u8>> {
    vec![
        xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
        xstr(XEN_ELFNOTE_GUEST_VERSION, "2.6"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
        xnum(XEN_ELFNOTE_VIRT_BASE, VIRT_BASE),
        xnum(XEN_ELFNOTE_INIT_P2M, 0x80_0000_0000),
        xnum(XEN_ELFNOTE_ENTRY, KSTART + 0x1c0),
        // Debian's FEATURES descriptor has no NUL terminator (descsz 0x29).
        xraw(
            XEN_ELFNOTE_FEATURES,
            b"!writable_page_tables|pae_pgdir_above_4gb",
        ),
        xraw(XEN_ELFNOTE_SUPPORTED_FEATURES, &0x8801u32.to_le_bytes()),
        xstr(XEN_ELFNOTE_PAE_MODE, "yes"),
        xstr(XEN_ELFNOTE_LOADER, "generic"),
        xraw(
            XEN_ELFNOTE_L1_MFN_VALID,
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        ),
        xraw(XEN_ELFNOTE_SUSPEND_CANCEL, &1u32.to_le_bytes()),
        xraw(XEN_ELFNOTE_MOD_START_PFN, &1u32.to_le_bytes()),
        xnum(XEN_ELFNOTE_HV_START_LOW, 0xffff_8000_0000_0000),
        xnum(XEN_ELFNOTE_PADDR_OFFSET, 0),
        note(b"GNU", 3, &[0xab; 20]),
        note(b"Linux", 0x100, b"6.1.0\0"),
        xnum(XEN_ELFNOTE_PHYS32_ENTRY, 0x100_0850),
    ]
}

/// The minimal valid set: what a kernel must declare to be accepted.
pub fn minimal_notes() -> Vec<Vec<u8>> {
    vec![
        xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
        xnum(XEN_ELFNOTE_VIRT_BASE, VIRT_BASE),
        xnum(XEN_ELFNOTE_ENTRY, KSTART),
    ]
}

/// Minimal set plus extra notes, in a PT_NOTE segment.
pub fn image_with(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut n = minimal_notes();
    n.extend_from_slice(extra);
    Builder::with_segment_notes(cat(&n)).build()
}
