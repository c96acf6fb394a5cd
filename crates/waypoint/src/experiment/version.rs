//! Which version directory a run writes into: pure rules, table-tested. It must not read the
//! environment or the clock itself (the caller hands their values in); which rank a process is
//! belongs to [`crate::dist::RankInfo`].

use crate::error::{Error, Result};

/// Environment variable that fixes the version (NeMo's `NEMO_EXPM_VERSION`). The version a run
/// chose is also what [`crate::Experiment::child_env`] hands to the processes it starts.
pub const VERSION_ENV: &str = "WAYPOINT_VERSION";
/// The `strftime` format of a datetime version, NeMo's: `2025-03-01_14-05-09`, in local time.
pub const DATETIME_FORMAT: &str = "%Y-%m-%d_%H-%M-%S";

/// Where the version came from (for the log line and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionSource {
    /// `explicit_log_dir` is used as it is: no version.
    ExplicitLogDir,
    /// The `version` knob.
    Knob,
    /// [`VERSION_ENV`].
    Env,
    /// `resume_if_exists` without a version: no version directory, so that the same command
    /// finds the same checkpoints.
    Resume,
    /// `use_datetime_version`: the start time.
    Datetime,
    /// Nothing asked for one.
    None,
    /// Rank 0 chose it and broadcast it (a run with a coordinator).
    Rank0,
}

/// What [`resolve_version`] decides from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VersionInputs<'a> {
    pub explicit_log_dir: bool,
    pub knob: Option<&'a str>,
    pub env: Option<&'a str>,
    pub resume_if_exists: bool,
    pub use_datetime_version: bool,
    pub global_rank: u64,
}

/// NeMo's order: `explicit_log_dir` (no version) > the `version` knob > [`VERSION_ENV`] (empty
/// counts as unset) > no version when resuming > the datetime when `use_datetime_version` >
/// none. Only global rank 0 may invent a datetime version: another rank without a given one
/// would pick a different second, so it is an error that says how to pass rank 0's choice.
pub(crate) fn resolve_version(
    inputs: VersionInputs<'_>,
    now: impl FnOnce() -> String,
) -> Result<(Option<String>, VersionSource)> {
    if inputs.explicit_log_dir {
        return Ok((None, VersionSource::ExplicitLogDir));
    }
    if let Some(v) = inputs.knob {
        check_component("version", v)?;
        return Ok((Some(v.to_owned()), VersionSource::Knob));
    }
    if let Some(v) = inputs.env.filter(|v| !v.is_empty()) {
        check_component(VERSION_ENV, v)?;
        return Ok((Some(v.to_owned()), VersionSource::Env));
    }
    if inputs.resume_if_exists {
        return Ok((None, VersionSource::Resume));
    }
    if inputs.use_datetime_version {
        if inputs.global_rank != 0 {
            return Err(Error::InvalidArgument {
                name: "use_datetime_version",
                reason: format!(
                    "global rank {} cannot choose a datetime version on its own (it would differ from rank 0's): set version, or pass rank 0's choice in {VERSION_ENV} (Experiment::child_env)",
                    inputs.global_rank
                ),
            });
        }
        return Ok((Some(now()), VersionSource::Datetime));
    }
    Ok((None, VersionSource::None))
}

/// The datetime version of this instant in the local time zone (NeMo's choice: the time the
/// person who started the run reads on their clock; `TZ`, else `/etc/localtime`). jiff falls
/// back to UTC when the local zone cannot be determined (containers often run in UTC anyway).
pub(crate) fn datetime_version() -> String {
    jiff::ZonedDateTime::now()
        .strftime(DATETIME_FORMAT)
        .to_string()
}

