//! features: the XENVER_get_features submap a guest sees. Built twice:
//! `features_dom0` (FEATURES "writable_page_tables|dom0", SUPPORTED_FEATURES 0x801) and
//! `features_none` (no FEATURES or SUPPORTED_FEATURES note); the host test judges the
//! printed submap. Variants `features_domu_only`, `features_unpriv12` and
//! `features_requires_dom0` declare the other rows of the privilege table.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use kit::abi::*;
use kit::hypercall as hc;

#[cfg(kxen_guest = "features_dom0")]
xen_notes!(features = "writable_page_tables|dom0", supported = 0x801);
// A SUPPORTED_FEATURES note without XENFEAT_dom0: refused for a privileged launch.
#[cfg(kxen_guest = "features_domu_only")]
xen_notes!(features = "writable_page_tables", supported = 0x1);
// The 2011 proposal's XENFEAT_unprivileged (12) without 11: unprivileged only, and an
// unprivileged domain sees bit 12 in its submap.
#[cfg(kxen_guest = "features_unpriv12")]
xen_notes!(features = "writable_page_tables", supported = 0x1001);
// `!dom0`: the kernel requires privileged operation.
#[cfg(kxen_guest = "features_requires_dom0")]
xen_notes!(features = "writable_page_tables|!dom0");
#[cfg(not(any(
    kxen_guest = "features_dom0",
    kxen_guest = "features_domu_only",
    kxen_guest = "features_unpriv12",
    kxen_guest = "features_requires_dom0"
)))]
xen_notes!();

fn kmain(_si: &'static StartInfo) {
    match hc::get_features(0) {
        Ok(submap) => {
            value!("submap0", "{:#x}", submap);
            check!("get_features_submap0", true);
        }
        Err(e) => {
            check!(
                "get_features_submap0",
                false,
                "XENVER_get_features(0) returned {}",
                e
            );
        }
    }
    // xen: common/kernel.c, XENVER_get_features: any submap_idx other than 0 -> -EINVAL.
    check_eq!(
        "get_features_submap1_einval",
        hc::get_features(1),
        Err(-EINVAL)
    );
}
