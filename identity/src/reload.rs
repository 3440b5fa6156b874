//! Noticing that files changed, by polling their metadata.
//!
//! Polling (rather than inotify) works the same on every filesystem and with
//! Kubernetes Secret volumes, which update by swapping a `..data` symlink:
//! `metadata()` follows it, so the swap shows up as a new inode/mtime.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    dev: u64,
}

/// A set of files and what they looked like when last checked.
pub struct FileWatch {
    paths: Vec<PathBuf>,
    seen: Vec<Option<Fingerprint>>,
}

impl FileWatch {
    /// Starts watching; the files' current state counts as already seen.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let paths: Vec<PathBuf> = paths.into_iter().collect();
        let seen = paths.iter().map(fingerprint).collect();
        Self { paths, seen }
    }

    /// True if any file changed (or appeared, or vanished) since last call.
    pub fn changed(&mut self) -> bool {
        let now: Vec<_> = self.paths.iter().map(fingerprint).collect();
        if now != self.seen {
            self.seen = now;
            true
        } else {
            false
        }
    }
}

fn fingerprint(path: &PathBuf) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino(), dev: meta.dev() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_rewrites_and_replacements() {
        let dir = std::env::temp_dir().join(format!("weft-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "a").unwrap();
        let mut watch = FileWatch::new([path.clone()]);
        assert!(!watch.changed());
        std::fs::write(&path, "bb").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        let tmp = dir.join("f.new");
        std::fs::write(&tmp, "cc").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(watch.changed());
        std::fs::remove_file(&path).unwrap();
        assert!(watch.changed());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
