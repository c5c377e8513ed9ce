//! Reads `/proc/net/stat/synproxy` (I/O around the pure [`super::proc_stat`]
//! parser): every error names the path it came from.

use super::proc_stat::{self, ParseError, ProcStat};
use crate::reconcile::wrap_tracker::CounterIdentity;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Relative to the proc root, as Telegraf reads it.
pub const STAT_FILE: &str = "net/stat/synproxy";

#[derive(Debug)]
pub struct Reading {
    pub identity: CounterIdentity,
    pub stat: ProcStat,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: file not found (nf_synproxy_core may not be loaded in this network namespace)", path.display())]
    Missing { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

/// Reads and parses the stat file at `path`; `buf` is reused between reads.
pub fn read_stat_file(path: &Path, buf: &mut Vec<u8>) -> Result<Reading, ReadError> {
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
        },
        _ => ReadError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let mut file = File::open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if meta.is_dir() {
        return Err(ReadError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("is a directory, expected the synproxy stat file"),
        });
    }
    buf.clear();
    file.read_to_end(buf).map_err(io_error)?;
    let stat = proc_stat::parse(buf).map_err(|source| ReadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Reading {
        identity: CounterIdentity {
            file_dev: meta.dev(),
            file_inode: meta.ino(),
        },
        stat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_path_and_module() {
        let err = read_stat_file(Path::new("/nonexistent/net/stat/synproxy"), &mut Vec::new())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReadError::Missing { .. }));
        assert!(msg.starts_with("/nonexistent/net/stat/synproxy: "), "{msg}");
        assert!(msg.contains("nf_synproxy_core"), "{msg}");
    }

    #[test]
    fn parse_errors_name_the_path() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mismatch"
        ));
        let msg = read_stat_file(path, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("tests/fixtures/mismatch: line 2: invalid number of columns"),
            "{msg}"
        );
    }

    #[test]
    fn directory_is_an_error() {
        let msg = read_stat_file(Path::new("/"), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is a directory"), "{msg}");
    }

    #[test]
    fn reads_fixture_with_identity() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/normal_8cpu"
        ));
        let reading = read_stat_file(path, &mut Vec::new()).unwrap();
        assert_eq!(reading.stat.cpus.len(), 8);
        assert_ne!(reading.identity.file_inode, 0);
    }
}
