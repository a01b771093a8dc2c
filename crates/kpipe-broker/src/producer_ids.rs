//! Producer ids for idempotent producers, never reused across restarts.
//!
//! Ids are reserved on disk in blocks, so a restart skips the rest of a block
//! instead of handing out an id a previous run already gave someone.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::storage::write_atomic;

const BLOCK: i64 = 1000;

pub struct ProducerIds {
    path: PathBuf,
    /// (next id to hand out, end of the reserved block)
    next: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn open(state_dir: &Path) -> std::io::Result<ProducerIds> {
        let path = state_dir.join("producer-id-block");
        let start = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(ProducerIds {
            path,
            next: Mutex::new((start, start)),
        })
    }

    pub fn allocate(&self) -> std::io::Result<i64> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if next.0 >= next.1 {
            let end = next.0 + BLOCK;
            write_atomic(&self.path, end.to_string().as_bytes())?;
            next.1 = end;
        }
        next.0 += 1;
        Ok(next.0 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_reused_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!((ids.allocate().unwrap(), ids.allocate().unwrap()), (0, 1));
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.allocate().unwrap(), BLOCK);
    }
}
