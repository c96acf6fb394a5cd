//! Table tests of [`super::match_tensors`]: which tensors a restore loads, and when it fails.

use super::*;
use std::path::Path;

fn w(name: &str, shape: &[u64], optimizer: bool) -> Wanted {
    Wanted {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        optimizer,
    }
}

fn src(tensors: &[(&str, Dtype, &[u64])]) -> BTreeMap<String, SourceTensor> {
    tensors
        .iter()
        .map(|(n, d, s)| {
            let t = SourceTensor {
                dtype: *d,
                shape: s.to_vec(),
            };
            ((*n).to_owned(), t)
        })
        .collect()
}

/// (config, run tensors, source tensors, expected: Ok(loaded run names, missing, unexpected)
/// or Err(substrings of the message)).
#[test]
fn matching_table() {
    type Expect = std::result::Result<
        (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>),
        Vec<&'static str>,
    >;
    type Source = &'static [(&'static str, Dtype, &'static [u64])];
    const F: Dtype = Dtype::F32;
    let run = vec![
        w("l1.w", &[4, 3], false),
        w("l1.b", &[4], false),
        w("optim.m.l1.w", &[4, 3], true),
        w("extra.buf", &[8], true),
    ];
    let base = RestoreConfig::new("x");
    let full: &[(&str, Dtype, &[u64])] = &[
        ("l1.w", F, &[4, 3]),
        ("l1.b", F, &[4]),
        ("optim.m.l1.w", F, &[4, 3]),
        ("extra.buf", F, &[8]),
    ];
    let table: Vec<(&str, RestoreConfig, Source, Expect)> = vec![
        // NeMo's default: the model state only; the source's optimizer state is not "unexpected".
        (
            "model only",
            base.clone(),
            full,
            Ok((vec!["l1.b", "l1.w"], vec![], vec![])),
        ),
        (
            "with the optimizer",
            base.clone().load_optim_state(true),
            full,
            Ok((
                vec!["extra.buf", "l1.b", "l1.w", "optim.m.l1.w"],
                vec![],
                vec![],
            )),
        ),
        (
            "optimizer only",
            base.clone().load_model_state(false).load_optim_state(true),
            full,
            Ok((vec!["extra.buf", "optim.m.l1.w"], vec![], vec![])),
        ),
        // A weights-only safetensors file is enough for the model state.
        (
            "weights-only source",
            base.clone(),
            &[("l1.w", F, &[4, 3]), ("l1.b", F, &[4])],
            Ok((vec!["l1.b", "l1.w"], vec![], vec![])),
        ),
        // Strict (the default): a missing tensor fails, naming it.
        (
            "missing, strict",
            base.clone(),
            &[("l1.w", F, &[4, 3])],
            Err(vec!["1 missing", "\"l1.b\"", "nothing was loaded"]),
        ),
        // A mismatch names the tensor and both dtypes and shapes.
        (
            "mismatched shape",
            base.clone(),
            &[("l1.w", F, &[3, 4]), ("l1.b", F, &[4])],
            Err(vec![
                "\"l1.w\": the run has F32 [4, 3], the source F32 [3, 4]",
            ]),
        ),
        (
            "mismatched dtype",
            base.clone(),
            &[("l1.w", Dtype::BF16, &[4, 3]), ("l1.b", F, &[4])],
            Err(vec!["the run has F32 [4, 3], the source BF16 [4, 3]"]),
        ),
        // Unexpected tensors are reported, not fatal, unless StrictAll.
        (
            "unexpected, strict",
            base.clone(),
            &[("l1.w", F, &[4, 3]), ("l1.b", F, &[4]), ("head.w", F, &[2])],
            Ok((vec!["l1.b", "l1.w"], vec![], vec!["head.w"])),
        ),
        (
            "unexpected, strict all",
            base.clone().strictness(Strictness::StrictAll),
            &[("l1.w", F, &[4, 3]), ("l1.b", F, &[4]), ("head.w", F, &[2])],
            Err(vec!["1 unexpected (\"head.w\")"]),
        ),
        // Report: what matches loads, the rest is listed.
        (
            "report",
            base.clone().strictness(Strictness::Report),
            &[("l1.w", F, &[3, 4]), ("head.w", F, &[2])],
            Ok((vec![], vec!["l1.b"], vec!["head.w"])),
        ),
        // A prefix map strips the checkpoint's prefix (NeMo / HF's "model.").
        (
            "prefix map",
            base.clone().prefix_map("model.", ""),
            &[("model.l1.w", F, &[4, 3]), ("model.l1.b", F, &[4])],
            Ok((vec!["l1.b", "l1.w"], vec![], vec![])),
        ),
        (
            "without the prefix map",
            base.clone(),
            &[("model.l1.w", F, &[4, 3]), ("model.l1.b", F, &[4])],
            Err(vec!["2 missing", "prefix_map"]),
        ),
        // Two source names onto one run name is refused.
        (
            "collision",
            base.clone().prefix_map("a.", "").prefix_map("b.", ""),
            &[("a.l1.w", F, &[4, 3]), ("b.l1.w", F, &[4, 3])],
            Err(vec!["both become \"l1.w\""]),
        ),
    ];
    for (case, config, source, expect) in table {
        let got = match_tensors(&config, &run, &src(source), Path::new("/src"));
        match (got, expect) {
            (Ok(m), Ok((loaded, missing, unexpected))) => {
                let mut names: Vec<&str> = m.load.keys().map(String::as_str).collect();
                names.sort();
                assert_eq!(names, loaded, "{case}: loaded");
                assert_eq!(m.report.missing, missing, "{case}: missing");
                assert_eq!(m.report.unexpected, unexpected, "{case}: unexpected");
                for (to, from) in &m.load {
                    assert_eq!(&config.map_name(from), to, "{case}");
                }
            }
            (Err(e), Err(parts)) => {
                let text = e.to_string();
                for part in parts {
                    assert!(text.contains(part), "{case}: {text:?} lacks {part:?}");
                }
            }
            (got, expect) => panic!("{case}: got {got:?}, expected {expect:?}"),
        }
    }
}

#[test]
fn prefix_map_applies_the_first_matching_pair() {
    let c = RestoreConfig::new("x")
        .prefix_map("model.decoder.", "dec.")
        .prefix_map("model.", "");
    assert_eq!(c.map_name("model.decoder.w"), "dec.w");
    assert_eq!(c.map_name("model.w"), "w");
    assert_eq!(c.map_name("w"), "w");
}
