//! `xen_version` sub-ops and their argument layouts (xen: public/version.h,
//! common/kernel.c), plus the version kxen reports.

use crate::arch::{c_string, impl_pod, impl_zeroed_default};
use core::mem::size_of;

/// Returns `(major << 16) | minor`.
pub const XENVER_VERSION: u32 = 0;
/// Fills `XenExtraversion`.
pub const XENVER_EXTRAVERSION: u32 = 1;
/// Fills `XenCompileInfo`.
pub const XENVER_COMPILE_INFO: u32 = 2;
/// Fills `XenCapabilitiesInfo`.
pub const XENVER_CAPABILITIES: u32 = 3;
/// Fills `XenChangesetInfo`.
pub const XENVER_CHANGESET: u32 = 4;
/// Fills `XenPlatformParameters`.
pub const XENVER_PLATFORM_PARAMETERS: u32 = 5;
/// Fills `XenFeatureInfo` for the requested submap.
pub const XENVER_GET_FEATURES: u32 = 6;
/// Returns the page size (argument must be NULL).
pub const XENVER_PAGESIZE: u32 = 7;
/// Fills `XenDomainHandle`.
pub const XENVER_GUEST_HANDLE: u32 = 8;
/// Fills `XenCommandline` (`"<denied>"` for unprivileged callers).
pub const XENVER_COMMANDLINE: u32 = 9;
/// Build id (varbuf).
pub const XENVER_BUILD_ID: u32 = 10;
/// Extraversion (varbuf).
pub const XENVER_EXTRAVERSION2: u32 = 11;
/// Capabilities (varbuf).
pub const XENVER_CAPABILITIES2: u32 = 12;
/// Changeset (varbuf).
pub const XENVER_CHANGESET2: u32 = 13;
/// Command line (varbuf).
pub const XENVER_COMMANDLINE2: u32 = 14;

/// Name of a `XENVER_*` sub-op.
pub const fn name(op: u32) -> Option<&'static str> {
    Some(match op {
        XENVER_VERSION => "version",
        XENVER_EXTRAVERSION => "extraversion",
        XENVER_COMPILE_INFO => "compile_info",
        XENVER_CAPABILITIES => "capabilities",
        XENVER_CHANGESET => "changeset",
        XENVER_PLATFORM_PARAMETERS => "platform_parameters",
        XENVER_GET_FEATURES => "get_features",
        XENVER_PAGESIZE => "pagesize",
        XENVER_GUEST_HANDLE => "guest_handle",
        XENVER_COMMANDLINE => "commandline",
        XENVER_BUILD_ID => "build_id",
        XENVER_EXTRAVERSION2 => "extraversion2",
        XENVER_CAPABILITIES2 => "capabilities2",
        XENVER_CHANGESET2 => "changeset2",
        XENVER_COMMANDLINE2 => "commandline2",
        _ => return None,
    })
}

/// Length of `xen_extraversion_t`.
pub const XEN_EXTRAVERSION_LEN: usize = 16;
/// Length of `xen_capabilities_info_t`.
pub const XEN_CAPABILITIES_INFO_LEN: usize = 1024;
/// Length of `xen_changeset_info_t`.
pub const XEN_CHANGESET_INFO_LEN: usize = 64;
/// Length of `xen_commandline_t`.
pub const XEN_COMMANDLINE_LEN: usize = 1024;
/// Length of `xen_domain_handle_t`.
pub const XEN_DOMAIN_HANDLE_LEN: usize = 16;

/// `xen_extraversion_t`: `char[16]`.
pub type XenExtraversion = [u8; XEN_EXTRAVERSION_LEN];
/// `xen_capabilities_info_t`: `char[1024]`.
pub type XenCapabilitiesInfo = [u8; XEN_CAPABILITIES_INFO_LEN];
/// `xen_changeset_info_t`: `char[64]`.
pub type XenChangesetInfo = [u8; XEN_CHANGESET_INFO_LEN];
/// `xen_commandline_t`: `char[1024]`.
pub type XenCommandline = [u8; XEN_COMMANDLINE_LEN];
/// `xen_domain_handle_t`: `u8[16]` (the domain's UUID).
pub type XenDomainHandle = [u8; XEN_DOMAIN_HANDLE_LEN];

/// `xen_compile_info_t` (144 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenCompileInfo {
    /// Compiler description.
    pub compiler: [u8; 64],
    /// Who built it.
    pub compile_by: [u8; 16],
    /// Build domain.
    pub compile_domain: [u8; 32],
    /// Build date.
    pub compile_date: [u8; 32],
}
impl_pod!(XenCompileInfo { [u8; 64], [u8; 16], [u8; 32], [u8; 32] });
impl_zeroed_default!(XenCompileInfo);
const _: () = assert!(size_of::<XenCompileInfo>() == 144);
const _: () = assert!(core::mem::offset_of!(XenCompileInfo, compile_date) == 112);

