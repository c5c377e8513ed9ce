//! Gives back the pages of the agent's own executable that only start-up used.
//!
//! Argument parsing, the runtime's and the outputs' set-up, BTF and the
//! embedded eBPF object touch code and read-only data once; those pages (and,
//! through the kernel's fault-around, their neighbours in 64 KiB windows) stay
//! mapped and count in the agent's RSS for its whole life, about 2-3 MiB. After
//! the first round, one `madvise(MADV_PAGEOUT)` over the executable's read-only
//! file mappings reclaims them (kernel 5.4+; older kernels refuse it and
//! nothing changes). The pages the rounds use are faulted in again at the next
//! round, from the page cache or once from disk; nothing is written, since
//! these mappings are read-only views of the file.

use std::ops::Range;

/// The read-only file mappings of `exe` in `/proc/self/maps` text: pure.
pub fn executable_ranges(maps: &str, exe: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            // offset, device, inode, then the path (padded with spaces).
            let path = fields.nth(3)?.trim_start();
            if path != exe || perms.as_bytes().get(1) == Some(&b'w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (start < end).then_some(start..end)
        })
        .collect()
}

/// Reclaims the executable's read-only pages; returns the bytes advised.
pub fn release() -> Result<usize, String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("/proc/self/exe: {e}"))?
        .to_string_lossy()
        .into_owned();
    let maps =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let ranges = executable_ranges(&maps, &exe);
    if ranges.is_empty() {
        return Err(format!("no read-only mapping of {exe} in /proc/self/maps"));
    }
    let mut advised = 0;
    for range in ranges {
        let len = range.end - range.start;
        // SAFETY: the range is one of this process's own read-only file
        // mappings, page-aligned as the kernel lists it; MADV_PAGEOUT only
        // drops residency, the contents stay those of the file.
        let rc =
            unsafe { libc::madvise(range.start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(format!(
                "madvise(MADV_PAGEOUT): {}",
                std::io::Error::last_os_error()
            ));
        }
        advised += len;
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0bae000 r--p 00000000 fe:00 6146743                    /usr/bin/synproxy-agent
55d0c0bae000-55d0c0f25000 r-xp 001ad000 fe:00 6146743                    /usr/bin/synproxy-agent
55d0c0f25000-55d0c0f43000 r--p 00523000 fe:00 6146743                    /usr/bin/synproxy-agent
55d0c0f43000-55d0c0f45000 rw-p 00540000 fe:00 6146743                    /usr/bin/synproxy-agent
55d0c2000000-55d0c2021000 rw-p 00000000 00:00 0                          [heap]
7f1c8a000000-7f1c8a028000 r--p 00000000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c8a028000-7f1c8a1a0000 r-xp 00028000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_the_executables_read_only_mappings() {
        assert_eq!(
            executable_ranges(MAPS, "/usr/bin/synproxy-agent"),
            vec![
                0x55d0c0a00000..0x55d0c0bae000,
                0x55d0c0bae000..0x55d0c0f25000,
                0x55d0c0f25000..0x55d0c0f43000,
            ]
        );
    }

    #[test]
    fn a_replaced_executable_is_still_found() {
        let maps = "00400000-00500000 r-xp 00000000 fe:00 7 /usr/bin/synproxy-agent (deleted)\n";
        assert_eq!(
            executable_ranges(maps, "/usr/bin/synproxy-agent (deleted)"),
            vec![0x400000..0x500000]
        );
        assert!(executable_ranges(maps, "/usr/bin/synproxy-agent").is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let maps = "zz-00500000 r-xp 0 fe:00 7 /a\n00500000-00400000 r-xp 0 fe:00 7 /a\nshort\n";
        assert!(executable_ranges(maps, "/a").is_empty());
    }

    #[test]
    fn releasing_our_own_pages_works_here() {
        // The test binary's own mappings: the call must succeed on kernels
        // with MADV_PAGEOUT (5.4+) and the process must go on running.
        match release() {
            Ok(bytes) => assert!(bytes > 0),
            Err(e) => assert!(e.contains("Invalid argument"), "{e}"),
        }
    }
}
