//! The process's memory mappings, read from `/proc/self/maps` without
//! allocating (check mode's fault handler and leak scan, and the stack
//! measurements of `stacks.rs`, use them).

/// One mapping: `[lo, hi)`, whether it is readable and writable, whether it is anonymous memory (no
/// file; `[stack]`, `[heap]` and named anonymous mappings count as
/// anonymous), and whether it is the main thread's stack (`[stack]`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mapping {
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    pub(crate) rw: bool,
    pub(crate) anon: bool,
    pub(crate) main_stack: bool,
}

/// Calls `f` on every mapping, in address order.
pub(crate) fn for_each(mut f: impl FnMut(Mapping)) {
    let mut buf = [0u8; 4096];
    let mut carry = 0;
    // SAFETY: plain system calls on our own descriptor and buffer.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    loop {
        // SAFETY: reads into the free part of `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(carry).cast(), buf.len() - carry) };
        if n <= 0 {
            break;
        }
        let len = carry + n as usize;
        let mut start = 0;
        while let Some(nl) = buf[start..len].iter().position(|&c| c == b'\n') {
            if let Some(m) = parse(&buf[start..start + nl]) {
                f(m);
            }
            start += nl + 1;
        }
        buf.copy_within(start..len, 0);
        carry = len - start;
        if carry == buf.len() {
            carry = 0; // a line longer than the buffer: drop it
        }
    }
    // SAFETY: closes our descriptor.
    unsafe { libc::close(fd) };
}

/// The first mapping (in address order) that `fits`.
fn first(fits: impl Fn(&Mapping) -> bool) -> Option<Mapping> {
    let mut found = None;
    for_each(|m| {
        if found.is_none() && fits(&m) {
            found = Some(m);
        }
    });
    found
}

/// The mapping holding `addr`.
pub(crate) fn holding(addr: usize) -> Option<Mapping> {
    first(|m| m.lo <= addr && addr < m.hi)
}

/// The bounds of the mapping holding `addr`, or (`above`) the lowest one
/// starting above it: for a stack overflow, the stack right above the guard
/// it hit.
pub(crate) fn near(addr: usize, above: bool) -> Option<(usize, usize)> {
    let m = if above {
        first(|m| m.lo > addr)
    } else {
        holding(addr)
    };
    m.map(|m| (m.lo, m.hi))
}

/// Parses `lo-hi perms offset dev inode [path]`.
fn parse(line: &[u8]) -> Option<Mapping> {
    let hex = |s: &[u8]| -> Option<usize> {
        let mut v = 0usize;
        for &c in s {
            v = v.checked_mul(16)? + (c as char).to_digit(16)? as usize;
        }
        (!s.is_empty()).then_some(v)
    };
    let mut fields = line.split(|&c| c == b' ').filter(|f| !f.is_empty());
    let range = fields.next()?;
    let dash = range.iter().position(|&c| c == b'-')?;
    let perms = fields.next()?;
    let path = fields.nth(3);
    Some(Mapping {
        lo: hex(&range[..dash])?,
        hi: hex(&range[dash + 1..])?,
        rw: perms.starts_with(b"rw"),
        anon: path.is_none_or(|p| p.starts_with(b"[")),
        main_stack: path == Some(b"[stack]"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_this_stack() {
        let m = parse(b"7f00-7f10 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((m.lo, m.hi, m.rw, m.anon), (0x7f00, 0x7f10, true, true));
        let m = parse(b"5500-5600 r-xp 00001000 08:01 123   /usr/bin/x").unwrap();
        assert!(!m.rw && !m.anon);
        let m = parse(b"7ffc-7ffd rw-p 00000000 00:00 0   [stack]").unwrap();
        assert!(m.anon && m.main_stack);
        assert!(
            !parse(b"7ffc-7ffd rw-p 00000000 00:00 0   [heap]")
                .unwrap()
                .main_stack
        );
        let local = 5u64;
        let here = &local as *const u64 as usize;
        let (lo, hi) = near(here, false).expect("the stack is mapped");
        assert!(lo <= here && here < hi);
        let m = holding(here).expect("the stack is mapped");
        assert_eq!((m.lo, m.hi), (lo, hi));
    }
}
