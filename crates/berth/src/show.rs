//! How jobs are shown to people: local times, durations, tables sized to their content,
//! and the fields `-o` chooses; and to programs (`--json`: RFC 3339 and milliseconds).

use anyhow::{bail, Result};
use berth_proto::{JobView, State};

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A time as people read it, in the local time zone: `2026-12-04 21:18:12`.
pub fn local_time(ms: u64) -> String {
    match jiff::Timestamp::from_millisecond(ms as i64) {
        Ok(t) => t
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => ms.to_string(),
    }
}

/// A time for programs: RFC 3339, UTC, with milliseconds.
pub fn rfc3339(ms: u64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms as i64)
        .ok()
        .map(|t| format!("{t:.3}"))
}

/// A duration as people read it: `0.4s`, `12s`, `1m12s`, `2h03m`, `3d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=9 => format!("{}.{}s", s, (ms % 1000) / 100),
        10..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A duration as `--time` takes it: `90` (seconds), `10m`, `2h30m`, `1d`, `1h30m10s`;
/// in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "{text:?} is not a duration ({why}): give seconds (90) or amounts with d, h, m, s \
             (10m, 2h30m, 1d)"
        )
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .filter(|ms| *ms > 0)
            .ok_or_else(|| bad("it must be above 0"));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut last_unit = 5;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let (rank, ms) = match c {
            'd' => (0, 86_400_000),
            'h' => (1, 3_600_000),
            'm' => (2, 60_000),
            's' => (3, 1000),
            _ => return Err(bad(&format!("{c:?} is not a unit"))),
        };
        if num.is_empty() {
            return Err(bad(&format!("no number before {c:?}")));
        }
        if last_unit != 5 && rank <= last_unit {
            return Err(bad("units go from the largest to the smallest, once each"));
        }
        last_unit = rank;
        let n: u64 = num.parse().map_err(|_| bad("a number is too large"))?;
        num.clear();
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("it is too long"))?;
    }
    if !num.is_empty() {
        return Err(bad("a number without a unit after another amount"));
    }
    if total == 0 {
        return Err(bad("it must be above 0"));
    }
    Ok(total)
}

/// How long the job has run (or ran); None before it starts.
pub fn elapsed_ms(v: &JobView, now: u64) -> Option<u64> {
    let start = v.started_ms?;
    Some(v.ended_ms.unwrap_or(now).max(start) - start)
}

/// How long the job waited in the queue (or has waited, while it waits); None for one
/// that ended without ever starting.
pub fn queued_ms(v: &JobView, now: u64) -> Option<u64> {
    let until = match (v.started_ms, v.state) {
        (Some(s), _) => s,
        (None, State::Queued) => now,
        (None, _) => return None,
    };
    Some(until.max(v.submitted_ms) - v.submitted_ms)
}

/// A job as `--json` gives it: the server's fields (times in milliseconds), and the same
/// times in RFC 3339 with the durations in milliseconds.
pub fn json_job(v: &JobView, now: u64) -> serde_json::Value {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    if let Some(o) = j.as_object_mut() {
        o.insert("submitted".into(), rfc3339(v.submitted_ms).into());
        o.insert("started".into(), v.started_ms.and_then(rfc3339).into());
        o.insert("ended".into(), v.ended_ms.and_then(rfc3339).into());
        o.insert("elapsed_ms".into(), elapsed_ms(v, now).into());
        o.insert("queued_ms".into(), queued_ms(v, now).into());
    }
    j
}

/// The fields `-o` may name, with their headings.
pub const FIELDS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("state", "STATE"),
    ("user", "USER"),
    ("name", "NAME"),
    ("exit", "EXIT"),
    ("reason", "REASON"),
    ("tasker", "TASKER"),
    ("slot", "SLOT"),
    ("submitted", "SUBMITTED"),
    ("started", "STARTED"),
    ("ended", "ENDED"),
    ("queued", "QUEUED"),
    ("elapsed", "ELAPSED"),
    ("array", "ARRAY"),
    ("index", "INDEX"),
    ("priority", "PRIORITY"),
    ("resources", "RESOURCES"),
    ("dir", "DIRECTORY"),
    ("log", "LOG"),
    ("command", "COMMAND"),
];

/// `berth list`'s columns when `-o` does not say.
pub const LIST_DEFAULT: &str = "id,state,user,name,tasker,elapsed,exit,command";

