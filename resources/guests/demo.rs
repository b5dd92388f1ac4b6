//! kxen demo guest: a tiny Xen PV kernel that shows what the VMM hands over and checks a
//! few hypercalls, then powers off. Embedded in the kxen binary (vmm/src/demo_image.rs).

#![no_std]
#![no_main]

#[macro_use]
#[path = "kit/mod.rs"]
mod kit;

use kit::abi::*;
use kit::console::Escaped;
use kit::hypercall as hc;
use kit::pure;

xen_notes!(features = "writable_page_tables|dom0", supported = 0x801);

fn kmain(si: &'static StartInfo) {
    println!("kxen demo guest");
    let magic = pure::c_str(&si.magic).unwrap_or(&si.magic);
    println!(
        "start_info: magic \"{}\" nr_pages {}",
        Escaped(magic),
        si.nr_pages
    );
    let cmdline = pure::c_str(&si.cmd_line).unwrap_or(&si.cmd_line);
    println!("command line: \"{}\"", Escaped(cmdline));

    let version = hc::xen_version_number();
    let (major, minor) = pure::split_version(version);
    let mut extra = [0u8; 16];
    hc::xen_version(XENVER_EXTRAVERSION, &mut extra);
    println!(
        "xen version {}.{}{}",
        major,
        minor,
        Escaped(pure::c_str(&extra).unwrap_or(&extra))
    );
    let mut caps = [0u8; 1024];
    hc::xen_version(XENVER_CAPABILITIES, &mut caps);
    println!(
        "capabilities: {}",
        Escaped(pure::c_str(&caps).unwrap_or(&caps))
    );

    match hc::get_features(0) {
        Ok(submap) => {
            print!("features submap 0: {:#010x}", submap);
            for bit in 0..32 {
                if submap & (1 << bit) != 0 {
                    match pure::feature_name(bit) {
                        Some(n) => print!(" {}", n),
                        None => print!(" bit{}", bit),
                    }
                }
            }
            println!();
        }
        Err(e) => println!("features submap 0: error {}", e),
    }

    // Hypercall self-check.
    let mut ok = true;
    if version <= 0 {
        println!("demo: FAILED: XENVER_version returned {}", version);
        ok = false;
    }
    // SAFETY: hypercall 60 does not exist; it takes no arguments.
    let unknown = unsafe { hc::hypercall0(60) };
    if unknown != -ENOSYS {
        println!(
            "demo: FAILED: unknown hypercall 60 returned {}, expected -38",
            unknown
        );
        ok = false;
    }
    // Xen's CONSOLEIO_write returns 0 on success (drivers/char/console.c), not the length.
    let written = hc::console_write(b"demo: console_io write check\n");
    if written != 0 {
        println!(
            "demo: FAILED: CONSOLEIO_write returned {}, expected 0",
            written
        );
        ok = false;
    }
    if ok {
        println!("demo: all checks passed");
        kit::console::flush();
        hc::shutdown(SHUTDOWN_POWEROFF);
        panic!("SCHEDOP_shutdown(poweroff) returned");
    } else {
        kit::console::flush();
        hc::shutdown(SHUTDOWN_CRASH);
        panic!("SCHEDOP_shutdown(crash) returned");
    }
}
