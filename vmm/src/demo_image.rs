//! The demo guest embedded in the kxen binary: a small Xen PV kernel built from
//! resources/guests/demo.rs by vmm/build.rs. It prints what the VMM handed over (start_info,
//! XENVER_* answers, the feature submap), checks a few hypercalls and powers off.

/// The demo guest's ELF image (x86_64, Xen notes, linked at 0xffffffff80200000).
pub static DEMO_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));

#[cfg(test)]
mod tests {
    use super::DEMO_GUEST;

    #[test]
    fn demo_guest_is_an_x86_64_executable_elf() {
        assert_eq!(&DEMO_GUEST[..4], b"\x7fELF");
        assert_eq!(DEMO_GUEST[4], 2, "ELFCLASS64");
        assert_eq!(
            u16::from_le_bytes([DEMO_GUEST[16], DEMO_GUEST[17]]),
            2,
            "ET_EXEC"
        );
        assert_eq!(
            u16::from_le_bytes([DEMO_GUEST[18], DEMO_GUEST[19]]),
            62,
            "EM_X86_64"
        );
        let entry = u64::from_le_bytes(DEMO_GUEST[24..32].try_into().unwrap());
        assert_eq!(entry, 0xffff_ffff_8020_0000);
    }
}