/// Parses `-o id,state,...`.
pub fn parse_fields(s: &str) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match FIELDS.iter().find(|(n, _)| n.eq_ignore_ascii_case(f)) {
            Some((n, _)) => out.push(*n),
            None => bail!(
                "-o {s}: no field {f:?}; the fields are {}",
                FIELDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(",")
            ),
        }
    }
    if out.is_empty() {
        bail!("-o: name at least one field, such as -o id,state");
    }
    Ok(out)
}

/// The heading of a field.
pub fn heading(field: &str) -> &'static str {
    FIELDS
        .iter()
        .find(|(n, _)| *n == field)
        .map(|(_, h)| *h)
        .unwrap_or("?")
}

/// One field of a job, as text (`-` when it has none); control characters shown, not
/// obeyed.
pub fn field(v: &JobView, f: &str, now: u64) -> String {
    let dash = || "-".to_string();
    let s = match f {
        "id" => v.id.to_string(),
        "state" => v.state.as_str().to_string(),
        "user" => v.user.clone(),
        "name" => v.name.clone().unwrap_or_else(dash),
        "exit" => v.exit_code.map(|c| c.to_string()).unwrap_or_else(dash),
        "reason" => v.reason.clone().unwrap_or_else(dash),
        "tasker" => v.tasker.clone().unwrap_or_else(dash),
        "slot" => v.slot.map(|s| s.to_string()).unwrap_or_else(dash),
        "submitted" => local_time(v.submitted_ms),
        "started" => v.started_ms.map(local_time).unwrap_or_else(dash),
        "ended" => v.ended_ms.map(local_time).unwrap_or_else(dash),
        "queued" => queued_ms(v, now).map(duration).unwrap_or_else(dash),
        "elapsed" => elapsed_ms(v, now).map(duration).unwrap_or_else(dash),
        "array" => v.array.map(|(a, _)| a.to_string()).unwrap_or_else(dash),
        "index" => v.array.map(|(_, i)| i.to_string()).unwrap_or_else(dash),
        "priority" => v.priority.to_string(),
        "resources" => v.resources.clone().unwrap_or_else(dash),
        "dir" => v.dir.clone(),
        "log" => v.log.clone(),
        "command" => v.command.join(" "),
        _ => dash(),
    };
    crate::jobs::shown(&s).into_owned()
}

/// A table with a heading, its columns as wide as their widest cell, two spaces apart;
/// the fields named in `right` aligned right.
pub fn table(headings: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    use comfy_table::{CellAlignment, ContentArrangement, Table};
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headings.to_vec());
    for r in rows {
        t.add_row(r.clone());
    }
    let n = headings.len();
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i + 1 < n { 2 } else { 0 }));
        if right.contains(&i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(0), "0.0s");
        assert_eq!(duration(450), "0.4s");
        assert_eq!(duration(9_999), "9.9s");
        assert_eq!(duration(12_000), "12s");
        assert_eq!(duration(72_000), "1m12s");
        assert_eq!(duration(3_600_000 + 3 * 60_000), "1h03m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn durations_parse_as_people_write_them() {
        assert_eq!(parse_duration("90").unwrap(), 90_000);
        assert_eq!(parse_duration("10m").unwrap(), 600_000);
        assert_eq!(parse_duration("2h30m").unwrap(), 9_000_000);
        assert_eq!(parse_duration("1d").unwrap(), 86_400_000);
        assert_eq!(parse_duration("1h30m10s").unwrap(), 5_410_000);
        for bad in [
            "",
            "0",
            "10x",
            "m",
            "30m2h",
            "1h1h",
            "10m5",
            "-5",
            "99999999999999999999d",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn times_for_programs_are_rfc3339_with_milliseconds() {
        assert_eq!(
            rfc3339(1_796_419_276_180).as_deref(),
            Some("2026-12-04T21:21:16.180Z")
        );
    }

    #[test]
    fn fields_are_checked_and_named_in_errors() {
        assert_eq!(parse_fields("id,State").unwrap(), vec!["id", "state"]);
        let e = parse_fields("id,colour").unwrap_err().to_string();
        assert!(e.contains("\"colour\"") && e.contains("id,state"), "{e}");
        assert!(parse_fields(",").is_err());
    }

    #[test]
    fn columns_are_as_wide_as_their_content() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a-rather-long-job-name".into()],
                vec!["12345".into(), "b".into()],
            ],
            &[0],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "   ID  NAME");
        assert_eq!(lines[1], "    1  a-rather-long-job-name");
        assert_eq!(lines[2], "12345  b");
    }
}
