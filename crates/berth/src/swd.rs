//! Finding the server working directory (SWD): `--swd DIR`, else `BERTH_SWD`, else
//! `./berth.swd`.

use std::path::{Path, PathBuf};

/// The SWD the user named, or the default.
pub fn resolve(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("BERTH_SWD") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("berth.swd"),
    }
}

/// `SWD/containers`, where the named container configurations live.
pub fn containers(swd: &Path) -> PathBuf {
    swd.join("containers")
}
