//! Privilege negotiation between a kernel's declared features and the way kxen
//! launches it, and the `XENVER_get_features` submap kxen reports.
//!
//! Privilege rules (xen: arch/x86/dom0_build.c for dom0, tools xg_dom_elfloader.c for
//! domU, plus the July 2011 `XENFEAT_unprivileged` proposal):
//!
//! | kernel declares | privileged | unprivileged |
//! |---|---|---|
//! | nothing about privilege (no `SUPPORTED_FEATURES`, no `dom0` in `FEATURES`) | allowed | allowed |
//! | `SUPPORTED_FEATURES` without bit 11 | refused | allowed |
//! | bit 11 (`XENFEAT_dom0`) in the note, or `dom0` in `FEATURES` | allowed | allowed |
//! | `!dom0` (required) in `FEATURES` | allowed | refused |
//! | bit 12 (`XENFEAT_unprivileged`) in the note, without bit 11 | refused | allowed |
//!
//! Required features: see [`REQUIRED_FEATURE_POLICY`].

use core::fmt;

use crate::elfnote::{FeatureDecl, KernelParams, ShortStr};
use crate::features::{
    FeatureSet, XENFEAT_AUTO_TRANSLATED_PHYSMAP, XENFEAT_DOM0, XENFEAT_GNTTAB_MAP_AVAIL_BITS,
    XENFEAT_HIGHMEM_ASSIST, XENFEAT_HVM_CALLBACK_VECTOR, XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
    XENFEAT_PAE_PGDIR_ABOVE_4GB, XENFEAT_SUPERVISOR_MODE_KERNEL, XENFEAT_UNPRIVILEGED,
    XENFEAT_WRITABLE_DESCRIPTOR_TABLES, XENFEAT_WRITABLE_PAGE_TABLES,
};

/// Xen's EINVAL (public/errno.h). Private until the shared `errno` module is merged.
const XEN_EINVAL: i32 = 22;

/// How kxen launches the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// As a privileged (dom0-like) domain.
    Privileged,
    /// As an ordinary unprivileged domain (domU).
    Unprivileged,
}

/// What kxen does when a kernel *requires* (`!name`) a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredPolicy {
    /// kxen provides it: accepted.
    Accept,
    /// Decided by the privilege rules (`dom0`).
    Privilege,
    /// kxen does not provide it: the kernel is refused with this reason.
    Refuse(&'static str),
}

/// kxen's answer to each feature a kernel may require in its `FEATURES` note (the
/// seven names Xen accepts there). Flip an entry when kxen starts to implement it.
pub const REQUIRED_FEATURE_POLICY: [(u32, RequiredPolicy); 7] = [
    // kxen commits to the writable_pagetables vm_assist; the Debian kernel requires it.
    (XENFEAT_WRITABLE_PAGE_TABLES, RequiredPolicy::Accept),
    (
        XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
        RequiredPolicy::Refuse("descriptor tables are write-protected under kxen"),
    ),
    (
        XENFEAT_AUTO_TRANSLATED_PHYSMAP,
        RequiredPolicy::Refuse("not supported for PV"),
    ),
    (
        XENFEAT_SUPERVISOR_MODE_KERNEL,
        RequiredPolicy::Refuse("the PV kernel runs in ring 3 under kxen"),
    ),
    // Always true for 64-bit guests.
    (XENFEAT_PAE_PGDIR_ABOVE_4GB, RequiredPolicy::Accept),
    (
        XENFEAT_HVM_CALLBACK_VECTOR,
        RequiredPolicy::Refuse("HVM callback vector is not available to PV guests"),
    ),
    (XENFEAT_DOM0, RequiredPolicy::Privilege),
];

/// The features kxen really implements, reported in `XENVER_get_features` submap 0. Add a
/// bit only when the mechanism it names works and is tested.
// xen: common/kernel.c, XENVER_get_features sets these three for every PV domain
/// - `mmu_pt_update_preserve_ad`: `MMU_PT_UPDATE_PRESERVE_AD` (hypercall/mmu.rs);
/// - `highmem_assist`: `MMUEXT_CLEAR_PAGE` / `MMUEXT_COPY_PAGE`;
/// - `gnttab_map_avail_bits`: grant maps keep the guest's available PTE bits (kxen keeps every
///   software-available bit the guest's, docs/pte-abi.md). Linux 5.17+ panics at boot as a PV
///   guest without it.
pub const KXEN_IMPLEMENTED: FeatureSet = FeatureSet::EMPTY
    .with(XENFEAT_MMU_PT_UPDATE_PRESERVE_AD)
    .with(XENFEAT_HIGHMEM_ASSIST)
    .with(XENFEAT_GNTTAB_MAP_AVAIL_BITS);

/// Why kxen refuses to launch a kernel in a given mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchRefusal {
    /// Privileged launch of a kernel whose `SUPPORTED_FEATURES` lacks `XENFEAT_dom0`.
    NotPrivilegedCapable,
    /// Unprivileged launch of a kernel that requires `dom0`.
    RequiresPrivileged,
    /// The kernel requires a feature name kxen (and Xen) does not know.
    UnknownRequiredFeature {
        /// The name, without `!`.
        name: ShortStr,
    },
    /// The kernel requires a known feature kxen does not provide.
    UnsupportedRequiredFeature {
        /// The feature's name.
        name: &'static str,
        /// Why kxen does not provide it.
        reason: &'static str,
    },
}

