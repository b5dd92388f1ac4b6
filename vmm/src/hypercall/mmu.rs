//! PV page-table hypercalls: `mmu_update` (1), `update_va_mapping` (14),
//! `update_va_mapping_otherdomain` (22), `mmuext_op` (26), over the domain's frame table
//! ([`crate::mm::DomainMm`]).
// xen: arch/x86/mm.c, do_mmu_update, do_mmuext_op, __do_update_va_mapping,
// do_update_va_mapping_otherdomain, vcpumask_to_pcpumask; public/xen.h for the ABI.
//
// Identity p2m: `MMU_MACHPHYS_UPDATE` is accepted only when it keeps `m2p[mfn] == mfn`
// (nothing to record); any other value gets -EINVAL, Xen's errno for a machphys request it
// refuses. `MMU_PT_UPDATE_NO_TRANSLATE` is `MMU_NORMAL_PT_UPDATE` for a PV guest (nothing
// is translated). Foreign domains do not exist under kxen: any `foreigndom` other than
// DOMID_SELF is -ESRCH (Xen: no such domain). TLB flushes reload CR3 on the way back to the
// guest (`HypercallCtx::reload_cr3`); an INVLPG is over-approximated by a full flush.

use tracing::debug;
use xen_abi::arch::{Pod, HYPERVISOR_VIRT_END};
use xen_abi::errno::{EACCES, EFAULT, EINVAL, ENOSYS, ESRCH};
use xen_abi::hypercall as nr;
use xen_abi::mmu::*;
use xen_abi::pte::Level;
use xen_abi::pv_vcpu::PENDING_LDT;

use super::{err, uint, HypercallArgs, HypercallCtx};
use crate::domain::DomainShared;
use crate::memory::{GuestRam, PAGE_SIZE};
use crate::mm::{DomainMm, NormalUpdate};

/// Requests handled per call before the call becomes a continuation.
pub const MMU_BATCH: u32 = 4096;

/// Count bit marking a continued call (xen: `MMU_UPDATE_PREEMPTED`, `~(~0U >> 1)`).
pub const MMU_UPDATE_PREEMPTED: u32 = 0x8000_0000;

/// `__addr_ok` for 64-bit PV: below the canonical hole or above Xen's range.
// xen: arch/x86/include/asm/x86_64/uaccess.h, __addr_ok
pub fn addr_ok(va: u64) -> bool {
    !((1 << 47)..HYPERVISOR_VIRT_END).contains(&va)
}

fn lock(d: &DomainShared) -> std::sync::MutexGuard<'_, DomainMm> {
    d.mm.lock().unwrap_or_else(|p| p.into_inner())
}

/// The page owner named by `foreigndom`: only the caller itself exists.
fn check_foreigndom(foreigndom: u32) -> Result<(), i64> {
    let (fd, pfd) = split_foreigndom(foreigndom);
    if fd != DOMID_SELF || pfd != DOMID_SELF {
        return Err(err(ESRCH));
    }
    Ok(())
}

/// Whether the vCPU bitmap at `ptr` names vCPU `me` (xen: vcpumask_to_pcpumask reads
/// `unsigned long` words; a fault is -EFAULT).
fn vcpumask_has(ctx: &HypercallCtx<'_, DomainShared>, ptr: u64, me: u32) -> Result<bool, i64> {
    let word = u64::from(me / 64);
    let at = ptr
        .checked_add(word * 8)
        .ok_or(err(EFAULT))
        .map_err(|_| err(EFAULT))?;
    let w: u64 = ctx.read_obj(at).map_err(|_| err(EFAULT))?;
    Ok(w >> (me % 64) & 1 != 0)
}

/// Ask the other vCPUs named by `targets` to flush their TLBs before this hypercall
/// returns (the run loop waits for them, [`crate::tlbflush`]).
fn flush_others(ctx: &HypercallCtx<'_, DomainShared>, targets: impl IntoIterator<Item = u32>) {
    let dom = ctx.domain;
    if let Some(smp) = dom.smp() {
        smp.flush.request(ctx.vcpu_id, targets, |t| {
            if let Some(ev) = dom.events() {
                ev.kick(t, Some(ctx.vcpu_id));
            }
        });
    }
}

