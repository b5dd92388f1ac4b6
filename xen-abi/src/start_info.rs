//! The 64-bit PV `start_info` page (xen: public/xen.h `struct start_info`).

use crate::arch::{c_str_bytes, c_string, impl_pod, impl_zeroed_default};
use core::mem::{offset_of, size_of};

/// Magic string of a 64-bit PV guest's start_info.
pub const START_INFO_MAGIC: &str = "xen-3.0-x86_64";
/// Length of the `cmd_line` field.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// The domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// The domain is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `mod_start` is a multiboot module list.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `mod_start` is a PFN, not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// The toolstack understands a virtually mapped p2m.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// Bits reserved for xen-pm options.
pub const SIF_PM_MASK: u32 = 0xff << 8;

/// `struct start_info` for a 64-bit PV guest (1168 bytes). The console union is laid out as
/// its `domU` variant; dom0's `{info_off, info_size}` overlays `console_mfn` (see
/// [`StartInfo::console_dom0_info`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL padded.
    pub magic: [u8; 32],
    /// Total pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    /// `SIF_*`.
    pub flags: u32,
    /// Padding (explicit).
    pub _pad0: u32,
    /// MFN of the xenstore ring.
    pub store_mfn: u64,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Padding (explicit).
    pub _pad1: u32,
    /// `console.domU.mfn`: MFN of the console ring.
    pub console_mfn: u64,
    /// `console.domU.evtchn`: event channel of the console ring.
    pub console_evtchn: u32,
    /// Padding (explicit).
    pub _pad2: u32,
    /// Virtual address of the initial page-table root (L4).
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m list.
    pub mfn_list: u64,
    /// Virtual address (or PFN with `SIF_MOD_START_PFN`) of the initrd/module.
    pub mod_start: u64,
    /// Module size in bytes.
    pub mod_len: u64,
    /// Kernel command line, NUL terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First PFN of the initial p2m table frames.
    pub first_p2m_pfn: u64,
    /// Number of initial p2m table frames.
    pub nr_p2m_frames: u64,
}
impl_pod!(StartInfo {
    [u8; 32],
    u64,
    u64,
    u32,
    u32,
    u64,
    u32,
    u32,
    u64,
    u32,
    u32,
    u64,
    u64,
    u64,
    u64,
    u64,
    [u8; MAX_GUEST_CMDLINE],
    u64,
    u64
});
impl_zeroed_default!(StartInfo);

