//! The arguments of `waypoint ls` and `waypoint prune` and their resolution: the directory (a
//! run's version directory, a checkpoints directory, or an object-store URL of either), the
//! retention rules and `--older-than`'s duration. Nothing here reads a checkpoint.

use super::UsageError;
use clap::Args;
use std::path::PathBuf;
use waypoint::storage::{ObjectUrl, is_url};

/// Examples shown by `waypoint ls --help`.
pub const LS_EXAMPLES: &str = "\
Examples:
  waypoint ls runs/demo/version_0              # a run: checkpoints, lock, AutoResume's pick
  waypoint ls runs/demo/version_0/checkpoints  # a checkpoints directory
  waypoint ls s3://bucket/runs/demo/checkpoints --json

Exit codes:
  0  listed (also when nothing is committed)
  1  the directory cannot be listed, or a record cannot be read
  2  usage error: bad flag or value, or a path that does not exist";

/// Examples shown by `waypoint prune --help`.
pub const PRUNE_EXAMPLES: &str = "\
Examples:
  waypoint prune runs/demo/version_0 --keep-top-k 3 --keep-last          # what would go
  waypoint prune runs/demo/version_0 --keep-top-k 3 --keep-last --yes    # delete it
  waypoint prune ckpts --keep-every-n-steps 1000 --older-than 7d --json

A checkpoint is kept when any keep rule keeps it; --older-than makes only checkpoints older than
that eligible. The checkpoint AutoResume would pick is never deleted. Directories that are not
committed checkpoints are listed, never deleted.

Exit codes:
  0  success: nothing to delete, the dry run listed what would go, or --yes deleted it
  1  a deletion failed (the others were done), or the directory cannot be read
  2  usage error; or a live run holds the directory's lock (nothing is deleted)";

/// Arguments of `waypoint ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// A run's version directory (holding `checkpoints/`), a checkpoints directory, or an
    /// object-store URL of either.
    pub dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `waypoint prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// A run's version directory (holding `checkpoints/`), a checkpoints directory, or an
    /// object-store URL of either.
    pub dir: PathBuf,
    /// Keep the N best checkpoints by the monitored value (the policy state's mode).
    #[arg(long, value_name = "N")]
    pub keep_top_k: Option<usize>,
    /// Keep the `-last` checkpoints.
    #[arg(long)]
    pub keep_last: bool,
    /// Keep checkpoints whose step is a multiple of N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_every_n_steps: Option<u64>,
    /// Only checkpoints older than this are eligible (s, m, h, d, w: `90m`, `7d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<u64>,
    /// Only print what would be deleted (the default).
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
    /// Delete what the rules do not keep.
    #[arg(long)]
    pub yes: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where `ls` and `prune` look: a local directory or a URL, as given (checked to exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirLocation {
    /// A local directory (canonical).
    Local(PathBuf),
    /// An object-store URL (normalised).
    Url(String),
}

/// What `waypoint ls` runs on.
#[derive(Debug)]
pub struct LsConfig {
    /// The directory.
    pub dir: DirLocation,
    /// JSON instead of text.
    pub json: bool,
}

/// The retention rules of `waypoint prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `--keep-top-k`.
    pub keep_top_k: Option<usize>,
    /// `--keep-last`.
    pub keep_last: bool,
    /// `--keep-every-n-steps` (at least 1).
    pub keep_every_n_steps: Option<u64>,
    /// `--older-than`, in seconds.
    pub older_than_s: Option<u64>,
}

/// What `waypoint prune` runs on.
#[derive(Debug)]
pub struct PruneConfig {
    /// The directory.
    pub dir: DirLocation,
    /// The rules.
    pub rules: Rules,
    /// `--yes`: delete; otherwise a dry run.
    pub delete: bool,
    /// JSON instead of text.
    pub json: bool,
}

impl DirLocation {
    /// A local directory that must exist, or a URL naming a prefix inside a bucket.
    pub fn resolve(given: &std::path::Path) -> Result<Self, UsageError> {
        if let Some(url) = given.to_str().filter(|g| is_url(g)) {
            let parsed = ObjectUrl::parse(url).map_err(|e| UsageError(e.to_string()))?;
            return match parsed {
                Some(p) if !p.prefix.is_empty() => Ok(DirLocation::Url(p.to_url())),
                _ => Err(UsageError(format!(
                    "{url} names a bucket, not a directory inside it (s3://bucket/prefix)"
                ))),
            };
        }
        let path = given.canonicalize().map_err(|e| {
            UsageError(format!("directory {} cannot be used: {e}", given.display()))
        })?;
        if !path.is_dir() {
            return Err(UsageError(format!(
                "{} is not a directory",
                given.display()
            )));
        }
        Ok(DirLocation::Local(path))
    }
}

impl PruneConfig {
    /// Validates `waypoint prune`'s arguments: at least one rule.
    pub fn resolve(args: PruneArgs) -> Result<Self, UsageError> {
        let rules = Rules {
            keep_top_k: args.keep_top_k,
            keep_last: args.keep_last,
            keep_every_n_steps: args.keep_every_n_steps,
            older_than_s: args.older_than,
        };
        if rules == Rules::default() {
            return Err(UsageError(
                "prune needs at least one rule: --keep-top-k, --keep-last, --keep-every-n-steps or --older-than".into(),
            ));
        }
        Ok(PruneConfig {
            dir: DirLocation::resolve(&args.dir)?,
            rules,
            delete: args.yes,
            json: args.json,
        })
    }
}

/// A duration: a whole number and a unit `s`, `m`, `h`, `d` or `w` (`90m`, `7d`), in seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (s, m, h, d, w): e.g. 7d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number: e.g. 7d"))?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: s, m, h, d or w"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("45s", Ok(45)),
            ("90m", Ok(5400)),
            ("2h", Ok(7200)),
            ("7d", Ok(604_800)),
            ("1w", Ok(604_800)),
            ("0d", Ok(0)),
            ("7", Err(())),
            ("d", Err(())),
            ("7y", Err(())),
            ("-1d", Err(())),
            ("99999999999999999999d", Err(())),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration(text).map_err(|_| ()), want, "{text}");
        }
    }
}
