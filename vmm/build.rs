//! Builds the demo guest (resources/guests/demo.rs) into OUT_DIR/demo.elf for
//! `kxen::demo_image::DEMO_GUEST`, and the bench guest (resources/guests/bench.rs) into
//! OUT_DIR/bench.elf for `kxen::bench::BENCH_GUEST`.

include!("../resources/guests/build_support.rs");

fn main() {
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    build_guests(
        &out_dir,
        &[
            GuestSpec {
                name: "demo",
                source: "demo.rs",
            },
            GuestSpec {
                name: "bench",
                source: "bench.rs",
            },
        ],
    );
}
