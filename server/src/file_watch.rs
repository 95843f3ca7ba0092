//! Noticing that files changed, by polling their content: used by the policy watcher
//! ([`crate::policy_watch`]) and the certificate reloader ([`crate::tls`]).
//!
//! Why polling and not inotify: Kubernetes ConfigMaps and Secrets update by swapping a
//! `..data` symlink, editors and `mv` replace the file's inode, and inotify watches follow
//! inodes, so an event-based watcher misses changes unless it re-arms itself perfectly
//! (Limitador's issue #523). Reading the path and comparing its *content* every interval
//! sees every pattern — in-place write, atomic rename, symlink swap — at the cost of one
//! small read per interval.

use std::path::PathBuf;

/// The content of a set of files, compared as a whole from one poll to the next.
#[derive(Debug)]
pub struct ContentWatch {
    paths: Vec<PathBuf>,
    /// What the last poll read; `None` until a read succeeded.
    last: Option<Vec<Vec<u8>>>,
}

/// Why a poll could not read the files: the path and the error, for the log.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl ContentWatch {
    /// Watches `paths`; `initial` is the content already in use (it is not a change).
    pub fn new(paths: Vec<PathBuf>, initial: Option<Vec<Vec<u8>>>) -> ContentWatch {
        ContentWatch {
            paths,
            last: initial,
        }
    }

    /// Reads every file now: `Some(contents)` (in the order of the paths) when any of them
    /// differs from the last poll, `None` when nothing changed. A file that cannot be read
    /// is an error and does not count as a change, so a file caught mid-swap is read again
    /// at the next poll.
    pub fn poll(&mut self) -> Result<Option<Vec<Vec<u8>>>, ReadError> {
        let contents = read_all(&self.paths)?;
        if self.last.as_ref() == Some(&contents) {
            return Ok(None);
        }
        self.last = Some(contents.clone());
        Ok(Some(contents))
    }
}

/// Reads each of `paths` in full.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, ReadError> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|source| ReadError {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_change_once_including_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let initial = read_all(std::slice::from_ref(&a)).unwrap();
        let mut watch = ContentWatch::new(vec![a.clone()], Some(initial));
        assert!(watch.poll().unwrap().is_none());

        std::fs::write(&a, "two").unwrap();
        assert_eq!(watch.poll().unwrap(), Some(vec![b"two".to_vec()]));
        assert!(watch.poll().unwrap().is_none());

        // Kubernetes style: `a` becomes a symlink into a data dir that is then swapped.
        let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
        std::fs::create_dir(&d1).unwrap();
        std::fs::create_dir(&d2).unwrap();
        std::fs::write(d1.join("a"), "three").unwrap();
        std::fs::write(d2.join("a"), "four").unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(&d1, &data).unwrap();
        std::fs::remove_file(&a).unwrap();
        std::os::unix::fs::symlink(data.join("a"), &a).unwrap();
        assert_eq!(watch.poll().unwrap(), Some(vec![b"three".to_vec()]));
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&d2, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert_eq!(watch.poll().unwrap(), Some(vec![b"four".to_vec()]));

        std::fs::remove_dir_all(&d2).unwrap();
        assert!(watch.poll().is_err(), "a dangling link is an error");
    }
}
