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
        XENMEM_ADD_TO_PHYSMAP => super::grant::add_to_physmap(ctx, arg),
        _ => -ENOSYS,
    }
}
