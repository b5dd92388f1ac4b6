//! `event_channel_op` (32), `event_channel_op_compat` (16) and `vcpu_op` (24:
//! `VCPUOP_register_vcpu_info` and the time ops of `crate::time`).
// xen: common/event_channel.c, do_event_channel_op; common/compat.c,
// do_event_channel_op_compat; common/domain.c, do_vcpu_op.

use xen_abi::errno::Errno;
use xen_abi::event_channel as ec;

use super::{err, uint, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;

/// `VCPUOP_register_vcpu_info` (public/vcpu.h).
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;

/// Largest event-channel argument struct (`evtchn_status`, 24 bytes; FIFO ops are refused
/// before their argument is read).
const MAX_ARG: usize = 24;

fn errno(e: Errno) -> i64 {
    err(u32::from(e))
}

/// Whether a successful `cmd` writes results back into its argument.
fn has_output(cmd: u32) -> bool {
    matches!(
        cmd,
        ec::EVTCHNOP_ALLOC_UNBOUND
            | ec::EVTCHNOP_BIND_INTERDOMAIN
            | ec::EVTCHNOP_BIND_VIRQ
            | ec::EVTCHNOP_BIND_IPI
            | ec::EVTCHNOP_BIND_PIRQ
            | ec::EVTCHNOP_STATUS
    )
}

/// One event channel operation with its argument struct at guest-virtual `va`.
fn op(ctx: &mut HypercallCtx<'_, DomainShared>, cmd: u32, va: u64) -> i64 {
    let Some(ev) = ctx.domain.events() else {
        return -ENOSYS;
    };
    let size = match cmd {
        // No FIFO ABI: Linux then uses 2-level.
        ec::EVTCHNOP_INIT_CONTROL | ec::EVTCHNOP_EXPAND_ARRAY | ec::EVTCHNOP_SET_PRIORITY => {
            return -ENOSYS
        }
        _ => match ec::arg_size(cmd) {
            Some(n) if n <= MAX_ARG => n,
            _ => return -ENOSYS,
        },
    };
    let mut buf = [0u8; MAX_ARG];
    let arg = &mut buf[..size];
    if let Err(e) = ctx.copy_from_guest(va, arg) {
        return e;
    }
    let view = ctx.domain.shared_info_view(ctx.ram());
    let port_of = |arg: &[u8]| {
        arg.get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Raising ops only need the read lock; the guard is dropped before acting on effects.
    let res = match (cmd, port_of(arg)) {
        (ec::EVTCHNOP_SEND, Some(p)) => ev.table().send(p, &view),
        (ec::EVTCHNOP_UNMASK, Some(p)) => ev.table().unmask(p, &view),
        _ => ev
            .table_mut()
            .do_event_channel_op(cmd, arg, ctx.vcpu_id, &view),
    };
    match res {
        Ok(fx) => {
            ev.apply(&fx, Some(ctx.vcpu_id));
            if has_output(cmd) {
                if let Err(e) = ctx.copy_to_guest(va, arg) {
                    return e;
                }
            }
            0
        }
        Err(e) => errno(e),
    }
}

/// `HYPERVISOR_event_channel_op(cmd, arg)`.
pub fn event_channel_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    op(ctx, uint(a.a[0]), a.a[1])
}

/// `HYPERVISOR_event_channel_op_compat(op)`: `struct evtchn_op { uint32_t cmd; union u; }`
/// (28 bytes, read whole first as Xen does; the union, 4-byte aligned since no member has a
/// 64-bit field, at offset 4). Only the ops of the union are accepted (`-ENOSYS` otherwise,
/// `EVTCHNOP_reset` and the FIFO ops included).
// xen: common/compat.c, do_event_channel_op_compat
pub fn event_channel_op_compat(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let mut whole = [0u8; 28];
    if let Err(e) = ctx.copy_from_guest(a.a[0], &mut whole) {
        return e;
    }
    let cmd = u32::from_le_bytes([whole[0], whole[1], whole[2], whole[3]]);
    match cmd {
        ec::EVTCHNOP_BIND_INTERDOMAIN
        | ec::EVTCHNOP_BIND_VIRQ
        | ec::EVTCHNOP_BIND_PIRQ
        | ec::EVTCHNOP_CLOSE
        | ec::EVTCHNOP_SEND
        | ec::EVTCHNOP_STATUS
        | ec::EVTCHNOP_ALLOC_UNBOUND
        | ec::EVTCHNOP_BIND_IPI
        | ec::EVTCHNOP_BIND_VCPU
        | ec::EVTCHNOP_UNMASK => op(ctx, cmd, a.a[0].wrapping_add(4)),
        _ => -ENOSYS,
    }
}

/// `struct vcpu_register_vcpu_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RegisterVcpuInfo {
    mfn: u64,
    offset: u32,
    rsvd: u32,
}
// SAFETY: plain integers, no padding (16 bytes), any bit pattern is valid.
unsafe impl vm_memory::ByteValued for RegisterVcpuInfo {}

