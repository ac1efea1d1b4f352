//! The `meta` file: the log's identity and its durable start position.
//!
//! Invariant: `meta` is only ever replaced atomically (write `meta.tmp`,
//! fsync, rename over `meta`, fsync the directory), so after a crash it holds
//! either the old or the new content, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::fsync_dir;
use super::{LogError, LogIdentity};

pub const META_FILE: &str = "meta";
const META_TMP: &str = "meta.tmp";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub system_id: String,
    pub timeline: u32,
    pub database: String,
    pub slot: String,
    /// Floor of the log's start position: set by `mark_gap`/`set_start`;
    /// positions before it are never served.
    pub start_lsn: u64,
}

impl Meta {
    pub fn new(identity: &LogIdentity, start_lsn: u64) -> Meta {
        Meta {
            format: 1,
            system_id: identity.system_id.clone(),
            timeline: identity.timeline,
            database: identity.database.clone(),
            slot: identity.slot.clone(),
            start_lsn,
        }
    }
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

/// Reads `dir/meta`; `None` when absent.
pub fn read(dir: &Path) -> Result<Option<Meta>, LogError> {
    let path = meta_path(dir);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(dir, "read meta", e)),
    };
    let meta: Meta = serde_json::from_slice(&text).map_err(|e| LogError::BadMeta {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if meta.format != 1 {
        return Err(LogError::BadMeta {
            path,
            detail: format!("unsupported format {}", meta.format),
        });
    }
    Ok(Some(meta))
}

/// Atomically replaces `dir/meta`.
pub fn write(dir: &Path, meta: &Meta) -> Result<(), LogError> {
    let tmp = dir.join(META_TMP);
    let io = |e| LogError::io(dir, "write meta", e);
    let text = serde_json::to_vec_pretty(meta).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, meta_path(dir)).map_err(io)?;
    fsync_dir(dir).map_err(io)
}
