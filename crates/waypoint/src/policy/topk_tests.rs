//! Tables for [`TopK`]: strict improvement, ties, NaN as the worst score, min and max, k = -1, 0, 1, 3.

use super::*;

const NAN: f64 = f64::NAN;

/// Inserts `(name, score)` in order into a fresh top-k; returns what each insert displaced and the
/// names kept at the end (oldest first).
fn run(k: i64, mode: Mode, inserts: &[(&str, f64)]) -> (Vec<Option<String>>, Vec<String>) {
    let mut top = TopK::new(k, mode);
    let displaced = inserts.iter().map(|(n, s)| top.insert(*n, *s)).collect();
    (displaced, top.names().map(String::from).collect())
}

#[test]
fn insert_table() {
    let s = |x: &str| Some(x.to_string());
    #[rustfmt::skip]
    type Row<'a> = (i64, Mode, &'a [(&'a str, f64)], &'a [Option<String>], &'a [&'a str]);
    let table: &[Row] = &[
        // k = 3, min: fills up, then a strictly better score displaces the worst.
        (
            3,
            Mode::Min,
            &[("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 0.5)],
            &[None, None, None, s("a")],
            &["b", "c", "d"],
        ),
        // A tie with the k-th does not enter: the new name is what is displaced.
        (
            3,
            Mode::Min,
            &[("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 3.0)],
            &[None, None, None, s("d")],
            &["a", "b", "c"],
        ),
        // Worse than the k-th: not kept.
        (
            3,
            Mode::Min,
            &[("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 4.0)],
            &[None, None, None, s("d")],
            &["a", "b", "c"],
        ),
        // Max mode mirrors it.
        (
            2,
            Mode::Max,
            &[("a", 0.5), ("b", 0.7), ("c", 0.6), ("d", 0.6)],
            &[None, None, s("a"), s("d")],
            &["b", "c"],
        ),
        // NaN enters a top-k that is not full, and is the first displaced.
        (
            2,
            Mode::Min,
            &[("a", NAN), ("b", 9.0), ("c", 8.0)],
            &[None, None, s("a")],
            &["b", "c"],
        ),
        (
            2,
            Mode::Max,
            &[("a", NAN), ("b", -9.0), ("c", -8.0)],
            &[None, None, s("a")],
            &["b", "c"],
        ),
        // NaN never enters a full top-k, even one holding a NaN.
        (
            2,
            Mode::Min,
            &[("a", 1.0), ("b", 2.0), ("c", NAN)],
            &[None, None, s("c")],
            &["a", "b"],
        ),
        (
            2,
            Mode::Min,
            &[("a", NAN), ("b", 2.0), ("c", NAN)],
            &[None, None, s("c")],
            &["a", "b"],
        ),
        // Infinities are ordinary scores.
        (
            1,
            Mode::Min,
            &[("a", f64::INFINITY), ("b", 1e300)],
            &[None, s("a")],
            &["b"],
        ),
        // Equal worst entries: the newest goes first (incumbents win ties).
        (
            3,
            Mode::Min,
            &[("a", 2.0), ("b", 2.0), ("c", 1.0), ("d", 0.0)],
            &[None, None, None, s("b")],
            &["a", "c", "d"],
        ),
        // k = 1.
        (
            1,
            Mode::Min,
            &[("a", 1.0), ("b", 0.5), ("c", 0.5)],
            &[None, s("a"), s("c")],
            &["b"],
        ),
        // k = -1 keeps everything, NaN included.
        (
            -1,
            Mode::Min,
            &[("a", 1.0), ("b", NAN), ("c", 5.0)],
            &[None, None, None],
            &["a", "b", "c"],
        ),
        // k = 0 keeps nothing.
        (
            0,
            Mode::Min,
            &[("a", 1.0), ("b", 0.0)],
            &[s("a"), s("b")],
            &[],
        ),
    ];
    for (k, mode, inserts, want_displaced, want_kept) in table {
        let (displaced, kept) = run(*k, *mode, inserts);
        assert_eq!(&displaced, want_displaced, "k={k} {mode} {inserts:?}");
        assert_eq!(kept, *want_kept, "k={k} {mode} {inserts:?}");
    }
}

#[test]
fn would_enter_table() {
    let full = |mode| {
        let mut t = TopK::new(2, mode);
        t.insert("a", 1.0);
        t.insert("b", 2.0);
        t
    };
    let table = [
        (full(Mode::Min), 1.5, true),
        (full(Mode::Min), 2.0, false),
        (full(Mode::Min), 2.5, false),
        (full(Mode::Min), NAN, false),
        (full(Mode::Max), 1.5, true),
        (full(Mode::Max), 1.0, false),
        (full(Mode::Max), NAN, false),
        (TopK::new(2, Mode::Min), NAN, true),
        (TopK::new(-1, Mode::Min), NAN, true),
        (TopK::new(0, Mode::Min), -1e300, false),
    ];
    for (top, score, want) in table {
        assert_eq!(top.would_enter(score), want, "{top:?} {score}");
    }
}

#[test]
fn best_and_kth() {
    let mut t = TopK::new(3, Mode::Min);
    assert!(t.best().is_none() && t.kth().is_none() && t.is_empty());
    t.insert("a", NAN);
    assert_eq!(t.best().map(|e| e.name.as_str()), Some("a"));
    t.insert("b", 2.0);
    t.insert("c", 2.0);
    assert_eq!(t.best().map(|e| e.name.as_str()), Some("b"));
    assert_eq!(t.kth().map(|e| e.name.as_str()), Some("a"));
    assert_eq!(t.remove("a").map(|e| e.name), Some("a".to_string()));
    assert_eq!(t.remove("a"), None);
    assert_eq!(t.kth().map(|e| e.name.as_str()), Some("c"));
    assert_eq!(t.len(), 2);
    assert!(t.contains("b") && !t.contains("a"));
}

#[test]
fn trim_drains_a_surplus_after_k_was_lowered() {
    let entries = [("a", 1.0), ("b", 4.0), ("c", 2.0), ("d", 3.0)]
        .map(|(n, s)| TopKEntry {
            name: n.into(),
            score: s,
        })
        .to_vec();
    let mut t = TopK::with_entries(2, Mode::Min, entries);
    assert_eq!(t.trim(), vec!["b".to_string(), "d".to_string()]);
    assert_eq!(t.names().collect::<Vec<_>>(), ["a", "c"]);
    assert!(t.trim().is_empty());
}

#[test]
fn json_round_trip_keeps_nan_and_infinities() {
    let mut t = TopK::new(-1, Mode::Max);
    for (n, s) in [
        ("a", NAN),
        ("b", f64::INFINITY),
        ("c", f64::NEG_INFINITY),
        ("d", 0.25),
    ] {
        t.insert(n, s);
    }
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""score":"nan""#), "{json}");
    assert!(
        json.contains(r#""score":"inf""#) && json.contains(r#""score":"-inf""#),
        "{json}"
    );
    assert!(
        json.contains(r#""score":0.25"#) && json.contains(r#""mode":"max""#),
        "{json}"
    );
    let back: TopK = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    assert!(back.entries()[0].score.is_nan());
    let bad = r#"{"k":1,"mode":"min","entries":[{"name":"a","score":"NaN!"}]}"#;
    assert!(serde_json::from_str::<TopK>(bad).is_err());
    let int = r#"{"k":1,"mode":"min","entries":[{"name":"a","score":3}]}"#;
    assert_eq!(
        serde_json::from_str::<TopK>(int).unwrap().entries()[0].score,
        3.0
    );
}
