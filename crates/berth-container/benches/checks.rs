//! What the checks cost per job: read and parse a configuration with four hooks, then run
//! every check of SPEC §3 on each (open, fstat, owner and mode, directories up to /, and
//! the SHA-256 of the content). Prints the median per job over batches; asserts nothing.
//!
//! cargo bench -p berth-container --bench checks

use berth_container::check::{self, Policy};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let privilege = if berth_sys::euid() == 0 {
        "root"
    } else {
        "user"
    };
    // Hooks of a realistic size: the examples are 1-2 KB of shell.
    let body = format!(
        "#!/bin/sh\n{}\n",
        "echo 'a line of a hook script, as long as most'\n".repeat(40)
    );
    let mut cfg = String::from("# four hooks\n");
    for kind in ["setup", "enter", "cleanup", "teardown"] {
        let p = dir.join(format!("{kind}.sh"));
        std::fs::write(&p, &body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sig = berth_container::sign::sign_file(&p, None).unwrap();
        cfg += &format!("containerHook {kind} {privilege} {} {sig}\n", p.display());
    }
    cfg +=
        "containerLimit CORES 1 8\ncontainerLimit RAM 1000 64000\ncontainerHookTimeout setup 60\n";
    let cdir = dir.join("containers");
    std::fs::create_dir(&cdir).unwrap();
    std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(cdir.join("c.cfg"), &cfg).unwrap();

    let job = || {
        let c = check::load(&cdir, "c").expect("load");
        let checked = check::check_hooks(&c, Policy::default()).expect("checks");
        assert_eq!(checked.len(), 4);
    };
    for _ in 0..200 {
        job(); // warm the page cache
    }
    let batch = 200;
    let mut per_job: Vec<f64> = (0..30)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                job();
            }
            t.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .collect();
    per_job.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "checks per job (parse + verify 4 {privilege} hooks of {} bytes): median {:.1} µs, min {:.1} µs, max {:.1} µs (30 batches of {batch}; target < 200 µs)",
        body.len(),
        per_job[per_job.len() / 2],
        per_job[0],
        per_job[per_job.len() - 1]
    );
}
