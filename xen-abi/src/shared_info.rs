//! The shared info page and per-vCPU info (xen: public/xen.h `struct shared_info`,
//! `struct vcpu_info`, `struct vcpu_time_info`; public/arch-x86/xen.h, xen-x86_64.h).

use crate::arch::{impl_pod, impl_zeroed_default};
use core::mem::{offset_of, size_of};

/// vCPUs with a `vcpu_info` slot in the shared info page.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// Words in each of the 2-level `evtchn_pending` / `evtchn_mask` bitmaps.
pub const EVTCHN_BITMAP_WORDS: usize = 64;

/// Bit number of `XEN_PVCLOCK_TSC_STABLE`.
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u32 = 0;
/// `vcpu_time_info.flags`: the TSC is stable across vCPUs.
pub const XEN_PVCLOCK_TSC_STABLE: u8 = 1 << XEN_PVCLOCK_TSC_STABLE_BIT;
/// Bit number of `XEN_PVCLOCK_GUEST_STOPPED`.
pub const XEN_PVCLOCK_GUEST_STOPPED_BIT: u32 = 1;
/// `vcpu_time_info.flags`: the guest was stopped.
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << XEN_PVCLOCK_GUEST_STOPPED_BIT;

/// `struct vcpu_time_info` (32 bytes). System time =
/// `system_time + (((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32`
/// (a negative shift shifts right).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTimeInfo {
    /// Odd while an update is in progress.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// Nanoseconds since boot at the last update.
    pub system_time: u64,
    /// TSC-to-ns multiplier (32.32 fixed point).
    pub tsc_to_system_mul: u32,
    /// TSC shift.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` (was `pad1[0]`).
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}
impl_pod!(VcpuTimeInfo { u32, u32, u64, u64, u32, i8, u8, [u8; 2] });
const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
const _: () = assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
const _: () = assert!(offset_of!(VcpuTimeInfo, flags) == 29);

/// `struct arch_vcpu_info` on x86_64 (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchVcpuInfo {
    /// Faulting address of the last #PF bounced to the guest.
    pub cr2: u64,
    /// Padding.
    pub pad: u64,
}
impl_pod!(ArchVcpuInfo { u64, u64 });
const _: () = assert!(size_of::<ArchVcpuInfo>() == 16);

/// `struct vcpu_info` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Non-zero: an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Non-zero: upcalls are masked ("interrupts disabled").
    pub evtchn_upcall_mask: u8,
    /// Padding (explicit).
    pub _pad: [u8; 6],
    /// One bit per `evtchn_pending` word with a pending, unmasked port.
    pub evtchn_pending_sel: u64,
    /// Architecture part.
    pub arch: ArchVcpuInfo,
    /// Time info.
    pub time: VcpuTimeInfo,
}
impl_pod!(VcpuInfo { u8, u8, [u8; 6], u64, ArchVcpuInfo, VcpuTimeInfo });
const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(offset_of!(VcpuInfo, arch) == 16);
const _: () = assert!(offset_of!(VcpuInfo, time) == 32);

/// `struct arch_shared_info` on x86_64 (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchSharedInfo {
    /// Highest PFN in the p2m (written by the guest, read by tools).
    pub max_pfn: u64,
    /// Frame of the list of frames of the p2m frame list.
    pub pfn_to_mfn_frame_list_list: u64,
    /// NMI reason bits.
    pub nmi_reason: u64,
    /// cr3 of the virtually mapped p2m (0 = none).
    pub p2m_cr3: u64,
    /// Virtual address of the linear p2m.
    pub p2m_vaddr: u64,
    /// Incremented around p2m updates.
    pub p2m_generation: u64,
}
impl_pod!(ArchSharedInfo {
    u64,
    u64,
    u64,
    u64,
    u64,
    u64
});
const _: () = assert!(size_of::<ArchSharedInfo>() == 48);

