//! The job wrapper `berth-vw`, carried inside the berth binary and written out where the
//! hooks can reach it: `SWD/bin/berth-vw`.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The static wrapper, built by build.rs.
static BERTH_VW: &[u8] = include_bytes!(env!("BERTH_VW_PATH"));

/// Writes the wrapper to `SWD/bin/berth-vw` unless it is there already, and returns its
/// absolute path. The file is replaced by a rename, so running jobs keep theirs.
pub fn install(swd: &Path) -> Result<PathBuf> {
    let dir = std::path::absolute(swd.join("bin")).context("resolving the SWD")?;
    let path = dir.join("berth-vw");
    if std::fs::read(&path).is_ok_and(|b| b == BERTH_VW) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))?;
    let tmp = dir.join(format!(".berth-vw.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(BERTH_VW)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    Ok(path)
}
