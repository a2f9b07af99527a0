//! Builds the job wrapper `berth-vw` as a static executable and hands its path to the
//! `berth` binary, which embeds it.
//!
//! The wrapper must run in an image that holds nothing but a static busybox, so it is linked
//! with `+crt-static`. Cargo cannot set that flag for one package of a workspace, so this
//! script runs a second cargo, in a target directory of its own, for that one package.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let vw_dir = manifest_dir.join("../berth-vw");
    println!("cargo:rerun-if-changed={}", vw_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        vw_dir.join("Cargo.toml").display()
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let target = std::env::var("TARGET").unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("vw-target");

    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--offline",
        "-p",
        "berth-vw",
        "--target",
        &target,
    ])
    .arg("--manifest-path")
    .arg(manifest_dir.join("../../Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let inherited_build_setting =
            k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_NET_OFFLINE"
                || k.starts_with("RUSTC")
                || k.starts_with("RUSTDOC")
                || k == "RUSTFLAGS"
                || k.contains("MAKEFLAGS")
                || k == "MFLAGS"
                || k == "DEBUG"
                || k == "OPT_LEVEL"
                || k == "PROFILE"
                || k == "TARGET"
                || k == "HOST"
                || k == "OUT_DIR"
                || k == "NUM_JOBS";
        if inherited_build_setting {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Ctarget-feature=+crt-static\x1f-Crelocation-model=static\x1f-Cstrip=symbols",
    );
    let status = cmd.status().expect("run cargo to build berth-vw");
    if !status.success() {
        panic!("building the static berth-vw failed: {status}");
    }
    let bin = target_dir.join(&target).join("release/berth-vw");
    println!("cargo:rustc-env=BERTH_VW_PATH={}", bin.display());
    // A stamp of the build, so that berth can tell an installed wrapper is its own without
    // reading it whole: the size and modification time of what was built.
    let meta = std::fs::metadata(&bin).expect("the built berth-vw");
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    println!("cargo:rustc-env=BERTH_VW_STAMP={}-{mtime}", meta.len());
}