/// Refuses what cannot be one directory name of its own: empty, `.`/`..` or a leading `.`
/// (hidden, and the lock's and temporaries' namespace), a `/`, a NUL, or over 255 bytes.
pub(crate) fn check_component(knob: &'static str, value: &str) -> Result<()> {
    let problem = if value.is_empty() {
        Some("must not be empty")
    } else if value.starts_with('.') {
        Some("must not start with '.'")
    } else if value.contains(['/', '\\', '\0']) {
        Some("must be one path component (no '/', '\\' or NUL)")
    } else if value.len() > 255 {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::InvalidArgument {
            name: knob,
            reason: format!("{value:?} {p}"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-03-01_14-05-09";

    fn inputs() -> VersionInputs<'static> {
        VersionInputs {
            explicit_log_dir: false,
            knob: None,
            env: None,
            resume_if_exists: false,
            use_datetime_version: true,
            global_rank: 0,
        }
    }

    #[test]
    fn version_resolution_table() {
        use VersionSource as S;
        let base = inputs();
        // (case, inputs, expected version, expected source)
        let table: Vec<(&str, VersionInputs<'static>, Option<&str>, S)> = vec![
            ("defaults: datetime", base, Some(NOW), S::Datetime),
            (
                "knob wins over everything",
                VersionInputs {
                    knob: Some("v1"),
                    env: Some("e"),
                    resume_if_exists: true,
                    ..base
                },
                Some("v1"),
                S::Knob,
            ),
            (
                "env over resume and datetime",
                VersionInputs {
                    env: Some("e"),
                    resume_if_exists: true,
                    ..base
                },
                Some("e"),
                S::Env,
            ),
            (
                "an empty env var is unset",
                VersionInputs {
                    env: Some(""),
                    ..base
                },
                Some(NOW),
                S::Datetime,
            ),
            (
                "resume without a version: no version dir",
                VersionInputs {
                    resume_if_exists: true,
                    ..base
                },
                None,
                S::Resume,
            ),
            (
                "no datetime: none",
                VersionInputs {
                    use_datetime_version: false,
                    ..base
                },
                None,
                S::None,
            ),
            (
                "explicit_log_dir: none, even with env",
                VersionInputs {
                    explicit_log_dir: true,
                    env: Some("e"),
                    ..base
                },
                None,
                S::ExplicitLogDir,
            ),
            (
                "another rank takes rank 0's choice from the env",
                VersionInputs {
                    env: Some(NOW),
                    global_rank: 3,
                    ..base
                },
                Some(NOW),
                S::Env,
            ),
            (
                "another rank resuming needs no version",
                VersionInputs {
                    resume_if_exists: true,
                    global_rank: 3,
                    ..base
                },
                None,
                S::Resume,
            ),
        ];
        for (case, input, want, source) in table {
            let got = resolve_version(input, || NOW.to_owned()).unwrap();
            assert_eq!(got, (want.map(str::to_owned), source), "{case}");
        }
    }

    #[test]
    fn version_refusals_name_their_origin() {
        let base = inputs();
        let table: Vec<(VersionInputs<'static>, &str, &str)> = vec![
            (
                VersionInputs {
                    knob: Some("a/b"),
                    ..base
                },
                "version",
                "one path component",
            ),
            (
                VersionInputs {
                    knob: Some(""),
                    ..base
                },
                "version",
                "empty",
            ),
            (
                VersionInputs {
                    knob: Some(".."),
                    ..base
                },
                "version",
                "'.'",
            ),
            (
                VersionInputs {
                    env: Some("../up"),
                    ..base
                },
                VERSION_ENV,
                "'.'",
            ),
            (
                VersionInputs {
                    env: Some("a\0"),
                    ..base
                },
                VERSION_ENV,
                "NUL",
            ),
            (
                VersionInputs {
                    global_rank: 1,
                    ..base
                },
                "use_datetime_version",
                "rank 0",
            ),
        ];
        for (input, knob, why) in table {
            match resolve_version(input, || NOW.to_owned()) {
                Err(Error::InvalidArgument { name, reason }) => {
                    assert_eq!(name, knob, "{input:?}");
                    assert!(reason.contains(why), "{input:?}: {reason}");
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn datetime_versions_have_nemos_shape() {
        let v = datetime_version();
        assert_eq!(v.len(), NOW.len(), "{v}");
        let shape: String = v
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99_99-99-99");
        check_component("version", &v).unwrap();
    }
}
