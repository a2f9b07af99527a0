//! The job wrapper `berth-vw`, carried inside the berth binary and written out where the
//! hooks can reach it: `SWD/bin/berth-vw`.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The static wrapper, built by build.rs.
static BERTH_VW: &[u8] = include_bytes!(env!("BERTH_VW_PATH"));
/// Which build of the wrapper this is.
const STAMP: &str = env!("BERTH_VW_STAMP");

/// Writes the wrapper to `SWD/bin/berth-vw` unless it is there already, and returns its
/// absolute path. The file is replaced by a rename, so running jobs keep theirs.
pub fn install(swd: &Path) -> Result<PathBuf> {
    let dir = std::path::absolute(swd.join("bin")).context("resolving the SWD")?;
    // Every container job runs this file as its owner: whoever could replace it could run
    // code as every user. As root, it must lie where only root can change it.
    if berth_sys::euid() == 0 {
        let parent = dir.parent().unwrap_or(&dir);
        if let Err(why) = berth_container::check::safe_dirs(parent) {
            bail!("the job wrapper goes in {}, but {why}", dir.display());
        }
        if let Ok(meta) = std::fs::symlink_metadata(&dir) {
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 || !meta.is_dir() {
                bail!(
                    "the job wrapper goes in {d}, which must be a directory owned by root and writable by root only; run: chown root {d} && chmod 755 {d}",
                    d = dir.display()
                );
            }
        }
    }
    let path = dir.join("berth-vw");
    let stamp_path = dir.join(".berth-vw.stamp");
    // The stamp says which build was installed: reading it and the file's size costs
    // microseconds, where comparing the whole wrapper on every job would not.
    let installed_len = std::fs::metadata(&path).map(|m| m.len()).ok();
    if installed_len == Some(BERTH_VW.len() as u64)
        && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == STAMP)
    {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))?;
    let tmp = dir.join(format!(".berth-vw.{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(BERTH_VW)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    std::fs::write(&stamp_path, STAMP)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(path)
}
