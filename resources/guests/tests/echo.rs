//! echo: keyboard input reaches the guest. It reads one line of console input and prints it
//! back as `KXEN-TEST: VALUE echo=<line>`: an unprivileged guest from its console ring (as
//! Linux's hvc0 does for a domU), a privileged one through CONSOLEIO_read (as dom0 does).
//! Between polls it yields, which gives kxen an exit to deliver the input.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::sync::atomic::{fence, Ordering};

use kit::abi::*;
use kit::hypercall as hc;

xen_notes!(features = "writable_page_tables");

/// Polls before giving up (each one is a hypercall round trip).
const MAX_POLLS: u32 = 200_000;

// xen: public/io/console.h, struct xencons_interface
const IN_SIZE: u32 = 1024;
const IN_CONS: usize = 3072;
const IN_PROD: usize = 3076;

fn yield_cpu() {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe { hc::sched_op(SCHEDOP_YIELD, 0) };
}

/// One byte from the console ring at `ring`, if any.
fn ring_byte(ring: *mut u8) -> Option<u8> {
    // SAFETY: `ring` is the console page inside the initial mapping; the indices are u32s at
    // their xencons_interface offsets and the data is read after the producer index.
    unsafe {
        let cons = core::ptr::read_volatile(ring.add(IN_CONS) as *const u32);
        let prod = core::ptr::read_volatile(ring.add(IN_PROD) as *const u32);
        if cons == prod {
            return None;
        }
        fence(Ordering::SeqCst);
        let b = core::ptr::read_volatile(ring.add((cons % IN_SIZE) as usize));
        fence(Ordering::SeqCst);
        core::ptr::write_volatile(ring.add(IN_CONS) as *mut u32, cons.wrapping_add(1));
        Some(b)
    }
}

fn read_byte(si: &StartInfo) -> Option<u8> {
    if si.flags & SIF_PRIVILEGED != 0 {
        let mut b = [0u8; 1];
        let n = hc::console_io(CONSOLEIO_READ, 1, b.as_mut_ptr() as u64);
        (n == 1).then_some(b[0])
    } else {
        ring_byte((VIRT_BASE + si.console_mfn * PAGE_SIZE) as *mut u8)
    }
}

fn kmain(si: &'static StartInfo) {
    println!("echo: type a line");
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut polls = 0;
    while polls < MAX_POLLS {
        match read_byte(si) {
            Some(b'\n') | Some(b'\r') => break,
            Some(b) if len < line.len() => {
                line[len] = b;
                len += 1;
            }
            Some(_) => {}
            None => {
                polls += 1;
                yield_cpu();
            }
        }
    }
    check!("input_arrived", polls < MAX_POLLS, "no newline after {} polls", polls);
    let text = core::str::from_utf8(&line[..len]).unwrap_or("<not utf-8>");
    value!("echo", "{}", text);
}