/// `xen_platform_parameters_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenPlatformParameters {
    /// Start of the hypervisor's reserved virtual area.
    pub virt_start: u64,
}
impl_pod!(XenPlatformParameters { u64 });
const _: () = assert!(size_of::<XenPlatformParameters>() == 8);

/// `xen_feature_info_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit submap.
    pub submap_idx: u32,
    /// OUT: the bits of that submap.
    pub submap: u32,
}
impl_pod!(XenFeatureInfo { u32, u32 });
const _: () = assert!(size_of::<XenFeatureInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(XenFeatureInfo, submap) == 4);

/// Header of `xen_varbuf_t`: `{ u32 len; u8 buf[]; }`. The buffer follows at offset 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenVarbufHeader {
    /// IN: buffer capacity; OUT: bytes written.
    pub len: u32,
}
impl_pod!(XenVarbufHeader { u32 });
/// Offset of the varbuf payload.
pub const XEN_VARBUF_DATA_OFFSET: usize = 4;
const _: () = assert!(size_of::<XenVarbufHeader>() == XEN_VARBUF_DATA_OFFSET);

/// `(major << 16) | minor`, as `XENVER_version` returns it.
pub const fn version_word(major: u32, minor: u32) -> u32 {
    (major << 16) | (minor & 0xffff)
}

/// Major version kxen reports.
pub const KXEN_XEN_MAJOR: u32 = 4;
/// Minor version kxen reports.
pub const KXEN_XEN_MINOR: u32 = 19;
/// `XENVER_version` result kxen reports.
pub const KXEN_XEN_VERSION: u32 = version_word(KXEN_XEN_MAJOR, KXEN_XEN_MINOR);
/// Extraversion kxen reports.
pub const KXEN_EXTRAVERSION: &str = ".0-kxen";
/// Capabilities kxen reports: a 64-bit PV-only host (Xen appends a space to each entry).
pub const KXEN_CAPABILITIES: &str = "xen-3.0-x86_64 ";
/// Changeset string kxen reports.
pub const KXEN_CHANGESET: &str = "kxen";
/// What unprivileged callers of `XENVER_commandline` get.
pub const COMMANDLINE_DENIED: &str = "<denied>";

/// The `XENVER_extraversion` buffer.
pub const fn kxen_extraversion() -> XenExtraversion {
    c_string(KXEN_EXTRAVERSION)
}
/// The `XENVER_capabilities` buffer.
pub const fn kxen_capabilities() -> XenCapabilitiesInfo {
    c_string(KXEN_CAPABILITIES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{c_str_bytes, Pod};

    #[test]
    fn sub_op_numbers_and_names() {
        assert_eq!(XENVER_GET_FEATURES, 6);
        assert_eq!(XENVER_COMMANDLINE2, 14);
        assert_eq!(name(0), Some("version"));
        assert_eq!(name(6), Some("get_features"));
        assert_eq!(name(14), Some("commandline2"));
        assert_eq!(name(15), None);
    }

    #[test]
    fn layouts_match_version_h() {
        assert_eq!(size_of::<XenCompileInfo>(), 144);
        assert_eq!(size_of::<XenExtraversion>(), 16);
        assert_eq!(size_of::<XenCapabilitiesInfo>(), 1024);
        assert_eq!(size_of::<XenChangesetInfo>(), 64);
        assert_eq!(size_of::<XenFeatureInfo>(), 8);
        assert_eq!(core::mem::offset_of!(XenCompileInfo, compile_by), 64);
        assert_eq!(core::mem::offset_of!(XenCompileInfo, compile_domain), 80);
        let fi = XenFeatureInfo::from_bytes(&[0, 0, 0, 0, 0xe0, 0x20, 0x1e, 0]).unwrap();
        assert_eq!(
            fi,
            XenFeatureInfo {
                submap_idx: 0,
                submap: 0x1e20e0
            }
        );
    }

    #[test]
    fn kxen_reports_4_19() {
        assert_eq!(KXEN_XEN_VERSION, 0x0004_0013);
        let ev = kxen_extraversion();
        assert_eq!(c_str_bytes(&ev), b".0-kxen");
        let caps = kxen_capabilities();
        assert_eq!(c_str_bytes(&caps), b"xen-3.0-x86_64 ");
        assert_eq!(XenCompileInfo::default().as_bytes(), &[0u8; 144][..]);
    }
}
