//! Builds every kit test guest (resources/guests/tests/*.rs) into OUT_DIR and generates
//! OUT_DIR/guests.rs with `GUESTS: &[(&str, &[u8])]`, included by src/lib.rs.

include!("../resources/guests/build_support.rs");

/// Every test guest: (binary name, source under resources/guests/). A source built more
/// than once selects its variant with `#[cfg(kxen_guest = "<name>")]`.
const GUESTS: &[GuestSpec] = &[
    GuestSpec {
        name: "startinfo",
        source: "tests/startinfo.rs",
    },
    GuestSpec {
        name: "features_dom0",
        source: "tests/features.rs",
    },
    GuestSpec {
        name: "features_none",
        source: "tests/features.rs",
    },
    GuestSpec {
        name: "features_domu_only",
        source: "tests/features.rs",
    },
    GuestSpec {
        name: "features_unpriv12",
        source: "tests/features.rs",
    },
    GuestSpec {
        name: "features_requires_dom0",
        source: "tests/features.rs",
    },
    GuestSpec {
        name: "grant",
        source: "tests/grant.rs",
    },
    GuestSpec {
        name: "echo",
        source: "tests/echo.rs",
    },
    GuestSpec {
        name: "privop",
        source: "tests/privop.rs",
    },
    GuestSpec {
        name: "hostile",
        source: "tests/hostile.rs",
    },
    GuestSpec {
        name: "traps",
        source: "tests/traps.rs",
    },
    GuestSpec {
        name: "mmu",
        source: "tests/mmu.rs",
    },
    GuestSpec {
        name: "cpu",
        source: "tests/cpu.rs",
    },
    GuestSpec {
        name: "cpu_nouser",
        source: "tests/cpu.rs",
    },
    GuestSpec {
        name: "shutdown_poweroff",
        source: "tests/shutdown.rs",
    },
    GuestSpec {
        name: "shutdown_reboot",
        source: "tests/shutdown.rs",
    },
    GuestSpec {
        name: "shutdown_crash",
        source: "tests/shutdown.rs",
    },
    GuestSpec {
        name: "shutdown_suspend",
        source: "tests/shutdown.rs",
    },
    GuestSpec {
        name: "events",
        source: "tests/events.rs",
    },
    GuestSpec {
        name: "events_masked",
        source: "tests/events.rs",
    },
    GuestSpec {
        name: "events_spin",
        source: "tests/events.rs",
    },
    GuestSpec {
        name: "timer",
        source: "tests/timer.rs",
    },
    GuestSpec {
        name: "smp_2",
        source: "tests/smp.rs",
    },
    GuestSpec {
        name: "smp_4",
        source: "tests/smp.rs",
    },
    GuestSpec {
        name: "evstress",
        source: "tests/evstress.rs",
    },
];

fn main() {
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let built = build_guests(&out_dir, GUESTS);
    let mut src = String::from(
        "/// Every kit test guest built by tests/build.rs: (name, ELF image).\n\
         pub const GUESTS: &[(&str, &[u8])] = &[\n",
    );
    for (spec, path) in GUESTS.iter().zip(&built) {
        src.push_str(&format!(
            "    ({:?}, include_bytes!({:?})),\n",
            spec.name,
            path.display().to_string()
        ));
    }
    src.push_str("];\n");
    std::fs::write(out_dir.join("guests.rs"), src).expect("writing OUT_DIR/guests.rs");
}
