//! `multicall` (hypercall 13).
// xen: common/multicall.c, do_multicall; arch/x86/pv/hypercall.c, pv_do_multicall_call.

use xen_abi::arch::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};
use xen_abi::errno::EINVAL;
use xen_abi::hypercall::{self as nr, MulticallEntry};

use super::{err, pv_hypercalls, uint, HypercallArgs, HypercallCtx, EFAULT};
use crate::domain::DomainShared;

/// Entries run per call before the multicall becomes a continuation (Xen preempts too).
pub const MULTICALL_BATCH: u32 = 256;

/// Size of one `multicall_entry`.
const ENTRY: u64 = 64;

/// `access_ok` for 64-bit PV: the start address must be outside Xen's range (the rest
/// faults entry by entry).
// xen: arch/x86/include/asm/uaccess.h, __addr_ok / array_access_ok
fn addr_ok(va: u64) -> bool {
    !(HYPERVISOR_VIRT_START..HYPERVISOR_VIRT_END).contains(&va)
}

/// `HYPERVISOR_multicall(call_list, nr_calls)`: run each 64-byte entry through the PV table
/// and write its `result` back. A nested multicall gets -EINVAL in its result; an entry that
/// cannot be read or whose result cannot be written ends the call with -EFAULT (entries
/// before it have run). `iret` ends the multicall with the iret's registers. Nothing is
/// allocated per entry, and after [`MULTICALL_BATCH`] entries the call continues as a
/// continuation, so any count terminates.
pub fn multicall(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    if ctx.in_multicall {
        // xen: "Multicall reentry is disallowed."
        return err(EINVAL);
    }
    let (mut list, nr_calls) = (a.a[0], uint(a.a[1]));
    if !addr_ok(list) {
        return -EFAULT;
    }
    ctx.in_multicall = true;
    let rc = run(ctx, &mut list, nr_calls);
    ctx.in_multicall = false;
    rc
}

fn run(ctx: &mut HypercallCtx<'_, DomainShared>, list: &mut u64, nr_calls: u32) -> i64 {
    let table = pv_hypercalls();
    for i in 0..nr_calls {
        if i >= MULTICALL_BATCH {
            ctx.continuation(nr::MULTICALL, [*list, u64::from(nr_calls - i), 0, 0, 0]);
            return 0;
        }
        let call: MulticallEntry = match ctx.read_pod(*list) {
            Ok(c) => c,
            Err(_) => return -EFAULT,
        };
        let args = HypercallArgs {
            nr: call.op,
            a: [
                call.args[0],
                call.args[1],
                call.args[2],
                call.args[3],
                call.args[4],
            ],
        };
        let result = table.dispatch(ctx, &args);
        if ctx.regs_replaced {
            // Only iret replaces registers inside a multicall (continuations are not made
            // for sub-calls): Xen ends the multicall there (mc_exit).
            return 0;
        }
        let Some(res_va) = list.checked_add(8) else {
            return -EFAULT;
        };
        if ctx.write_pod(res_va, &(result as u64)).is_err() {
            return -EFAULT;
        }
        if ctx.domain.shutdown_reason().is_some() {
            return 0;
        }
        *list = list.wrapping_add(ENTRY);
    }
    0
}