/// Every vCPU of the domain.
fn all_vcpus(ctx: &HypercallCtx<'_, DomainShared>) -> std::ops::Range<u32> {
    0..ctx.domain.smp().map_or(0, |s| s.flush.nr_vcpus())
}

/// The vCPUs named by the guest bitmap at `ptr` (xen: a vcpumask of `nr_vcpus` bits).
fn vcpumask_targets(ctx: &HypercallCtx<'_, DomainShared>, ptr: u64) -> Result<Vec<u32>, i64> {
    let mut out = Vec::new();
    let nr = all_vcpus(ctx).end;
    for word in 0..nr.div_ceil(64) {
        let at = ptr.checked_add(u64::from(word) * 8).ok_or(err(EFAULT))?;
        let w: u64 = ctx.read_obj(at).map_err(|_| err(EFAULT))?;
        for bit in 0..64u32 {
            let v = word * 64 + bit;
            if v < nr && w >> bit & 1 != 0 {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Read the `pdone` counter of a continued call.
fn continued(ctx: &HypercallCtx<'_, DomainShared>, count: u32, pdone: u64) -> (u32, u32) {
    if count & MMU_UPDATE_PREEMPTED == 0 {
        return (count, 0);
    }
    let done = if pdone != 0 {
        ctx.read_obj::<u32>(pdone).unwrap_or(0)
    } else {
        0
    };
    (count & !MMU_UPDATE_PREEMPTED, done)
}

/// Finish a batch: write `done + i` to `pdone` (failures ignored, as Xen), continue if
/// preempted, apply a due flush.
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &mut HypercallCtx<'_, DomainShared>,
    hc: u64,
    list: u64,
    elem: u64,
    count: u32,
    i: u32,
    done: u32,
    pdone: u64,
    foreigndom: u32,
    preempted: bool,
    rc: i64,
) -> i64 {
    if lock(ctx.domain).take_flush() {
        ctx.reload_cr3 = true;
    }
    if pdone != 0 {
        let _ = ctx.write_obj(pdone, &done.wrapping_add(i));
    }
    if preempted {
        let next = list.wrapping_add(u64::from(i) * elem);
        ctx.continuation(
            hc,
            [
                next,
                u64::from((count - i) | MMU_UPDATE_PREEMPTED),
                pdone,
                u64::from(foreigndom),
                0,
            ],
        );
    }
    rc
}

/// `HYPERVISOR_mmu_update(reqs, count, pdone, foreigndom)`.
pub fn mmu_update(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (ureqs, pdone, foreigndom) = (a.a[0], a.a[2], uint(a.a[3]));
    let (count, done) = continued(ctx, uint(a.a[1]), pdone);
    if let Err(e) = check_foreigndom(foreigndom) {
        return e;
    }
    // xen: guest_handle_okay(ureqs, count): the start must be guest-accessible.
    if count != 0 && !addr_ok(ureqs) {
        return err(EFAULT);
    }
    let ram = ctx.ram();
    let mut rc = 0i64;
    let mut i = 0u32;
    let mut preempted = false;
    let mut buf = [0u8; PAGE_SIZE as usize];
    while i < count {
        if i >= MMU_BATCH && !ctx.in_multicall {
            preempted = true;
            break;
        }
        // Read the requests up to the end of the current page at once.
        let va = ureqs.wrapping_add(u64::from(i) * 16);
        let in_page = ((PAGE_SIZE - (va & (PAGE_SIZE - 1))) / 16).max(1);
        let n = in_page.min(u64::from(count - i)) as usize;
        if ctx.copy_from_guest(va, &mut buf[..n * 16]).is_err() {
            rc = err(EFAULT);
            break;
        }
        let mut failed = false;
        {
            let mut mm = lock(ctx.domain);
            for raw in buf[..n * 16].chunks_exact(16) {
                let req = MmuUpdate::from_bytes(raw).unwrap_or_default();
                if let Err(e) = one_update(&mut mm, ram, &req) {
                    rc = e;
                    failed = true;
                    break;
                }
                i += 1;
            }
        }
        if failed {
            break;
        }
    }
    finish(
        ctx,
        nr::MMU_UPDATE,
        ureqs,
        16,
        count,
        i,
        done,
        pdone,
        foreigndom,
        preempted,
        rc,
    )
}

fn one_update(mm: &mut DomainMm, ram: &GuestRam, req: &MmuUpdate) -> Result<(), i64> {
    match req.cmd() {
        MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD | MMU_PT_UPDATE_NO_TRANSLATE => mm
            .normal_update(
                ram,
                req.addr(),
                req.val,
                req.cmd() == MMU_PT_UPDATE_PRESERVE_AD,
            )
            .map(|r: NormalUpdate| {
                let _ = r;
            })
            .map_err(|e| {
                tracing::debug!("mmu_update {:#x} <- {:#x}: {e}", req.ptr, req.val);
                e.ret()
            }),
        MMU_MACHPHYS_UPDATE => mm
            .machphys_update(req.ptr >> 12, req.val)
            .map_err(|e| e.ret()),
        _ => Err(err(ENOSYS)),
    }
}

/// Update the L1 entry mapping `va` in the caller's kernel page tables, then flush as
/// `flags` says (xen: __do_update_va_mapping).
fn do_update_va_mapping(
    ctx: &mut HypercallCtx<'_, DomainShared>,
    va: u64,
    val: u64,
    flags: u64,
) -> i64 {
    if !addr_ok(va) {
        return err(EINVAL);
    }
    let ram = ctx.ram();
    let cr3 = ctx.pv.kernel_cr3;
    let mut rc = {
        let mut mm = lock(ctx.domain);
        match mm.l1_slot_for(ram, cr3, va) {
            Some((l1, slot)) if mm.is_validated_table(l1, Level::L1) => {
                match mm.update_entry(ram, l1, Level::L1, slot, val, false) {
                    Ok(_) => 0,
                    Err(e) => {
                        tracing::debug!("update_va_mapping {va:#x} <- {val:#x}: {e}");
                        e.ret()
                    }
                }
            }
            _ => err(EINVAL),
        }
    };
    if lock(ctx.domain).take_flush() {
        ctx.reload_cr3 = true;
    }
    match flags & UVMF_FLUSHTYPE_MASK {
        UVMF_TLB_FLUSH | UVMF_INVLPG => match flags & !UVMF_FLUSHTYPE_MASK {
            UVMF_LOCAL => ctx.reload_cr3 = true,
            UVMF_ALL => {
                ctx.reload_cr3 = true;
                flush_others(ctx, all_vcpus(ctx));
            }
            ptr => {
                // xen: the bitmap's read result replaces rc.
                rc = match vcpumask_has(ctx, ptr, ctx.vcpu_id) {
                    Ok(mine) => {
                        ctx.reload_cr3 |= mine;
                        match vcpumask_targets(ctx, ptr) {
                            Ok(t) => {
                                flush_others(ctx, t);
                                0
                            }
                            Err(e) => e,
                        }
                    }
                    Err(e) => e,
                };
            }
        },
        _ => {}
    }
    rc
}

/// `HYPERVISOR_update_va_mapping(va, val, flags)`.
pub fn update_va_mapping(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    do_update_va_mapping(ctx, a.a[0], a.a[1], a.a[2])
}

/// `HYPERVISOR_update_va_mapping_otherdomain(va, val, flags, domid)`: DOMID_SELF is the
/// caller (xen: get_pg_owner); no other domain exists under kxen: -ESRCH.
pub fn update_va_mapping_otherdomain(
    ctx: &mut HypercallCtx<'_, DomainShared>,
    a: &HypercallArgs,
) -> i64 {
    if a.a[3] as u16 != DOMID_SELF {
        return err(ESRCH);
    }
    do_update_va_mapping(ctx, a.a[0], a.a[1], a.a[2])
}

/// `HYPERVISOR_mmuext_op(ops, count, pdone, foreigndom)`.
pub fn mmuext_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (uops, pdone, foreigndom) = (a.a[0], a.a[2], uint(a.a[3]));
    let (count, done) = continued(ctx, uint(a.a[1]), pdone);
    // xen: get_pg_owner(foreigndom): only the caller exists.
    if foreigndom as u16 != DOMID_SELF {
        return err(ESRCH);
    }
    if count != 0 && !addr_ok(uops) {
        return err(EFAULT);
    }
    let mut rc = 0i64;
    let mut i = 0u32;
    let mut preempted = false;
    while i < count {
        if i >= MMU_BATCH && !ctx.in_multicall {
            preempted = true;
            break;
        }
        let va = uops.wrapping_add(u64::from(i) * 24);
        let op: MmuextOp = match ctx.read_pod(va) {
            Ok(op) => op,
            Err(_) => {
                rc = err(EFAULT);
                break;
            }
        };
        if let Err(e) = one_op(ctx, &op) {
            tracing::debug!(
                "mmuext_op {} ({:#x}, {:#x}): {e}",
                mmuext_name(op.cmd).unwrap_or("?"),
                op.arg1,
                op.arg2
            );
            rc = e;
            break;
        }
        i += 1;
    }
    finish(
        ctx,
        nr::MMUEXT_OP,
        uops,
        24,
        count,
        i,
        done,
        pdone,
        foreigndom,
        preempted,
        rc,
    )
}

/// Make `mfn` the vCPU's kernel page-table base: validate it as an L4 and take its type
/// reference, drop the old base's, and record it in `pv.kernel_cr3`. The caller reloads CR3
/// (flushing the TLB). Shared by `MMUEXT_NEW_BASEPTR` and an emulated `mov %reg, %cr3`.
/// Frame 0 is refused: unlike the user base, the kernel base cannot be cleared.
// xen: arch/x86/mm.c, new_guest_cr3 (also reached from the emulated CR3 write).
pub(crate) fn switch_kernel_base(
    dom: &DomainShared,
    ram: &GuestRam,
    pv: &mut xen_abi::pv_vcpu::PvVcpuState,
    mfn: u64,
) -> Result<(), crate::mm::MmError> {
    if mfn == 0 {
        return Err(crate::mm::MmError::BadFrame(0));
    }
    let old = pv.kernel_cr3 >> 12;
    lock(dom).switch_base(ram, old, mfn)?;
    pv.kernel_cr3 = mfn << 12;
    Ok(())
}

fn one_op(ctx: &mut HypercallCtx<'_, DomainShared>, op: &MmuextOp) -> Result<(), i64> {
    let ram = ctx.ram();
    let dom: &DomainShared = ctx.domain;
    let level = |n: u8| Level::from_number(n).ok_or(err(EINVAL));
    match op.cmd {
        MMUEXT_PIN_L1_TABLE | MMUEXT_PIN_L2_TABLE | MMUEXT_PIN_L3_TABLE | MMUEXT_PIN_L4_TABLE => {
            let l = level((op.cmd - MMUEXT_PIN_L1_TABLE + 1) as u8)?;
            lock(dom).pin(ram, op.mfn(), l).map_err(|e| e.ret())
        }
        MMUEXT_UNPIN_TABLE => lock(dom).unpin(ram, op.mfn()).map_err(|e| e.ret()),
        MMUEXT_NEW_BASEPTR => {
            switch_kernel_base(dom, ram, ctx.pv, op.mfn()).map_err(|e| e.ret())?;
            ctx.reload_cr3 = true;
            Ok(())
        }
        MMUEXT_NEW_USER_BASEPTR => {
            // xen: mfn 0 clears the user base; the old one's reference is dropped.
            let old = ctx.pv.user_cr3 >> 12;
            lock(dom)
                .switch_base(ram, old, op.mfn())
                .map_err(|e| e.ret())?;
            ctx.pv.user_cr3 = op.mfn() << 12;
            Ok(())
        }
        MMUEXT_TLB_FLUSH_LOCAL | MMUEXT_INVLPG_LOCAL => {
            ctx.reload_cr3 = true;
            Ok(())
        }
        MMUEXT_TLB_FLUSH_ALL => {
            ctx.reload_cr3 = true;
            flush_others(ctx, all_vcpus(ctx));
            Ok(())
        }
        MMUEXT_INVLPG_ALL => {
            // xen: only a guest-accessible address is flushed (no error otherwise).
            if addr_ok(op.linear_addr()) {
                ctx.reload_cr3 = true;
                flush_others(ctx, all_vcpus(ctx));
            }
            Ok(())
        }
        MMUEXT_TLB_FLUSH_MULTI | MMUEXT_INVLPG_MULTI => {
            // xen: a bitmap that cannot be read is -EINVAL here.
            let mine = vcpumask_has(ctx, op.vcpumask(), ctx.vcpu_id).map_err(|_| err(EINVAL))?;
            ctx.reload_cr3 |= mine;
            let targets = vcpumask_targets(ctx, op.vcpumask()).map_err(|_| err(EINVAL))?;
            flush_others(ctx, targets);
            Ok(())
        }
        // xen: a domain without cache-flush permission (no I/O resources) gets -EACCES for
        // FLUSH_CACHE and -EINVAL for FLUSH_CACHE_GLOBAL.
        MMUEXT_FLUSH_CACHE => Err(err(EACCES)),
        MMUEXT_FLUSH_CACHE_GLOBAL => Err(err(EINVAL)),
        MMUEXT_SET_LDT => {
            let ents = op.nr_ents();
            let ptr = if ents != 0 { op.linear_addr() } else { 0 };
            // xen: "Bad args to SET_LDT".
            if ptr & (PAGE_SIZE - 1) != 0 || !addr_ok(ptr) || ents > 8192 {
                return Err(err(EINVAL));
            }
            // Xen reloads only when base or size change; kxen looks at the pages again on
            // every call (Xen would map a page that became usable at its first use).
            let kernel_cr3 = ctx.pv.kernel_cr3;
            if !lock(dom).set_ldt(ram, ctx.vcpu_id, ptr, ents, kernel_cr3) {
                debug!(vcpu = ctx.vcpu_id, "no ring-0 layer: LDT not copied");
            }
            ctx.pv.pending |= PENDING_LDT;
            Ok(())
        }
        MMUEXT_CLEAR_PAGE => {
            let mfn = op.mfn();
            let mut mm = lock(dom);
            mm.check_writable(mfn).map_err(|_| err(EINVAL))?;
            mm.note_page_written(mfn);
            write_frame(ram, mfn, &[0u8; PAGE_SIZE as usize])
        }
        MMUEXT_COPY_PAGE => {
            let (dst, src) = (op.mfn(), op.src_mfn());
            let mut page = [0u8; PAGE_SIZE as usize];
            {
                let mut mm = lock(dom);
                if !mm.is_ram(src) {
                    return Err(err(EINVAL));
                }
                mm.check_writable(dst).map_err(|_| err(EINVAL))?;
                mm.note_page_written(dst);
            }
            read_frame(ram, src, &mut page)?;
            write_frame(ram, dst, &page)
        }
        _ => Err(err(ENOSYS)),
    }
}

fn frame_gpa(mfn: u64) -> Result<vm_memory::GuestAddress, i64> {
    mfn.checked_mul(PAGE_SIZE)
        .map(vm_memory::GuestAddress)
        .ok_or(err(EINVAL))
}

fn read_frame(ram: &GuestRam, mfn: u64, buf: &mut [u8]) -> Result<(), i64> {
    use vm_memory::Bytes;
    ram.mem()
        .read_slice(buf, frame_gpa(mfn)?)
        .map_err(|_| err(EINVAL))
}

fn write_frame(ram: &GuestRam, mfn: u64, buf: &[u8]) -> Result<(), i64> {
    use vm_memory::Bytes;
    ram.mem()
        .write_slice(buf, frame_gpa(mfn)?)
        .map_err(|_| err(EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::handler_tests::{Guest, PAGES, VA};
    use vm_memory::Bytes;
    use xen_abi::errno::EPERM;
    use xen_abi::negotiate::LaunchMode;

    fn guest() -> Guest {
        let g = Guest::new(LaunchMode::Unprivileged);
        let mut mm = DomainMm::new(PAGES, &[], Default::default(), &[]);
        mm.start_of_day(&g.ram, 1).unwrap();
        *g.dom.mm.lock().unwrap() = mm;
        g
    }

    fn put_reqs(g: &Guest, reqs: &[MmuUpdate]) {
        for (i, r) in reqs.iter().enumerate() {
            g.put(VA + i as u64 * 16, r);
        }
    }

    #[test]
    fn large_batches_continue_with_the_preempted_count_and_pdone() {
        let mut g = guest();
        let n = 5000u64;
        let reqs: Vec<MmuUpdate> = (0..n)
            .map(|i| MmuUpdate {
                ptr: 50 * PAGE_SIZE + 8,
                val: i,
            })
            .collect();
        put_reqs(&g, &reqs);
        let pdone = VA + n * 16;
        g.put(pdone, &0u32);
        let (rc, replaced) = g.call_full(nr::MMU_UPDATE, [VA, n, pdone, 0x7ff0, 0]);
        assert_eq!((rc, replaced), (0, true));
        assert_eq!(g.get::<u32>(pdone), MMU_BATCH);
        assert_eq!(g.regs.rip, 0x1000, "re-executes the syscall");
        assert_eq!(g.regs.rdi, VA + u64::from(MMU_BATCH) * 16);
        assert_eq!(
            g.regs.rsi,
            (n - u64::from(MMU_BATCH)) | u64::from(MMU_UPDATE_PREEMPTED)
        );
        let a = [g.regs.rdi, g.regs.rsi, g.regs.rdx, g.regs.r10, g.regs.r8];
        let (rc, replaced) = g.call_full(nr::MMU_UPDATE, a);
        assert_eq!((rc, replaced), (0, false));
        assert_eq!(g.get::<u32>(pdone), n as u32);
        let last: u64 = g
            .ram
            .mem()
            .read_obj(vm_memory::GuestAddress(50 * PAGE_SIZE + 8))
            .unwrap();
        assert_eq!(last, n - 1);
    }

    #[test]
    fn a_refused_request_stops_the_batch_with_its_errno_and_count() {
        let mut g = guest();
        let reqs = [
            MmuUpdate {
                ptr: 50 * PAGE_SIZE,
                val: 1,
            },
            // An L1 entry mapping a frame beyond the domain: -EPERM.
            MmuUpdate {
                ptr: 4 * PAGE_SIZE + 100 * 8,
                val: ((PAGES + 10) << 12) | 1,
            },
            MmuUpdate {
                ptr: 50 * PAGE_SIZE + 8,
                val: 2,
            },
        ];
        put_reqs(&g, &reqs);
        let pdone = VA + 0x800;
        assert_eq!(
            g.call(nr::MMU_UPDATE, [VA, 3, pdone, 0x7ff0, 0]),
            -(i64::from(EPERM))
        );
        assert_eq!(g.get::<u32>(pdone), 1);
        // Foreign owners and bad lists.
        assert_eq!(g.call(nr::MMU_UPDATE, [VA, 1, 0, 3, 0]), err(ESRCH));
        assert_eq!(
            g.call(nr::MMU_UPDATE, [0xffff_8080_0000_0000, 1, 0, 0x7ff0, 0]),
            err(EFAULT)
        );
    }

    #[test]
    fn new_baseptr_switches_kernel_cr3_and_asks_for_a_reload() {
        let mut g = guest();
        let op = MmuextOp {
            cmd: MMUEXT_NEW_BASEPTR,
            _pad: 0,
            arg1: 1,
            arg2: 0,
        };
        g.put(VA, &op);
        g.pv.kernel_cr3 = PAGE_SIZE;
        let mut ctx = HypercallCtx::new(0, &g.ram, PAGE_SIZE, &mut g.regs, &mut g.pv, &g.dom);
        let rc = mmuext_op(
            &mut ctx,
            &HypercallArgs {
                nr: nr::MMUEXT_OP,
                a: [VA, 1, 0, 0x7ff0, 0],
            },
        );
        assert_eq!(rc, 0);
        assert!(ctx.reload_cr3);
        // Data frame as a base: -EINVAL, nothing changed.
        let bad = MmuextOp { arg1: 20, ..op };
        g.put(VA, &bad);
        assert_eq!(g.call(nr::MMUEXT_OP, [VA, 1, 0, 0x7ff0, 0]), err(EINVAL));
        assert_eq!(g.pv.kernel_cr3, PAGE_SIZE);
    }
}