/// `HYPERVISOR_vcpu_op(cmd, vcpuid, arg)`: `-ENOENT` for a vCPU that does not exist (checked
/// first, as Xen does), then `VCPUOP_register_vcpu_info`, then the timer/runstate/time-area
/// ops of `crate::time`; other commands `-ENOSYS`.
// xen: common/domain.c, do_vcpu_op / common_vcpu_op
pub fn vcpu_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    let (cmd, vcpu) = (uint(a.a[0]), uint(a.a[1]));
    let nr = ctx.domain.events().map_or(1, |e| e.nr_vcpus());
    if vcpu >= nr {
        return errno(Errno::ENOENT);
    }
    match cmd {
        VCPUOP_REGISTER_VCPU_INFO => {
            let r: RegisterVcpuInfo = match ctx.read_obj(a.a[2]) {
                Ok(r) => r,
                Err(e) => return e,
            };
            match ctx
                .domain
                .register_vcpu_info(ctx.ram(), vcpu, r.mfn, r.offset)
            {
                Ok(()) => 0,
                Err(e) => errno(e),
            }
        }
        crate::smp::VCPUOP_INITIALISE
        | crate::smp::VCPUOP_UP
        | crate::smp::VCPUOP_DOWN
        | crate::smp::VCPUOP_IS_UP => smp_vcpu_op(ctx, cmd, vcpu, a.a[2]),
        _ => time_vcpu_op(ctx, cmd, vcpu, a.a[2]).unwrap_or(-ENOSYS),
    }
}

/// `VCPUOP_initialise` / `up` / `down` / `is_up` on `target` (already checked to exist).
// xen: common/domain.c, do_vcpu_op
fn smp_vcpu_op(ctx: &mut HypercallCtx<'_, DomainShared>, cmd: u32, target: u32, arg: u64) -> i64 {
    use crate::smp::{self, VCPU_GUEST_CONTEXT_SIZE};
    let Some(s) = ctx.domain.smp() else {
        return -ENOSYS;
    };
    let r = match cmd {
        smp::VCPUOP_INITIALISE => {
            let mut b = Box::new([0u8; VCPU_GUEST_CONTEXT_SIZE]);
            if let Err(e) = ctx.copy_from_guest(arg, &mut b[..]) {
                return e;
            }
            // xen: vm_assist is domain-wide (the context's field only sets it for vCPU 0);
            // kxen keeps it per vCPU, so the new vCPU inherits the caller's.
            let vm_assist = ctx.pv.vm_assist;
            smp::parse_context(&b, ctx.domain.nr_pages)
                .and_then(|c| s.initialise(target, smp::InitContext { vm_assist, ..c }))
        }
        smp::VCPUOP_UP => s.up(target),
        smp::VCPUOP_DOWN => {
            let r = s.down(target);
            // The target parks at its next exit (the caller at the end of this hypercall).
            if let Some(ev) = ctx.domain.events() {
                ev.kick(target, Some(ctx.vcpu_id));
            }
            r
        }
        smp::VCPUOP_IS_UP => return s.is_up(target).map_or_else(errno, i64::from),
        _ => return -ENOSYS,
    };
    match r {
        Ok(()) => 0,
        Err(e) => errno(e),
    }
}

/// The timer, runstate and time-area sub-ops of `vcpu_op`, through the domain's time
/// ([`crate::time::DomainTime::vcpu_op`]); `None` for any other command.
fn time_vcpu_op(
    ctx: &mut HypercallCtx<'_, DomainShared>,
    cmd: u32,
    target: u32,
    arg: u64,
) -> Option<i64> {
    let time = ctx.domain.time()?;
    let call = crate::time::VcpuOpCall {
        caller: ctx.vcpu_id,
        cmd,
        target,
        arg,
        runstate_update_flag: ctx
            .pv
            .vm_assist(xen_abi::mmu::VMASST_TYPE_RUNSTATE_UPDATE_FLAG),
    };
    let virt = *ctx.guest();
    let r = time.vcpu_op(ctx.ram(), virt, call)?;
    if r == 0 && cmd == crate::time::VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA {
        // DomainTime filled the legacy slot; the vcpu_info may have moved.
        ctx.domain.publish_vcpu_time(ctx.ram(), Some(virt), target);
    }
    Some(r)
}
