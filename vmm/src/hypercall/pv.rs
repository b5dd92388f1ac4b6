//! Per-vCPU PV state hypercalls: `set_trap_table` (0), `stack_switch` (3), `set_callbacks`
//! (4), `vm_assist` (21), `iret` (23), `callback_op` (30).

use tracing::{debug, warn};
use xen_abi::arch::is_canonical;
use xen_abi::callback::*;
use xen_abi::errno::EINVAL;
use xen_abi::hypercall as nr;
use xen_abi::mmu::{
    VMASST_CMD_DISABLE, VMASST_CMD_ENABLE, VMASST_TYPE_4GB_SEGMENTS,
    VMASST_TYPE_4GB_SEGMENTS_NOTIFY, VMASST_TYPE_ARCHITECTURAL_IOPL, VMASST_TYPE_M2P_STRICT,
    VMASST_TYPE_PAE_EXTENDED_CR3, VMASST_TYPE_RUNSTATE_UPDATE_FLAG,
    VMASST_TYPE_WRITABLE_PAGETABLES,
};
use xen_abi::pv_vcpu::{callback_index, CallbackEntry, TrapEntry, CALLBACK_FLAG_MASK_EVENTS};
use xen_abi::trap::{IretContext, TrapInfo, TI_DISABLE_EVENTS, VGCF_IN_SYSCALL, X86_EXC_NMI};

