//! `memory_op` (hypercall 12), the subset a booting PV guest needs.
// xen: common/memory.c, do_memory_op; arch/x86/mm.c, arch_memory_op (XENMEM_memory_map);
// arch/x86/x86_64/mm.c, subarch_memory_op (XENMEM_machphys_mapping, machphys_mfn_list).

use xen_abi::arch::{KXEN_M2P_VIRT_START, PAGE_SIZE};
use xen_abi::errno::{EINVAL, ESRCH};
use xen_abi::memory::*;
use xen_abi::mmu::{DomId, DOMID_SELF};

use super::{err, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;
use crate::ring0::m2p_pages;

/// `HYPERVISOR_memory_op(cmd, arg)`.
pub fn memory_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (op, start_extent) = split_memop_cmd(a.a[0]);
    let arg = a.a[1];
    let nr_pages = ctx.domain.nr_pages;
    let as_ret = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    match op {
        XENMEM_MAXIMUM_RAM_PAGE => {
            if start_extent != 0 {
                return err(EINVAL);
            }
            // max_page: one past the highest machine frame (guest frames are all kxen has).
            as_ret(nr_pages)
        }
        XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION | XENMEM_MAXIMUM_GPFN => {
            if start_extent != 0 {
                return err(EINVAL);
            }
            let domid: DomId = match ctx.read_pod(arg) {
                Ok(d) => d,
                Err(e) => return e,
            };
            // kxen runs one domain and only knows it as DOMID_SELF.
            if domid != DOMID_SELF {
                return err(ESRCH);
            }
            match op {
                XENMEM_MAXIMUM_GPFN => as_ret(nr_pages.saturating_sub(1)),
                XENMEM_CURRENT_RESERVATION => {
                    let gone = ctx.domain.mm.lock().map_or(0, |m| m.absent_pages());
                    as_ret(nr_pages.saturating_sub(gone))
                }
                _ => as_ret(nr_pages),
            }
        }
        XENMEM_MEMORY_MAP => {
            // kxen behaves as a toolstack that set one RAM entry covering the guest's pages
            // (Xen itself returns -ENOSYS when no map was set).
            let mut map: XenMemoryMap = match ctx.read_pod(arg) {
                Ok(m) => m,
                Err(e) => return e,
            };
            let e820 = [E820Entry {
                addr: 0,
                size: nr_pages.saturating_mul(PAGE_SIZE),
                ty: E820_RAM,
            }];
            map.nr_entries = map.nr_entries.min(e820.len() as u32);
            let n = map.nr_entries as usize;
            for (i, e) in e820.iter().take(n).enumerate() {
                let va = map.buffer.wrapping_add(i as u64 * 20);
                if let Err(e) = ctx.write_pod(va, e) {
                    return e;
                }
            }
            match ctx.write_pod(arg, &map) {
                Ok(()) => 0,
                Err(e) => e,
            }
        }
        XENMEM_MACHPHYS_MAPPING => {
            let m = XenMachphysMapping {
                v_start: KXEN_M2P_VIRT_START,
                v_end: KXEN_M2P_VIRT_START + m2p_pages(nr_pages) * PAGE_SIZE,
                // !mem_hotplug && PV: max_page - 1.
                max_mfn: nr_pages.saturating_sub(1),
            };
            match ctx.write_pod(arg, &m) {
                Ok(()) => 0,
                Err(e) => e,
            }
        }
        XENMEM_MACHPHYS_MFN_LIST => machphys_mfn_list(ctx, arg),
        XENMEM_ADD_TO_PHYSMAP => super::grant::add_to_physmap(ctx, arg),
        XENMEM_INCREASE_RESERVATION | XENMEM_DECREASE_RESERVATION | XENMEM_POPULATE_PHYSMAP => {
            reservation(ctx, op, start_extent, arg)
        }
        // XENMEM_exchange and the rest: not implemented.
        _ => -ENOSYS,
    }
}

