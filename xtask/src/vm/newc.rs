//! Minimal writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Entries are collected in a sorted map so every directory is written before
//! its children; parent directories are created implicitly.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};

const MODE_DIR: u32 = 0o040000;
const MODE_FILE: u32 = 0o100000;
const MODE_SYMLINK: u32 = 0o120000;
const MODE_CHAR_DEVICE: u32 = 0o020000;

#[derive(Debug, Clone)]
enum Entry {
    Directory,
    File {
        permissions: u32,
        contents: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    CharDevice {
        permissions: u32,
        major: u32,
        minor: u32,
    },
}

/// An in-memory initramfs tree, written out as newc cpio by [`Archive::write_to`].
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|part| part.is_empty() || part == "..")
    {
        bail!("invalid archive path {path:?}");
    }
    Ok(trimmed.to_string())
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let path = normalize(path)?;
        // Create missing parents as directories.
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Directory);
                }
                Some(Entry::Directory) => {}
                Some(_) => bail!("cannot put {path:?} below {parent:?}: it is not a directory"),
            }
        }
        if matches!(entry, Entry::Directory)
            && matches!(self.entries.get(&path), Some(Entry::Directory))
        {
            return Ok(());
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    pub fn add_directory(&mut self, path: &str) -> Result<()> {
        self.insert(path, Entry::Directory)
    }

    pub fn add_file(&mut self, path: &str, permissions: u32, contents: Vec<u8>) -> Result<()> {
        self.insert(
            path,
            Entry::File {
                permissions,
                contents,
            },
        )
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    pub fn add_char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        self.insert(
            path,
            Entry::CharDevice {
                permissions,
                major,
                minor,
            },
        )
    }

    pub fn contains(&self, path: &str) -> bool {
        normalize(path)
            .map(|p| self.entries.contains_key(&p))
            .unwrap_or(false)
    }

    /// Total size of regular file contents, for reporting.
    pub fn payload_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|entry| match entry {
                Entry::File { contents, .. } => contents.len(),
                _ => 0,
            })
            .sum()
    }

    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<()> {
        for (inode, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Directory => (MODE_DIR | 0o755, &[], (0, 0)),
                Entry::File {
                    permissions,
                    contents,
                } => (MODE_FILE | permissions, contents, (0, 0)),
                Entry::Symlink { target } => (MODE_SYMLINK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDevice {
                    permissions,
                    major,
                    minor,
                } => (MODE_CHAR_DEVICE | permissions, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Directory) {
                2
            } else {
                1
            };
            write_record(out, inode, mode, nlink, rdev, path, data)
                .with_context(|| format!("writing cpio entry {path}"))?;
        }
        write_record(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]).context("writing cpio trailer")?;
        Ok(())
    }
}

fn write_record<W: Write>(
    out: &mut W,
    inode: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let name_size = name.len() + 1;
    let fields = [
        inode,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev_major,
        rdev_minor,
        name_size as u32,
        0, // check
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08x}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&padding(110 + name_size))?;
    out.write_all(data)?;
    out.write_all(&padding(data.len()))?;
    Ok(())
}

fn padding(len: usize) -> Vec<u8> {
    vec![0; (4 - len % 4) % 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names and data of each record, read back from newc bytes.
    fn parse(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let field = |at: usize, index: usize| {
            let start = at + 6 + index * 8;
            usize::from_str_radix(std::str::from_utf8(&bytes[start..start + 8]).unwrap(), 16)
                .unwrap()
        };
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(&bytes[at..at + 6], b"070701");
            let (file_size, name_size) = (field(at, 6), field(at, 11));
            let name =
                String::from_utf8(bytes[at + 110..at + 110 + name_size - 1].to_vec()).unwrap();
            let data_start = (at + 110 + name_size).div_ceil(4) * 4;
            records.push((name, bytes[data_start..data_start + file_size].to_vec()));
            at = (data_start + file_size).div_ceil(4) * 4;
        }
        records
    }

    #[test]
    fn writes_parents_first_and_aligned_records() {
        let mut archive = Archive::new();
        archive
            .add_file("/usr/lib/x/libfoo.so", 0o644, b"hello".to_vec())
            .unwrap();
        archive.add_symlink("/lib", "usr/lib").unwrap();
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let records = parse(&bytes);
        let names: Vec<&str> = records.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libfoo.so",
                "TRAILER!!!"
            ]
        );
        assert_eq!(records[0].1, b"usr/lib");
        assert_eq!(records[4].1, b"hello");
    }

    #[test]
    fn rejects_parent_components() {
        let mut archive = Archive::new();
        assert!(archive.add_directory("a/../b").is_err());
    }
}
