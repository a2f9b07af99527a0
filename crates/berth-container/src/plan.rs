//! The pure part of a container job's life cycle: its limits and the variables every hook
//! gets (SPEC §5). The tasker executes the plan; nothing here does I/O.

use crate::config::{Config, HookType, LimitKind};
use berth_resources::Expr;
use std::path::Path;

/// The limits a container job runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Cores: the job's `CORES/n`, else the configuration's default, else 1 (a job asks
    /// for `CORES/1` unless it says otherwise).
    pub cores: u64,
    /// Megabytes of memory: the job's `RAM/n`, else the default; none when neither.
    pub ram: Option<u64>,
    /// Megabytes of temporary space: the job's `TMP#n`, else the default.
    pub tmp: Option<u64>,
}

/// A request above a configuration's MAX.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("container {container}: the job asks for {kind} {asked} but {file}:{line_hint} allows at most {max}; ask for {kind}/{max} or less")]
pub struct AboveMax {
    /// The configuration's NAME.
    pub container: String,
    /// CORES, RAM or TMP.
    pub kind: &'static str,
    /// What the job asked for.
    pub asked: u64,
    /// The MAX.
    pub max: u64,
    /// The configuration file.
    pub file: String,
    /// Where the limit is given (the file, as a hint).
    pub line_hint: &'static str,
}

/// The limits of a job that makes `request` (if any) under `cfg`.
pub fn limits(cfg: &Config, request: Option<&Expr>) -> Result<Limits, AboveMax> {
    let pick = |kind: LimitKind| -> Result<Option<u64>, AboveMax> {
        let asked = request.and_then(|r| r.quantity(kind.as_str()));
        let limit = cfg.limit(kind);
        if let (Some(a), Some(max)) = (asked, limit.and_then(|l| l.max)) {
            if a > max {
                return Err(AboveMax {
                    container: cfg.name.clone(),
                    kind: kind.as_str(),
                    asked: a,
                    max,
                    file: cfg.path.display().to_string(),
                    line_hint: "containerLimit",
                });
            }
        }
        Ok(asked.or(limit.map(|l| l.default)))
    };
    Ok(Limits {
        cores: pick(LimitKind::Cores)?.unwrap_or(1),
        ram: pick(LimitKind::Ram)?,
        tmp: pick(LimitKind::Tmp)?,
    })
}

/// What the variables of a job are made from.
#[derive(Debug, Clone, Copy)]
pub struct JobFacts<'a> {
    /// The tasker host's short name.
    pub host: &'a str,
    /// The server's project name.
    pub project: &'a str,
    /// The job's slot on its tasker, from 0.
    pub slot: u32,
    /// The job's id.
    pub job_id: &'a str,
    /// The job's directory.
    pub job_dir: &'a Path,
    /// The job's limits.
    pub limits: &'a Limits,
}

/// The variables of SPEC §5 that every hook of the job gets, in a fixed order.
pub fn hook_variables(cfg: &Config, facts: &JobFacts<'_>) -> Vec<(String, String)> {
    let mut v = vec![
        ("HOST".to_string(), facts.host.to_string()),
        ("VOV_PROJECT_NAME".to_string(), facts.project.to_string()),
        ("VOV_JOBSLOT".to_string(), facts.slot.to_string()),
        ("VOV_CONTAINER_NAME".to_string(), cfg.name.clone()),
        ("VOV_JOBID".to_string(), facts.job_id.to_string()),
        (
            "VOV_CONTAINER_CORES".to_string(),
            facts.limits.cores.to_string(),
        ),
    ];
    if let Some(r) = facts.limits.ram {
        v.push(("VOV_CONTAINER_RAM".to_string(), r.to_string()));
    }
    if let Some(t) = facts.limits.tmp {
        v.push(("VOV_CONTAINER_TMP".to_string(), t.to_string()));
    }
    if cfg.run_dir.is_some() {
        v.push((
            "VOV_CONTAINER_JOB_RUNDIR".to_string(),
            facts.job_dir.display().to_string(),
        ));
    }
    v
}

/// Where a hook runs: `containerHooksRunDir` when set, else the job's directory.
pub fn hook_dir<'a>(cfg: &'a Config, job_dir: &'a Path) -> &'a Path {
    cfg.run_dir.as_deref().unwrap_or(job_dir)
}

/// The hooks that run after the job, in order, whenever setup was started.
pub const AFTER: [HookType; 2] = [HookType::Cleanup, HookType::Teardown];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const SIG: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn cfg(extra: &str) -> Config {
        parse(
            "c1",
            Path::new("/swd/containers/c1.cfg"),
            &format!("containerHook enter user /e {SIG}\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn limits_table() {
        let r = |s: &str| berth_resources::parse(s).unwrap();
        let cases: Vec<(&str, Option<&str>, Limits)> = vec![
            (
                "",
                None,
                Limits {
                    cores: 1,
                    ram: None,
                    tmp: None,
                },
            ),
            (
                "",
                Some("CORES/2 RAM/4000 TMP#100"),
                Limits {
                    cores: 2,
                    ram: Some(4000),
                    tmp: Some(100),
                },
            ),
            (
                "containerLimit CORES 2 8\ncontainerLimit RAM 1000 8000\ncontainerLimit TMP 50",
                None,
                Limits {
                    cores: 2,
                    ram: Some(1000),
                    tmp: Some(50),
                },
            ),
            (
                "containerLimit RAM 1000 8000",
                Some("RAM/8000"),
                Limits {
                    cores: 1,
                    ram: Some(8000),
                    tmp: None,
                },
            ),
            (
                "containerLimit CORES 2",
                Some("CORES/4"),
                Limits {
                    cores: 4,
                    ram: None,
                    tmp: None,
                },
            ),
        ];
        for (extra, req, want) in cases {
            let req = req.map(r);
            assert_eq!(
                limits(&cfg(extra), req.as_ref()).unwrap(),
                want,
                "{extra:?} {req:?}"
            );
        }
        let err = limits(&cfg("containerLimit RAM 1000 4000"), Some(&r("RAM/8000"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container c1: the job asks for RAM 8000 but /swd/containers/c1.cfg:containerLimit allows at most 4000; ask for RAM/4000 or less"
        );
    }

    #[test]
    fn variables_table() {
        let l = Limits {
            cores: 2,
            ram: Some(100),
            tmp: None,
        };
        let facts = JobFacts {
            host: "h1",
            project: "berth",
            slot: 3,
            job_id: "42",
            job_dir: Path::new("/home/u/w"),
            limits: &l,
        };
        let names = |c: &Config| -> Vec<String> {
            hook_variables(c, &facts)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        };
        assert_eq!(
            names(&cfg("")),
            [
                "HOST=h1",
                "VOV_PROJECT_NAME=berth",
                "VOV_JOBSLOT=3",
                "VOV_CONTAINER_NAME=c1",
                "VOV_JOBID=42",
                "VOV_CONTAINER_CORES=2",
                "VOV_CONTAINER_RAM=100"
            ]
        );
        let with_dir = cfg("containerHooksRunDir /var/tmp/hooks");
        assert!(names(&with_dir).contains(&"VOV_CONTAINER_JOB_RUNDIR=/home/u/w".to_string()));
        assert_eq!(
            hook_dir(&with_dir, Path::new("/home/u/w")),
            Path::new("/var/tmp/hooks")
        );
        assert_eq!(
            hook_dir(&cfg(""), Path::new("/home/u/w")),
            Path::new("/home/u/w")
        );
    }
}
