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
        // SCHEDOP_poll needs event channels: not implemented yet.
        _ => -ENOSYS,
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

/// `vcpu_block_enable_events`: unmask events (upcall_mask = 0), then block until one is
/// pending. kxen has no event sources yet, so it naps briefly and returns.
fn block(ctx: &mut HypercallCtx<'_, DomainShared>) -> i64 {
    ctx.domain.set_upcall_mask(ctx.ram(), ctx.vcpu_id, 0);
    std::thread::sleep(BLOCK_NAP);
    0
}