/// `XENMEM_machphys_mfn_list`: the machine frame of each 2 MiB extent of the M2P, at most
/// `max_extents` of them, and `nr_extents` written back. The frames are kxen-private; the
/// guest can map them read-only at most, like Xen's M2P frames.
// xen: arch/x86/x86_64/mm.c, subarch_memory_op XENMEM_machphys_mfn_list.
fn machphys_mfn_list(ctx: &mut HypercallCtx<'_, DomainShared>, arg: u64) -> i64 {
    let mut list: XenMachphysMfnList = match ctx.read_pod(arg) {
        Ok(l) => l,
        Err(e) => return e,
    };
    let dom: &DomainShared = ctx.domain;
    let mfns: &[u64] = dom.m2p_extent_mfns.get().map_or(&[], |v| v.as_slice());
    let mut n: u32 = 0;
    for &mfn in mfns.iter().take(list.max_extents as usize) {
        let slot = list.extent_start.wrapping_add(u64::from(n) * 8);
        if let Err(e) = ctx.write_obj(slot, &mfn) {
            return e;
        }
        n += 1;
    }
    list.nr_extents = n;
    match ctx.write_pod(arg, &list) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Largest extent order a domU may ask to be allocated (xen: CONFIG_DOMU_MAX_ORDER).
pub const DOMU_MAX_ORDER: u32 = 9;

/// `increase_reservation`, `decrease_reservation`, `populate_physmap` within the domain's
/// maximum (its initial `nr_pages`), with the identity p2m: a frame given back is absent
/// until increase/populate hands the same frame number back, zeroed. Returns the number of
/// extents done (counting from `start_extent`), stopping at the first that cannot be.
// xen: common/memory.c, do_memory_op reservation ops, increase_reservation,
// decrease_reservation, populate_physmap, guest_remove_page.
fn reservation(
    ctx: &mut HypercallCtx<'_, DomainShared>,
    op: u32,
    start_extent: u64,
    arg: u64,
) -> i64 {
    let r: XenMemoryReservation = match ctx.read_pod(arg) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let as_ret = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if start_extent >= r.nr_extents {
        return as_ret(start_extent);
    }
    if r.domid != DOMID_SELF {
        return err(ESRCH);
    }
    if op != XENMEM_DECREASE_RESERVATION && r.extent_order > DOMU_MAX_ORDER {
        return as_ret(start_extent);
    }
    let Some(pages) = 1u64
        .checked_shl(r.extent_order)
        .filter(|_| r.extent_order < 40)
    else {
        return as_ret(start_extent);
    };
    let ram = ctx.ram();
    let dom: &DomainShared = ctx.domain;
    let mut i = start_extent;
    while i < r.nr_extents {
        let slot = r.extent_start.wrapping_add(i.wrapping_mul(8));
        let ok = match op {
            XENMEM_INCREASE_RESERVATION => {
                let mut mm = dom.mm.lock().unwrap_or_else(|p| p.into_inner());
                match mm.find_absent(pages) {
                    Some(mfn) if r.extent_start == 0 || ctx.write_obj(slot, &mfn).is_ok() => {
                        mm.populate_pages(ram, mfn, pages)
                    }
                    _ => false,
                }
            }
            _ => {
                let Ok(frame) = ctx.read_obj::<u64>(slot) else {
                    break;
                };
                let mut mm = dom.mm.lock().unwrap_or_else(|p| p.into_inner());
                if op == XENMEM_POPULATE_PHYSMAP {
                    mm.populate_pages(ram, frame, pages)
                } else {
                    mm.remove_pages(frame, pages) == pages
                }
            }
        };
        if !ok {
            break;
        }
        i += 1;
    }
    if dom.mm.lock().map(|mut m| m.take_flush()).unwrap_or(false) {
        ctx.reload_cr3 = true;
    }
    as_ret(i)
}