use super::{err, uint, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;
use crate::vcpu::{rflags, GuestCs};

/// Trap-table entries read per call before the call becomes a continuation.
pub const TRAP_TABLE_BATCH: u32 = 512;

/// Force a guest selector's RPL to the guest kernel's (3 for 64-bit PV).
// xen: arch/x86/include/asm/x86_64/regs.h?/desc.h, __fixup_guest_selector (GUEST_KERNEL_RPL 3)
const fn fixup_rpl(sel: u16) -> u16 {
    sel | 3
}

/// `HYPERVISOR_set_trap_table(traps)`: copy `trap_info` entries up to the first with a zero
/// address; NULL clears the whole table. Entries before a bad one stay installed.
// xen: arch/x86/pv/traps.c, do_set_trap_table
pub fn set_trap_table(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let mut va = a.a[0];
    if va == 0 {
        ctx.pv.traps = [TrapEntry::default(); xen_abi::pv_vcpu::NR_TRAPS];
        return 0;
    }
    let mut done = 0u32;
    loop {
        let cur: TrapInfo = match ctx.read_pod(va) {
            Ok(t) => t,
            Err(e) => return e,
        };
        if cur.address == 0 {
            return 0;
        }
        if !is_canonical(cur.address) {
            return err(EINVAL);
        }
        ctx.pv.traps[usize::from(cur.vector)] = TrapEntry {
            address: cur.address,
            cs: fixup_rpl(cur.cs),
            flags: cur.flags,
            pad: [0; 5],
        };
        va = va.wrapping_add(16);
        done += 1;
        if done >= TRAP_TABLE_BATCH && !ctx.in_multicall {
            // Xen preempts here with a continuation; so does kxen, after a batch.
            ctx.continuation(nr::SET_TRAP_TABLE, [va, 0, 0, 0, 0]);
            return 0;
        }
    }
}

/// `HYPERVISOR_stack_switch(ss, sp)`: the kernel stack used on guest user->kernel entry.
// xen: arch/x86/pv/misc-hypercalls.c / x86_64/mm.c, do_stack_switch
pub fn stack_switch(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    ctx.pv.kernel_ss = u64::from(fixup_rpl(a.a[0] as u16));
    ctx.pv.kernel_sp = a.a[1];
    0
}

/// `register_guest_callback`.
// xen: arch/x86/pv/callback.c, register_guest_callback / register_guest_nmi_callback
fn register(ctx: &mut HypercallCtx<'_, DomainShared>, r: &CallbackRegister) -> i64 {
    if !is_canonical(r.address) {
        return err(EINVAL);
    }
    let flags = r.flags & CALLBACK_FLAG_MASK_EVENTS;
    let idx = match r.ty {
        CALLBACKTYPE_EVENT => callback_index::EVENT,
        CALLBACKTYPE_FAILSAFE => callback_index::FAILSAFE,
        CALLBACKTYPE_SYSCALL => callback_index::SYSCALL,
        CALLBACKTYPE_SYSCALL32 => callback_index::SYSCALL32,
        CALLBACKTYPE_SYSENTER => callback_index::SYSENTER,
        CALLBACKTYPE_NMI => {
            // The NMI callback is trap-table entry 2 with events disabled, cs = kernel CS.
            ctx.pv.traps[usize::from(X86_EXC_NMI)] = TrapEntry {
                address: r.address,
                cs: xen_abi::arch::FLAT_KERNEL_CS,
                flags: TI_DISABLE_EVENTS,
                pad: [0; 5],
            };
            callback_index::NMI
        }
        _ => return -ENOSYS,
    };
    ctx.pv.callbacks[idx] = CallbackEntry {
        address: r.address,
        flags,
        pad: [0; 6],
    };
    0
}

/// `unregister_guest_callback`: only the NMI callback can be unregistered.
// xen: arch/x86/pv/callback.c, unregister_guest_callback
fn unregister(ctx: &mut HypercallCtx<'_, DomainShared>, ty: u16) -> i64 {
    match ty {
        CALLBACKTYPE_EVENT
        | CALLBACKTYPE_FAILSAFE
        | CALLBACKTYPE_SYSCALL
        | CALLBACKTYPE_SYSCALL32
        | CALLBACKTYPE_SYSENTER => err(EINVAL),
        CALLBACKTYPE_NMI => {
            ctx.pv.traps[usize::from(X86_EXC_NMI)] = TrapEntry::default();
            ctx.pv.callbacks[callback_index::NMI] = CallbackEntry::default();
            0
        }
        _ => -ENOSYS,
    }
}

/// `HYPERVISOR_set_callbacks(event, failsafe, syscall)`: registers the three with no flags.
/// Like Xen, errors of the individual registrations (non-canonical addresses) are ignored
/// and the call returns 0.
// xen: arch/x86/pv/callback.c, do_set_callbacks
pub fn set_callbacks(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    for (ty, address) in [
        (CALLBACKTYPE_EVENT, a.a[0]),
        (CALLBACKTYPE_FAILSAFE, a.a[1]),
        (CALLBACKTYPE_SYSCALL, a.a[2]),
    ] {
        let r = CallbackRegister {
            ty,
            flags: 0,
            _pad: 0,
            address,
        };
        if register(ctx, &r) != 0 {
            debug!(ty, address, "set_callbacks: non-canonical address ignored");
        }
    }
    0
}

/// `HYPERVISOR_callback_op(cmd, arg)`.
// xen: arch/x86/pv/callback.c, do_callback_op
pub fn callback_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    match uint(a.a[0]) {
        CALLBACKOP_REGISTER => match ctx.read_pod::<CallbackRegister>(a.a[1]) {
            Ok(r) => register(ctx, &r),
            Err(e) => e,
        },
        CALLBACKOP_UNREGISTER => match ctx.read_pod::<CallbackUnregister>(a.a[1]) {
            Ok(u) => unregister(ctx, u.ty),
            Err(e) => e,
        },
        _ => -ENOSYS,
    }
}

/// `vm_assist` types a 64-bit PV guest may set.
// xen: arch/x86/include/asm/config.h, VM_ASSIST_VALID / arch_vm_assist_valid_mask (PV64)
pub const VM_ASSIST_VALID_PV64: u64 = (1 << VMASST_TYPE_4GB_SEGMENTS)
    | (1 << VMASST_TYPE_4GB_SEGMENTS_NOTIFY)
    | (1 << VMASST_TYPE_WRITABLE_PAGETABLES)
    | (1 << VMASST_TYPE_PAE_EXTENDED_CR3)
    | (1 << VMASST_TYPE_ARCHITECTURAL_IOPL)
    | (1 << VMASST_TYPE_RUNSTATE_UPDATE_FLAG)
    | (1 << VMASST_TYPE_M2P_STRICT);

/// `HYPERVISOR_vm_assist(cmd, type)`.
// xen: common/domain.c, vm_assist: an invalid type -> -EINVAL (checked first), unknown
// cmd -> -ENOSYS.
pub fn vm_assist(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (cmd, ty) = (uint(a.a[0]), uint(a.a[1]));
    if ty >= 64 || VM_ASSIST_VALID_PV64 & (1u64 << ty) == 0 {
        return err(EINVAL);
    }
    match cmd {
        VMASST_CMD_ENABLE => {
            ctx.pv.vm_assist |= 1 << ty;
            0
        }
        VMASST_CMD_DISABLE => {
            ctx.pv.vm_assist &= !(1 << ty);
            0
        }
        _ => -ENOSYS,
    }
}

