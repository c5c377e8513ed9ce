//! Gives back the pages of the agent's own executable that only start-up used.
//!
//! Argument parsing, the runtime's and the outputs' set-up, BTF and the
//! embedded eBPF object touch code and read-only data once; those pages (and,
//! through the kernel's fault-around, their neighbours in 64 KiB windows) stay
//! mapped and count in the agent's RSS for its whole life, 1-2.5 MiB. After the
//! first round, `madvise(MADV_PAGEOUT)` then `madvise(MADV_DONTNEED)` over the
//! executable's read-only file mappings reclaim or unmap them; the pages the
//! rounds use are mapped again at the next round. How many come back depends
//! on the kernel: one page at a time after PAGEOUT freed them, or whole large
//! folios (up to hundreds of KiB each) where the page cache holds them so. Only mappings without private (anonymous)
//! pages are advised: there DONTNEED is a pure residency drop, since every
//! page is the file's own (RELRO pages the loader relocated, or code a
//! debugger patched, are private copies and are left alone). The file cannot
//! change underneath: a running executable cannot be opened for writing.
//! (`MADV_PAGEOUT` alone is not enough: it skips large folios and, for a
//! non-root agent, files it could not write.)

use std::ops::Range;

/// The read-only file mappings of `exe` that hold no private pages, from
/// `/proc/self/smaps` text: pure.
pub fn executable_ranges(smaps: &str, exe: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    // The mapping being read, if it is one of ours, until its Anonymous line.
    let mut current: Option<Range<usize>> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line, exe) {
            current = range;
            continue;
        }
        if let Some(kib) = line.strip_prefix("Anonymous:") {
            if let Some(range) = current.take() {
                if kib.trim().strip_suffix("kB").map(str::trim) == Some("0") {
                    ranges.push(range);
                }
            }
        }
    }
    ranges
}

/// `Some(..)` for a mapping header line (`Some(Some(range))` if it is a
/// read-only mapping of `exe`), `None` for a field line.
fn mapping_header(line: &str, exe: &str) -> Option<Option<Range<usize>>> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    // offset, device, inode, then the path (padded with spaces).
    let path = fields.nth(3).map_or("", str::trim_start);
    let ours = path == exe && !perms.contains('w') && start < end;
    Some(ours.then_some(start..end))
}

/// Unmaps the executable's read-only pages; returns the bytes advised.
pub fn release() -> Result<usize, String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("/proc/self/exe: {e}"))?
        .to_string_lossy()
        .into_owned();
    let smaps = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| format!("/proc/self/smaps: {e}"))?;
    let ranges = executable_ranges(&smaps, &exe);
    if ranges.is_empty() {
        return Err(format!(
            "no read-only mapping of {exe} without private pages in /proc/self/smaps"
        ));
    }
    let mut advised = 0;
    for range in ranges {
        let len = range.end - range.start;
        // SAFETY: the range is one of this process's own read-only file
        // mappings with no private page (checked in smaps just now, and a
        // read-only mapping cannot gain one without mprotect, which the agent
        // never calls): dropping it only unmaps pages that fault back in with
        // the same contents from the file.
        let start = range.start as *mut libc::c_void;
        // First PAGEOUT: it frees the page cache where the kernel can (small
        // folios, a file the agent could write), so pages the rounds use come
        // back one by one from disk; DONTNEED then unmaps whatever it left.
        // SAFETY: as above; PAGEOUT only reclaims clean file pages (an
        // unsupported or refused advice is an error code, ignored).
        let _ = unsafe { libc::madvise(start, len, libc::MADV_PAGEOUT) };
        // SAFETY: as above.
        let rc = unsafe { libc::madvise(start, len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(format!(
                "madvise(MADV_DONTNEED): {}",
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

    const SMAPS: &str = "\
55d0c0a00000-55d0c0bae000 r--p 00000000 fe:00 6146743                    /usr/bin/synproxy-agent
Size:               1720 kB
Rss:                 256 kB
Anonymous:             0 kB
55d0c0bae000-55d0c0f25000 r-xp 001ad000 fe:00 6146743                    /usr/bin/synproxy-agent
Size:               3548 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55d0c0f25000-55d0c0f43000 r--p 00523000 fe:00 6146743                    /usr/bin/synproxy-agent
Size:                120 kB
Anonymous:           116 kB
55d0c0f43000-55d0c0f45000 rw-p 00540000 fe:00 6146743                    /usr/bin/synproxy-agent
Anonymous:             8 kB
55d0c2000000-55d0c2021000 rw-p 00000000 00:00 0                          [heap]
Anonymous:           132 kB
7f1c8a028000-7f1c8a1a0000 r-xp 00028000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0
Anonymous:            16 kB
";

    #[test]
    fn only_the_executables_read_only_mappings_without_private_pages() {
        // The third mapping holds relocated (RELRO) private copies: left alone.
        assert_eq!(
            executable_ranges(SMAPS, "/usr/bin/synproxy-agent"),
            vec![
                0x55d0c0a00000..0x55d0c0bae000,
                0x55d0c0bae000..0x55d0c0f25000,
            ]
        );
    }

    #[test]
    fn a_replaced_executable_is_still_found() {
        let smaps = "00400000-00500000 r-xp 00000000 fe:00 7 /usr/bin/synproxy-agent (deleted)\nAnonymous:    0 kB\n";
        assert_eq!(
            executable_ranges(smaps, "/usr/bin/synproxy-agent (deleted)"),
            vec![0x400000..0x500000]
        );
        assert!(executable_ranges(smaps, "/usr/bin/synproxy-agent").is_empty());
    }

    #[test]
    fn malformed_or_incomplete_mappings_are_skipped() {
        let smaps = "zz-00500000 r-xp 0 fe:00 7 /a\nAnonymous: 0 kB\n\
                     00500000-00400000 r-xp 0 fe:00 7 /a\nAnonymous: 0 kB\n\
                     00600000-00700000 r-xp 0 fe:00 7 /a\nRss: 4 kB\n";
        assert!(executable_ranges(smaps, "/a").is_empty());
    }

    #[test]
    fn releasing_our_own_pages_keeps_the_process_running() {
        let resident = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("RssFile:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
        };
        let before = resident();
        match release() {
            Ok(bytes) => assert!(bytes > 0),
            Err(e) => panic!("{e}"),
        }
        // Code runs on after its pages were unmapped, and fewer are mapped.
        let after = resident();
        assert!(after < before, "RssFile {before:?} kB -> {after:?} kB");
    }
}
