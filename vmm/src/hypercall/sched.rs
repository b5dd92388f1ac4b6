//! `sched_op` (hypercall 29) and `sched_op_compat` (hypercall 6).
// xen: common/sched/core.c, do_sched_op, do_sched_op_compat, domain_watchdog;
// common/domain.c, domain_shutdown.

use std::time::Duration;

use tracing::{debug, info};
use xen_abi::errno::{EINVAL, EPERM};
use xen_abi::sched::*;

use super::{err, uint, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;

/// How long `SCHEDOP_block` gives up the thread while kxen has no events to wait for.
pub const BLOCK_NAP: Duration = Duration::from_millis(1);

/// `HYPERVISOR_sched_op(cmd, arg)`.
pub fn sched_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    // `int cmd` in Xen's prototype.
    let (cmd, arg) = (uint(a.a[0]), a.a[1]);
    match cmd {
        SCHEDOP_YIELD => {
            std::thread::yield_now();
            0
        }
        SCHEDOP_BLOCK => block(ctx),
        SCHEDOP_SHUTDOWN => match ctx.read_pod::<SchedShutdown>(arg) {
            // The reason is truncated to u8, as Xen does.
            Ok(s) => {
                ctx.domain.shutdown_with_code(s.reason as u8);
                0
            }
            Err(e) => e,
        },
        SCHEDOP_SHUTDOWN_CODE => match ctx.read_pod::<SchedShutdown>(arg) {
            Ok(s) => {
                info!(code = s.reason as u8, "SCHEDOP_shutdown_code");
                ctx.domain.set_shutdown_code(s.reason as u8);
                0
            }
            Err(e) => e,
        },
        SCHEDOP_WATCHDOG => match ctx.read_pod::<SchedWatchdog>(arg) {
            Ok(w) => {
                debug!(
                    id = w.id,
                    timeout = w.timeout,
                    "SCHEDOP_watchdog (never fires)"
                );
                match ctx.domain.watchdog(w.id, w.timeout) {
                    Ok(v) => i64::from(v),
                    Err(e) => err(e),
                }
            }
            Err(e) => e,
        },
        SCHEDOP_REMOTE_SHUTDOWN => match ctx.read_pod::<SchedRemoteShutdown>(arg) {
            // kxen runs one domain and no device model: no other domain to shut down, and
            // the domain itself may not (XSM_DM_PRIV) unless privileged.
            Ok(_) if !ctx.domain.privileged() => err(EPERM),
            Ok(_) => -ENOSYS,
            Err(e) => e,
        },
        SCHEDOP_PIN_OVERRIDE => match ctx.read_pod::<SchedPinOverride>(arg) {
            // Hardware domain only.
            Ok(_) if !ctx.domain.privileged() => err(EPERM),
            Ok(_) => err(EINVAL),
            Err(e) => e,
        },
        SCHEDOP_POLL => match ctx.read_pod::<SchedPoll>(arg) {
            Ok(p) => poll(ctx, &p),
            Err(e) => e,
        },
        _ => -ENOSYS,
    }
}

/// `HYPERVISOR_set_timer_op(timeout)`: the vCPU's single-shot timer at absolute system time
/// `timeout` ns, 0 cancels; always 0.
// xen: common/sched/core.c, do_set_timer_op
pub fn set_timer_op(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    match ctx.domain.time() {
        Some(t) => t.set_timer_op(ctx.vcpu_id, a.a[0]),
        None => -ENOSYS,
    }
}

/// `HYPERVISOR_sched_op_compat(cmd, arg)`: yield, block, shutdown with the reason in `arg`.
pub fn sched_op_compat(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    match uint(a.a[0]) {
        SCHEDOP_YIELD => {
            std::thread::yield_now();
            0
        }
        SCHEDOP_BLOCK => block(ctx),
        SCHEDOP_SHUTDOWN => {
            ctx.domain.shutdown_with_code(a.a[1] as u8);
            0
        }
        _ => -ENOSYS,
    }
}

/// `vcpu_block_enable_events`: unmask events (upcall_mask = 0), then block until an event
/// needs delivery (or a kick, or a stop). The upcall is delivered by the run loop on return.
// xen: common/sched/core.c, vcpu_block_enable_events / vcpu_block
fn block(ctx: &mut HypercallCtx<'_, DomainShared>) -> i64 {
    ctx.domain.set_upcall_mask(ctx.ram(), ctx.vcpu_id, 0);
    if ctx.domain.events().is_none() {
        std::thread::sleep(BLOCK_NAP);
        return 0;
    }
    let id = ctx.vcpu_id;
    // At most until the vCPU's own timer is due (its VIRQ_TIMER is an event).
    let virt = *ctx.guest();
    let deadline = ctx
        .domain
        .time()
        .and_then(|t| {
            let d = t.block(id);
            t.write_runstate_area(ctx.ram(), virt, id);
            d
        })
        .and_then(|d| std::time::Instant::now().checked_add(d));
    let r = ctx.domain.block_vcpu(ctx.ram(), id, None, deadline);
    if let Some(t) = ctx.domain.time() {
        if t.wake(id) {
            ctx.domain
                .raise_virq(id, xen_abi::event_channel::VIRQ_TIMER, Some(id));
        }
        t.write_runstate_area(ctx.ram(), virt, id);
        // xen: the time record is refreshed when a vCPU is scheduled in.
        ctx.domain.publish_vcpu_time(ctx.ram(), Some(virt), id);
    }
    match r {
        Ok(()) => 0,
        Err(e) => err(u32::from(e)),
    }
}

/// `SCHEDOP_poll`: block until one of the ports is pending (any event when the list is
/// empty), an upcall needs delivery, or the timeout. The event mask is left alone.
// xen: common/sched/core.c, do_poll
fn poll(ctx: &mut HypercallCtx<'_, DomainShared>, p: &SchedPoll) -> i64 {
    use kxen_devices::evtchn::MAX_POLL_PORTS;
    if ctx.domain.events().is_none() {
        return -ENOSYS;
    }
    let n = p.nr_ports as usize;
    if n > MAX_POLL_PORTS {
        return err(EINVAL);
    }
    let mut raw = [0u8; MAX_POLL_PORTS * 4];
    let bytes = &mut raw[..n * 4];
    if let Err(e) = ctx.copy_from_guest(p.ports, bytes) {
        return e;
    }
    let mut ports = [0u32; MAX_POLL_PORTS];
    for (d, c) in ports.iter_mut().zip(bytes.chunks_exact(4)) {
        *d = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    // xen: do_poll, the timeout is an absolute system time in ns (0 = none); one already
    // past ends the poll at once. Without a domain clock it is taken as relative.
    let deadline = (p.timeout != 0)
        .then(|| {
            let left = match ctx.domain.time() {
                Some(t) => p.timeout.saturating_sub(t.now()),
                None => p.timeout,
            };
            std::time::Instant::now().checked_add(Duration::from_nanos(left))
        })
        .flatten();
    // xen: do_poll blocks the vCPU like SCHEDOP_block (its runstate says so meanwhile).
    let (id, virt) = (ctx.vcpu_id, *ctx.guest());
    let mark = |state| {
        if let Some(t) = ctx.domain.time() {
            t.set_runstate(ctx.ram(), Some(virt), id, state, false);
        }
    };
    mark(crate::time::RunState::Blocked);
    let r = ctx
        .domain
        .block_vcpu(ctx.ram(), id, Some(&ports[..n]), deadline);
    mark(crate::time::RunState::Running);
    match r {
        Ok(()) => 0,
        Err(e) => err(u32::from(e)),
    }
}