/// `HYPERVISOR_iret`: pop Xen's iret frame (rax, r11, rcx, flags, rip, cs, rflags, rsp, ss)
/// from the guest stack and return there. Replaces the registers (`regs_replaced`).
///
/// * `cs & 3 == 3` means a return to guest user mode (and its page table, applied by
///   `crate::pvmode`); without a user page table the domain is crashed, as Xen does.
/// * Without `VGCF_in_syscall`, rcx and r11 come from the frame; with it Xen returns with
///   `sysretq`, so rcx = the new rip and r11 = the new rflags.
/// * rflags: IOPL and VM stripped, IF forced on; the event mask becomes `!IF`.
/// * A non-canonical rip makes Xen's return `iretq` fault, which Xen turns into a #GP(0)
///   for the guest at the target context; kxen does the same through the trap bounce.
// xen: arch/x86/pv/iret.c, do_iret; arch/x86/x86_64/entry.S, iret_exit_to_guest
pub fn iret(ctx: &mut HypercallCtx<'_, DomainShared>, _a: &HypercallArgs) -> i64 {
    // The guest's iret frame is at its rsp at the syscall.
    let f: IretContext = match ctx.read_pod(ctx.regs.rsp) {
        Ok(f) => f,
        Err(_) => {
            ctx.domain
                .crash("fault while reading the IRET context from the guest stack");
            ctx.regs_replaced = true;
            return 0;
        }
    };
    ctx.regs_replaced = true;
    if f.cs & 3 == 3 {
        // Returning to guest user mode: its page table (crate::pvmode applies it).
        if ctx.pv.user_cr3 == 0 {
            ctx.domain
                .crash("guest switching to user mode with no user page tables");
            return 0;
        }
        ctx.pv.set_guest_mode(xen_abi::pv_vcpu::GuestMode::User);
    }
    if ctx.pv.vm_assist(VMASST_TYPE_ARCHITECTURAL_IOPL) {
        // xen: do_iret, the virtual IOPL follows the frame's
        ctx.pv.iopl = ((f.rflags & rflags::IOPL) >> 12) as u32;
    }
    let r = &mut *ctx.regs;
    r.rip = f.rip;
    r.rsp = f.rsp;
    r.rflags = (f.rflags & !(rflags::IOPL | rflags::VM)) | rflags::IF;
    if f.flags & VGCF_IN_SYSCALL == 0 {
        r.r11 = f.r11;
        r.rcx = f.rcx;
    } else if is_canonical(f.rip) {
        // Xen returns with sysretq, which loads rcx with rip and r11 with rflags.
        // xen: arch/x86/x86_64/entry.S, restore_all_guest (TRAP_syscall path)
        r.rcx = f.rip;
        r.r11 = r.rflags;
    }
    r.rax = f.rax;
    ctx.return_cs = if (f.cs | 3) as u16 == xen_abi::arch::FLAT_RING3_CS32 {
        GuestCs::Compat32
    } else {
        GuestCs::Long64
    };
    let mask = u8::from(f.rflags & rflags::IF == 0);
    if !ctx.domain.set_upcall_mask(ctx.ram(), ctx.vcpu_id, mask) {
        warn!(
            vcpu = ctx.vcpu_id,
            "iret: no vcpu_info to restore the event mask in"
        );
    }
    if !is_canonical(f.rip) {
        // Xen's iretq faults; the #GP(0) is delivered to the guest at the target context.
        let ev = crate::trap::GuestEvent {
            vector: xen_abi::trap::X86_EXC_GP,
            error_code: Some(0),
            cr2: 0,
            cs: (f.cs | 3) as u16,
            ss: (f.ss | 3) as u16,
            software: false,
        };
        let cr3 = ctx.guest().cr3();
        let ram = ctx.ram();
        if let Err(e) =
            crate::trap::bounce(ram, cr3, ctx.pv, ctx.domain, ctx.vcpu_id, &ev, ctx.regs)
        {
            ctx.domain
                .crash(&format!("iret to non-canonical rip {:#x}: {e}", f.rip));
        }
    }
    0
}
