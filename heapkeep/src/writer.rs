//! Messages without allocating: a fixed buffer that is flushed to standard
//! error when full and at the end (fatal errors, check mode's reports), or
//! kept as text (report details, command arguments). Numbers go through
//! `core::fmt`, which does not allocate.

use core::fmt::Write as _;

use crate::os;

/// A line buffer for reports on stderr (no allocation; flushes when full).
pub(crate) struct Writer {
    buf: [u8; 1024],
    len: usize,
    /// Flushes to stderr (else a fixed buffer that drops what overflows).
    /// The file descriptor a full buffer goes to (-1: none, the text is cut).
    sink: i32,
}

impl Writer {
    /// An empty writer.
    pub(crate) const fn new() -> Writer {
        Writer {
            buf: [0; 1024],
            len: 0,
            sink: 2,
        }
    }

    /// A writer to the file descriptor `fd` (flushed when full and on drop).
    pub(crate) const fn to_fd(fd: i32) -> Writer {
        Writer {
            buf: [0; 1024],
            len: 0,
            sink: fd,
        }
    }

    /// A writer into its own buffer only (text past 1 KiB is dropped).
    pub(crate) const fn buffer() -> Writer {
        Writer {
            buf: [0; 1024],
            len: 0,
            sink: -1,
        }
    }

    /// Bytes that still fit before the buffer is full.
    pub(crate) fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// The text buffered so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends raw bytes.
    pub(crate) fn b(&mut self, bytes: &[u8]) -> &mut Writer {
        for chunk in bytes.chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                if self.sink < 0 {
                    let room = self.buf.len() - self.len;
                    self.buf[self.len..].copy_from_slice(&chunk[..room]);
                    self.len = self.buf.len();
                    return self;
                }
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        self
    }

    /// Appends a string.
    pub(crate) fn s(&mut self, text: &str) -> &mut Writer {
        self.b(text.as_bytes())
    }

    /// Appends `v` in decimal.
    pub(crate) fn d(&mut self, v: usize) -> &mut Writer {
        // Writing to a Writer never fails (overflowing text is dropped).
        let _ = write!(self, "{v}");
        self
    }

    /// Appends `0x` and `v` in hexadecimal.
    pub(crate) fn x(&mut self, v: usize) -> &mut Writer {
        let _ = write!(self, "{v:#x}");
        self
    }

    /// Writes what is buffered to stderr.
    pub(crate) fn flush(&mut self) {
        if self.sink >= 0 && self.len > 0 {
            os::write_fd(self.sink, &self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl core::fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.b(s.as_bytes());
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The path of an output file (heap profile, heap map), NUL-terminated in
/// `buf`; returns its length without the NUL. The environment option `var`
/// (a NUL-terminated name) with every `%p` replaced by `pid`, else
/// `heapkeep-<kind>.<program>.<pid>.<ext>` in the working directory. None
/// when it would not fit with `spare` more bytes (and the NUL), and in a
/// forked child (`pid` is not `first_pid`) when the option names a fixed
/// path, which is its parent's.
pub(crate) fn output_path(
    buf: &mut [u8; 512],
    var: &[u8],
    kind: &str,
    ext: &str,
    pid: u32,
    first_pid: u32,
    spare: usize,
) -> Option<usize> {
    let mut w = Writer::buffer();
    match os::getenv(var).filter(|v| !v.is_empty()) {
        Some(v) => {
            if pid != first_pid && !v.windows(2).any(|x| x == b"%p") {
                return None;
            }
            let mut rest = v;
            while let Some(i) = rest.windows(2).position(|x| x == b"%p") {
                w.b(&rest[..i]).d(pid as usize);
                rest = &rest[i + 2..];
            }
            w.b(rest);
        }
        None => {
            let mut exe = [0u8; 256];
            let n = os::exe_path(&mut exe);
            let exe = &exe[..n];
            let base = exe.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
            w.s("heapkeep-")
                .s(kind)
                .s(".")
                .b(&exe[base..])
                .s(".")
                .d(pid as usize)
                .s(".")
                .s(ext);
        }
    }
    let bytes = w.as_bytes();
    if bytes.len() + spare >= buf.len() || w.room() == 0 {
        return None;
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()] = 0;
    Some(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_overflowing_text() {
        let mut w = Writer::new();
        w.d(0).s(" ").d(1234567).s(" ").x(0xbeef).s(" ").x(0);
        assert_eq!(&w.buf[..w.len], b"0 1234567 0xbeef 0x0");
        w.len = 0;
        let long = [b'a'; 3000];
        w.b(&long[..10]);
        assert_eq!(w.len, 10);
        w.len = 0; // drop the text instead of printing it
        let mut b = Writer::buffer();
        b.b(&long);
        assert_eq!(b.as_bytes().len(), 1024);
    }
}