impl fmt::Display for LaunchRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchRefusal::NotPrivilegedCapable => f.write_str(
                "kernel does not support privileged (dom0) operation (its XEN_ELFNOTE_SUPPORTED_FEATURES lacks XENFEAT_dom0, bit 11)",
            ),
            LaunchRefusal::RequiresPrivileged => f.write_str(
                "kernel requires privileged (dom0) operation (XEN_ELFNOTE_FEATURES has \"!dom0\")",
            ),
            LaunchRefusal::UnknownRequiredFeature { name } => {
                write!(f, "kernel requires unknown feature \"{name}\" (XEN_ELFNOTE_FEATURES)")
            }
            LaunchRefusal::UnsupportedRequiredFeature { name, reason } => write!(
                f,
                "kernel requires feature \"{name}\" (XEN_ELFNOTE_FEATURES), which kxen does not provide: {reason}"
            ),
        }
    }
}

impl core::error::Error for LaunchRefusal {}

/// Checks a parsed kernel against the launch mode. See [`check_launch_decl`].
pub fn check_launch(params: &KernelParams<'_>, mode: LaunchMode) -> Result<(), LaunchRefusal> {
    check_launch_decl(&params.features, params.supported_note.as_ref(), mode)
}

/// Checks declared features against the launch mode: unknown required names first,
/// then required features kxen does not provide, then the privilege table (module doc).
/// `decl.supported` is the union of `FEATURES` names and `SUPPORTED_FEATURES` bits, as
/// in [`KernelParams::features`]; `supported_note` is the note alone.
pub fn check_launch_decl(
    decl: &FeatureDecl<'_>,
    supported_note: Option<&FeatureSet>,
    mode: LaunchMode,
) -> Result<(), LaunchRefusal> {
    // xen: libelf-dominfo.c elf_xen_parse_features refuses unknown required names.
    if let Some(name) = decl.unknown_required().first() {
        return Err(LaunchRefusal::UnknownRequiredFeature {
            name: ShortStr::new(name),
        });
    }
    for (bit, policy) in REQUIRED_FEATURE_POLICY {
        if let (true, RequiredPolicy::Refuse(reason)) = (decl.required.contains(bit), policy) {
            let name = crate::features::feature_name(bit).unwrap_or("?");
            return Err(LaunchRefusal::UnsupportedRequiredFeature { name, reason });
        }
    }
    let dom0_capable = decl.supported.contains(XENFEAT_DOM0);
    match mode {
        // xen: dom0_build.c, with the note present the kernel must declare XENFEAT_dom0.
        // This also covers bit 12 (unprivileged) without bit 11.
        LaunchMode::Privileged if supported_note.is_some() && !dom0_capable => {
            Err(LaunchRefusal::NotPrivilegedCapable)
        }
        // xen: xg_dom_elfloader.c, a domU kernel must not require dom0.
        LaunchMode::Unprivileged if decl.required.contains(XENFEAT_DOM0) => {
            Err(LaunchRefusal::RequiresPrivileged)
        }
        _ => Ok(()),
    }
}

/// `XENVER_get_features` with a bad submap index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmapError {
    /// `submap_idx` is not 0 (`XENFEAT_NR_SUBMAPS` is 1).
    BadIndex {
        /// The index asked for.
        idx: u32,
    },
}

impl SubmapError {
    /// The Xen errno to return to the guest (negated in `rax`): EINVAL.
    pub fn errno(&self) -> i32 {
        XEN_EINVAL
    }
}

impl fmt::Display for SubmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmapError::BadIndex { idx } => {
                write!(f, "XENVER_get_features submap_idx {idx} is not 0 (EINVAL)")
            }
        }
    }
}

impl core::error::Error for SubmapError {}

/// `XENVER_get_features` submap `submap_idx` for a domain. See [`features_submap_decl`].
pub fn features_submap(
    mode: LaunchMode,
    params: &KernelParams<'_>,
    implemented: FeatureSet,
    submap_idx: u32,
) -> Result<u32, SubmapError> {
    features_submap_decl(
        mode,
        params.supported_note.as_ref(),
        implemented,
        submap_idx,
    )
}

/// Submap 0 = the bits kxen implements (`implemented`, without 11 and 12), plus bit 11
/// (`XENFEAT_dom0`) for a privileged domain, plus bit 12 (`XENFEAT_unprivileged`) for an
/// unprivileged domain only if the kernel declared bit 12 in `SUPPORTED_FEATURES`
/// (elsewhere bit 12 means the deprecated `grant_map_identity`). Any other index: EINVAL.
// xen: common/kernel.c XENVER_get_features, submap_idx >= XENFEAT_NR_SUBMAPS -> -EINVAL
pub fn features_submap_decl(
    mode: LaunchMode,
    supported_note: Option<&FeatureSet>,
    implemented: FeatureSet,
    submap_idx: u32,
) -> Result<u32, SubmapError> {
    if submap_idx != 0 {
        return Err(SubmapError::BadIndex { idx: submap_idx });
    }
    let mut set = implemented;
    set.clear(XENFEAT_DOM0);
    set.clear(XENFEAT_UNPRIVILEGED);
    match mode {
        LaunchMode::Privileged => {
            set.set(XENFEAT_DOM0);
        }
        LaunchMode::Unprivileged => {
            if supported_note.is_some_and(|s| s.contains(XENFEAT_UNPRIVILEGED)) {
                set.set(XENFEAT_UNPRIVILEGED);
            }
        }
    }
    Ok(set.submap(0))
}

// Keep the policy table in step with Xen's FEATURES names.
const _: () = {
    let mut i = 0;
    while i < REQUIRED_FEATURE_POLICY.len() {
        assert!(REQUIRED_FEATURE_POLICY[i].0 == crate::features::ELFNOTE_FEATURE_NAMES[i].1);
        i += 1;
    }
};
