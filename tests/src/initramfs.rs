//! A minimal initramfs writer: the "newc" cpio format the Linux kernel unpacks
//! (Documentation/driver-api/early-userspace/buffer-format.rst), uncompressed.
//!
//! Used to build the busybox initramfs that the Debian-kernel boot uses, without needing a
//! `cpio` binary on the machine.

/// One file-system entry.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    /// A directory.
    Dir(&'a str),
    /// A regular file with its mode bits (e.g. 0o755) and contents.
    File(&'a str, u32, &'a [u8]),
    /// A symbolic link: path, target.
    Symlink(&'a str, &'a str),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        namesize as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// The archive for `entries`, with the trailer.
pub fn newc(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match *e {
            Entry::Dir(p) => header(&mut out, ino, S_IFDIR | 0o755, p, &[]),
            Entry::File(p, mode, data) => header(&mut out, ino, S_IFREG | mode, p, data),
            Entry::Symlink(p, target) => {
                header(&mut out, ino, S_IFLNK | 0o777, p, target.as_bytes())
            }
        }
    }
    header(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

/// A busybox initramfs whose `/init` runs `init_script` under `/bin/sh`.
pub fn busybox_initramfs(busybox: &[u8], init_script: &str) -> Vec<u8> {
    let init = format!("#!/bin/sh\n{init_script}");
    newc(&[
        Entry::Dir("bin"),
        Entry::Dir("dev"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("tmp"),
        Entry::File("bin/busybox", 0o755, busybox),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::File("init", 0o755, init.as_bytes()),
    ])
}

/// The `/init` of the interactive test image: mounts the pseudo file systems, installs the
/// busybox applets and gives a shell on the console.
pub const SHELL_INIT: &str = "\
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo KXEN-INITRAMFS: userspace reached
exec /bin/sh
";

/// The `/init` of the boot benchmark (scripts/bench-boot): print [`BENCH_MARKER`] as soon as
/// userspace runs, then power off at once (no applet install, no mounts).
pub const POWEROFF_INIT: &str = "\
echo KXEN-BOOTBENCH: userspace reached
exec /bin/busybox poweroff -f
";

/// The line [`POWEROFF_INIT`] prints first.
pub const BENCH_MARKER: &str = "KXEN-BOOTBENCH: userspace reached";

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&h[6 + i * 8..6 + (i + 1) * 8]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn newc_headers_carry_sizes_names_and_alignment() {
        let a = newc(&[Entry::File("init", 0o755, b"hello")]);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(field(&a, 1), S_IFREG | 0o755);
        assert_eq!(field(&a, 6), 5, "filesize");
        assert_eq!(field(&a, 11), 5, "namesize includes the NUL");
        // header 110 bytes + "init\0" = 115 -> padded to 116, then data
        assert_eq!(&a[116..121], b"hello");
        // next header (trailer) starts 4-aligned
        assert_eq!(&a[124..130], b"070701");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        assert!(a.len().is_multiple_of(4));
    }

    #[test]
    fn busybox_image_has_init_and_shell_link() {
        let a = busybox_initramfs(b"\x7fELF-fake", "echo hi\n");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("bin/busybox"));
        assert!(text.contains("#!/bin/sh\necho hi\n"));
        assert!(text.contains("bin/sh\0"));
    }

    #[test]
    fn poweroff_init_prints_the_marker_then_powers_off() {
        let m = POWEROFF_INIT.find(BENCH_MARKER).expect("marker");
        let p = POWEROFF_INIT.find("poweroff -f").expect("poweroff");
        assert!(m < p);
    }
}
