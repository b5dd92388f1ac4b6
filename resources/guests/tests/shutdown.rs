//! shutdown_{poweroff,reboot,crash,suspend}: one binary per SCHEDOP_shutdown reason. Each
//! prints its reason and DONE, then issues the shutdown; the host test checks the exit.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use kit::abi::*;
use kit::hypercall as hc;

xen_notes!(features = "writable_page_tables");

#[cfg(kxen_guest = "shutdown_poweroff")]
const REASON: (u32, &str) = (SHUTDOWN_POWEROFF, "poweroff");
#[cfg(kxen_guest = "shutdown_reboot")]
const REASON: (u32, &str) = (SHUTDOWN_REBOOT, "reboot");
#[cfg(kxen_guest = "shutdown_crash")]
const REASON: (u32, &str) = (SHUTDOWN_CRASH, "crash");
#[cfg(kxen_guest = "shutdown_suspend")]
const REASON: (u32, &str) = (SHUTDOWN_SUSPEND, "suspend");

fn kmain(si: &'static StartInfo) {
    value!("shutdown", "{}", REASON.1);
    kit::test::done_line();
    let rc = if REASON.0 == SHUTDOWN_SUSPEND {
        // The start_info MFN travels in the third argument (identity p2m: pfn == mfn).
        hc::suspend((si as *const StartInfo as u64 - VIRT_BASE) / PAGE_SIZE)
    } else {
        hc::shutdown(REASON.0)
    };
    if REASON.0 == SHUTDOWN_SUSPEND {
        // A suspend may return: 1 = cancelled (resumed in the same domain), 0 = resumed.
        value!("suspend_returned", "{}", rc);
        hc::shutdown(SHUTDOWN_POWEROFF);
    } else {
        println!(
            "KXEN-TEST: FAIL shutdown_{}: SCHEDOP_shutdown returned {}",
            REASON.1, rc
        );
        hc::shutdown(SHUTDOWN_CRASH);
    }
    kit::rt::halt_forever()
}