/// `struct shared_info` (3136 bytes on x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedInfo {
    /// Per-vCPU info for the first 32 vCPUs.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// 2-level pending bitmap (4096 ports).
    pub evtchn_pending: [u64; EVTCHN_BITMAP_WORDS],
    /// 2-level mask bitmap.
    pub evtchn_mask: [u64; EVTCHN_BITMAP_WORDS],
    /// Wallclock version (odd while updating).
    pub wc_version: u32,
    /// Wallclock seconds since the epoch (low 32 bits) at system time 0.
    pub wc_sec: u32,
    /// Wallclock nanoseconds.
    pub wc_nsec: u32,
    /// Wallclock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// Architecture part.
    pub arch: ArchSharedInfo,
}
impl_pod!(SharedInfo {
    [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    [u64; EVTCHN_BITMAP_WORDS],
    [u64; EVTCHN_BITMAP_WORDS],
    u32,
    u32,
    u32,
    u32,
    ArchSharedInfo
});
impl_zeroed_default!(SharedInfo);

/// Offset of `evtchn_pending`.
pub const EVTCHN_PENDING_OFFSET: usize = offset_of!(SharedInfo, evtchn_pending);
/// Offset of `evtchn_mask`.
pub const EVTCHN_MASK_OFFSET: usize = offset_of!(SharedInfo, evtchn_mask);
/// Offset of `wc_version`.
pub const WC_VERSION_OFFSET: usize = offset_of!(SharedInfo, wc_version);
/// Offset of `wc_sec`.
pub const WC_SEC_OFFSET: usize = offset_of!(SharedInfo, wc_sec);
/// Offset of `wc_nsec`.
pub const WC_NSEC_OFFSET: usize = offset_of!(SharedInfo, wc_nsec);
/// Offset of `wc_sec_hi`.
pub const WC_SEC_HI_OFFSET: usize = offset_of!(SharedInfo, wc_sec_hi);
/// Offset of `arch`.
pub const ARCH_SHARED_INFO_OFFSET: usize = offset_of!(SharedInfo, arch);
/// Offset of `arch.max_pfn`.
pub const MAX_PFN_OFFSET: usize = ARCH_SHARED_INFO_OFFSET + offset_of!(ArchSharedInfo, max_pfn);

/// Offset of `upcall_pending` inside a `vcpu_info`.
pub const UPCALL_PENDING_OFFSET: usize = offset_of!(VcpuInfo, evtchn_upcall_pending);
/// Offset of `upcall_mask` inside a `vcpu_info`.
pub const UPCALL_MASK_OFFSET: usize = offset_of!(VcpuInfo, evtchn_upcall_mask);
/// Offset of `evtchn_pending_sel` inside a `vcpu_info`.
pub const PENDING_SEL_OFFSET: usize = offset_of!(VcpuInfo, evtchn_pending_sel);
/// Offset of `arch.cr2` inside a `vcpu_info`.
pub const CR2_OFFSET: usize = offset_of!(VcpuInfo, arch) + offset_of!(ArchVcpuInfo, cr2);
/// Offset of `time` inside a `vcpu_info`.
pub const TIME_OFFSET: usize = offset_of!(VcpuInfo, time);

/// Offset of `vcpu_info[vcpu]` in the shared info page, `None` for `vcpu >= 32` (such vCPUs
/// need `VCPUOP_register_vcpu_info`).
pub const fn vcpu_info_offset(vcpu: usize) -> Option<usize> {
    if vcpu < XEN_LEGACY_MAX_VCPUS {
        Some(vcpu * size_of::<VcpuInfo>())
    } else {
        None
    }
}

const _: () = assert!(size_of::<SharedInfo>() == 3136);
const _: () = assert!(EVTCHN_PENDING_OFFSET == 2048);
const _: () = assert!(EVTCHN_MASK_OFFSET == 2560);
const _: () = assert!(WC_VERSION_OFFSET == 3072);
const _: () = assert!(WC_SEC_HI_OFFSET == 3084);
const _: () = assert!(ARCH_SHARED_INFO_OFFSET == 3088);
const _: () = assert!(CR2_OFFSET == 16);
const _: () = assert!(size_of::<SharedInfo>() <= crate::arch::PAGE_SIZE as usize);

impl SharedInfo {
    /// The start-of-day shared info: zeroed, with every vCPU's upcalls masked.
    pub fn start_of_day() -> Self {
        let mut s = Self::default();
        for v in s.vcpu_info.iter_mut() {
            v.evtchn_upcall_mask = 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn shared_info_offsets_match_xen_h() {
        let fields = [
            ("vcpu_info", offset_of!(SharedInfo, vcpu_info), 0),
            ("evtchn_pending", EVTCHN_PENDING_OFFSET, 2048),
            ("evtchn_mask", EVTCHN_MASK_OFFSET, 2560),
            ("wc_version", WC_VERSION_OFFSET, 3072),
            ("wc_sec", WC_SEC_OFFSET, 3076),
            ("wc_nsec", WC_NSEC_OFFSET, 3080),
            ("wc_sec_hi", WC_SEC_HI_OFFSET, 3084),
            ("arch.max_pfn", MAX_PFN_OFFSET, 3088),
            (
                "arch.pfn_to_mfn_frame_list_list",
                3088 + offset_of!(ArchSharedInfo, pfn_to_mfn_frame_list_list),
                3096,
            ),
            (
                "arch.nmi_reason",
                3088 + offset_of!(ArchSharedInfo, nmi_reason),
                3104,
            ),
            (
                "arch.p2m_cr3",
                3088 + offset_of!(ArchSharedInfo, p2m_cr3),
                3112,
            ),
            (
                "arch.p2m_vaddr",
                3088 + offset_of!(ArchSharedInfo, p2m_vaddr),
                3120,
            ),
            (
                "arch.p2m_generation",
                3088 + offset_of!(ArchSharedInfo, p2m_generation),
                3128,
            ),
        ];
        for (name, got, want) in fields {
            assert_eq!(got, want, "shared_info.{name}");
        }
        assert_eq!(size_of::<SharedInfo>(), 3136);
    }

    #[test]
    fn vcpu_info_offsets_match_xen_h() {
        assert_eq!(size_of::<VcpuInfo>(), 64);
        assert_eq!(UPCALL_PENDING_OFFSET, 0);
        assert_eq!(UPCALL_MASK_OFFSET, 1);
        assert_eq!(PENDING_SEL_OFFSET, 8);
        assert_eq!(CR2_OFFSET, 16);
        assert_eq!(TIME_OFFSET, 32);
        assert_eq!(offset_of!(VcpuTimeInfo, tsc_shift), 28);
        assert_eq!(offset_of!(VcpuTimeInfo, flags), 29);
        assert_eq!(vcpu_info_offset(0), Some(0));
        assert_eq!(vcpu_info_offset(31), Some(1984));
        assert_eq!(vcpu_info_offset(32), None);
    }

    #[test]
    fn start_of_day_masks_every_vcpu() {
        let s = SharedInfo::start_of_day();
        let b = s.as_bytes();
        for v in 0..XEN_LEGACY_MAX_VCPUS {
            let off = vcpu_info_offset(v).unwrap();
            assert_eq!(b[off + UPCALL_MASK_OFFSET], 1, "vcpu {v}");
            assert_eq!(b[off + UPCALL_PENDING_OFFSET], 0);
        }
        assert_eq!(b.iter().filter(|&&x| x != 0).count(), XEN_LEGACY_MAX_VCPUS);
        assert_eq!(SharedInfo::from_bytes(b), Some(s));
    }

    #[test]
    fn vcpu_time_info_bytes() {
        let t = VcpuTimeInfo {
            version: 2,
            tsc_timestamp: 10,
            system_time: 20,
            tsc_to_system_mul: 0x8000_0000,
            tsc_shift: -1,
            flags: XEN_PVCLOCK_TSC_STABLE,
            ..Default::default()
        };
        let b = t.as_bytes();
        assert_eq!(b[28], 0xff);
        assert_eq!(b[29], 1);
        assert_eq!(VcpuTimeInfo::from_bytes(b), Some(t));
    }
}