const _: () = assert!(size_of::<StartInfo>() == 1168);
const _: () = assert!(offset_of!(StartInfo, nr_pages) == 32);
const _: () = assert!(offset_of!(StartInfo, shared_info) == 40);
const _: () = assert!(offset_of!(StartInfo, flags) == 48);
const _: () = assert!(offset_of!(StartInfo, store_mfn) == 56);
const _: () = assert!(offset_of!(StartInfo, store_evtchn) == 64);
const _: () = assert!(offset_of!(StartInfo, console_mfn) == 72);
const _: () = assert!(offset_of!(StartInfo, console_evtchn) == 80);
const _: () = assert!(offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(offset_of!(StartInfo, nr_pt_frames) == 96);
const _: () = assert!(offset_of!(StartInfo, mfn_list) == 104);
const _: () = assert!(offset_of!(StartInfo, mod_start) == 112);
const _: () = assert!(offset_of!(StartInfo, mod_len) == 120);
const _: () = assert!(offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(offset_of!(StartInfo, first_p2m_pfn) == 1152);
const _: () = assert!(offset_of!(StartInfo, nr_p2m_frames) == 1160);

impl StartInfo {
    /// A zeroed start_info carrying the 64-bit magic.
    pub fn new() -> Self {
        Self {
            magic: c_string(START_INFO_MAGIC),
            ..Self::default()
        }
    }

    /// Set the command line; truncated to `MAX_GUEST_CMDLINE - 1` bytes so it stays NUL
    /// terminated. Returns whether it fit without truncation.
    pub fn set_cmdline(&mut self, cmdline: &[u8]) -> bool {
        self.cmd_line = [0; MAX_GUEST_CMDLINE];
        let n = cmdline.len().min(MAX_GUEST_CMDLINE - 1);
        self.cmd_line[..n].copy_from_slice(&cmdline[..n]);
        n == cmdline.len()
    }

    /// The command line bytes up to the first NUL.
    pub fn cmdline(&self) -> &[u8] {
        c_str_bytes(&self.cmd_line)
    }

    /// The magic bytes up to the first NUL.
    pub fn magic_str(&self) -> &[u8] {
        c_str_bytes(&self.magic)
    }

    /// dom0's view of the console union: `(info_off, info_size)`.
    pub const fn console_dom0_info(&self) -> (u32, u32) {
        (self.console_mfn as u32, (self.console_mfn >> 32) as u32)
    }

    /// Set dom0's console union `(info_off, info_size)`.
    pub fn set_console_dom0_info(&mut self, info_off: u32, info_size: u32) {
        self.console_mfn = info_off as u64 | ((info_size as u64) << 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn start_info_offsets_match_xen_h() {
        let fields = [
            ("magic", offset_of!(StartInfo, magic), 0),
            ("nr_pages", offset_of!(StartInfo, nr_pages), 32),
            ("shared_info", offset_of!(StartInfo, shared_info), 40),
            ("flags", offset_of!(StartInfo, flags), 48),
            ("store_mfn", offset_of!(StartInfo, store_mfn), 56),
            ("store_evtchn", offset_of!(StartInfo, store_evtchn), 64),
            ("console.domU.mfn", offset_of!(StartInfo, console_mfn), 72),
            (
                "console.domU.evtchn",
                offset_of!(StartInfo, console_evtchn),
                80,
            ),
            ("pt_base", offset_of!(StartInfo, pt_base), 88),
            ("nr_pt_frames", offset_of!(StartInfo, nr_pt_frames), 96),
            ("mfn_list", offset_of!(StartInfo, mfn_list), 104),
            ("mod_start", offset_of!(StartInfo, mod_start), 112),
            ("mod_len", offset_of!(StartInfo, mod_len), 120),
            ("cmd_line", offset_of!(StartInfo, cmd_line), 128),
            ("first_p2m_pfn", offset_of!(StartInfo, first_p2m_pfn), 1152),
            ("nr_p2m_frames", offset_of!(StartInfo, nr_p2m_frames), 1160),
        ];
        for (name, got, want) in fields {
            assert_eq!(got, want, "start_info.{name}");
        }
        assert_eq!(size_of::<StartInfo>(), 1168);
    }

    #[test]
    fn new_has_magic_and_serialises() {
        let mut s = StartInfo::new();
        assert_eq!(s.magic_str(), b"xen-3.0-x86_64");
        s.nr_pages = 0x4_0000;
        s.flags = SIF_PRIVILEGED | SIF_INITDOMAIN;
        s.console_evtchn = 2;
        let b = s.as_bytes();
        assert_eq!(&b[..14], b"xen-3.0-x86_64");
        assert_eq!(b[14], 0);
        assert_eq!(&b[32..40], &0x4_0000u64.to_le_bytes());
        assert_eq!(b[48], 3);
        assert_eq!(b[80], 2);
        assert_eq!(StartInfo::from_bytes(b), Some(s));
    }

    #[test]
    fn cmdline_is_truncated_and_terminated() {
        let mut s = StartInfo::new();
        assert!(s.set_cmdline(b"console=hvc0 root=/dev/xvda1"));
        assert_eq!(s.cmdline(), b"console=hvc0 root=/dev/xvda1");
        let long = [b'a'; 2000];
        assert!(!s.set_cmdline(&long));
        assert_eq!(s.cmdline().len(), MAX_GUEST_CMDLINE - 1);
        assert_eq!(s.cmd_line[MAX_GUEST_CMDLINE - 1], 0);
        assert!(s.set_cmdline(b"x"));
        assert_eq!(s.cmdline(), b"x");
    }

    #[test]
    fn dom0_console_union_overlays_domu_mfn() {
        let mut s = StartInfo::new();
        s.set_console_dom0_info(0x100, 0x28);
        assert_eq!(s.console_dom0_info(), (0x100, 0x28));
        assert_eq!(&s.as_bytes()[72..80], &[0, 1, 0, 0, 0x28, 0, 0, 0]);
        assert_eq!(SIF_MOD_START_PFN, 8);
    }
}
