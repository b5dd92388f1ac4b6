//! Console output over CONSOLEIO_write, one hypercall per line.

use super::pure::LineBuf;
use core::fmt::{self, Write};

const LINE: usize = 256;

static BUF: LineBufCell = LineBufCell(core::cell::UnsafeCell::new(LineBuf::new()));

struct LineBufCell(core::cell::UnsafeCell<LineBuf<LINE>>);
// SAFETY: single vCPU, events masked (see rt::Global); the buffer is only touched through
// `with_buf`, which a synchronous trap could interrupt only between whole pushes.
unsafe impl Sync for LineBufCell {}

fn with_buf(f: impl FnOnce(&mut LineBuf<LINE>)) {
    // SAFETY: see the Sync impl; no other reference to the buffer is live during `f`.
    f(unsafe { &mut *BUF.0.get() })
}

fn emit(line: &[u8]) {
    // Xen strips non-printable characters and buffers per line on its side too.
    super::hypercall::console_write(line);
}

struct Writer;
impl Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        with_buf(|b| b.push(s.as_bytes(), &mut |l| emit(l)));
        Ok(())
    }
}

/// Backend of `print!`/`println!`.
pub fn print_fmt(args: fmt::Arguments) {
    let _ = Writer.write_fmt(args);
}

/// Write out a partial line, if any.
pub fn flush() {
    with_buf(|b| b.flush(&mut |l| emit(l)));
}

/// Print bytes from the guest (e.g. a C string) with non-printables escaped.
pub struct Escaped<'a>(pub &'a [u8]);
impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{:02x}", b)?;
            }
        }
        Ok(())
    }
}
