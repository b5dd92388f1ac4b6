//! `console_io` (hypercall 18).
// xen: drivers/char/console.c, do_console_io and guest_console_write.
//
// Release Xen lets only the hardware/console domain use console_io (XSM_PRIV, -EPERM for
// others); debug builds (CONFIG_VERBOSE_DEBUG) allow CONSOLEIO_write to everyone. kxen acts
// as the console domain's hypervisor for every guest: both commands are always allowed.

use xen_abi::console::{CONSOLEIO_READ, CONSOLEIO_WRITE};
use xen_abi::errno::E2BIG;

use super::{err, uint, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;

/// Bytes copied from the guest per chunk (Xen's `kbuf[128]` minus the NUL).
pub const WRITE_CHUNK: usize = 127;
/// Chunks written per call before the call becomes a continuation (about 16 KiB).
pub const WRITE_BATCH_CHUNKS: u32 = 128;

/// `HYPERVISOR_console_io(cmd, count, buffer)`.
pub fn console_io(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    // `unsigned int cmd, unsigned int count` in Xen's prototype.
    let (cmd, count, buf) = (uint(a.a[0]), uint(a.a[1]), a.a[2]);
    match cmd {
        CONSOLEIO_WRITE => write(ctx, count, buf),
        CONSOLEIO_READ => read(ctx, count, buf),
        _ => -ENOSYS,
    }
}

/// Copy `count` bytes in chunks, writing each chunk out before reading the next (so output
/// before a bad page is still printed, as in Xen); `-EFAULT` at the first bad chunk, else 0.
fn write(ctx: &mut HypercallCtx<'_, DomainShared>, count: u32, buf: u64) -> i64 {
    let mut left = count as usize;
    let mut va = buf;
    let mut chunk = [0u8; WRITE_CHUNK];
    let mut chunks = 0u32;
    while left > 0 {
        if chunks == WRITE_BATCH_CHUNKS && !ctx.in_multicall {
            // Xen preempts long writes with a continuation; so does kxen, after a batch.
            ctx.continuation(
                xen_abi::hypercall::CONSOLE_IO,
                [u64::from(CONSOLEIO_WRITE), left as u64, va, 0, 0],
            );
            return 0;
        }
        chunks += 1;
        let n = left.min(WRITE_CHUNK);
        if let Err(e) = ctx.copy_from_guest(va, &mut chunk[..n]) {
            return e;
        }
        ctx.domain.console_write(&chunk[..n]);
        left -= n;
        va = va.wrapping_add(n as u64);
    }
    0
}

/// Hand up to `count` bytes of pending input to the guest; returns the number copied.
fn read(ctx: &HypercallCtx<'_, DomainShared>, count: u32, buf: u64) -> i64 {
    // The result is a count or -errno, so counts that look negative are refused.
    if (count as i32) < 0 {
        return err(E2BIG);
    }
    let mut con = match ctx.domain.console.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    let n = con.input.len().min(count as usize);
    if n == 0 {
        return 0;
    }
    let bytes: Vec<u8> = con.input.iter().take(n).copied().collect();
    if let Err(e) = ctx.copy_to_guest(buf, &bytes) {
        return e;
    }
    con.input.drain(..n);
    n as i64
}
