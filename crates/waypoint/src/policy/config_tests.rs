//! Tables for every knob of [`ModelCheckpoint`] and every misconfiguration the builder refuses.

use super::*;

#[test]
fn defaults_are_nemo_defaults() {
    let c = ModelCheckpoint::builder().build().unwrap();
    assert_eq!(c.monitor(), Some("val_loss"));
    assert_eq!(c.mode(), Mode::Min);
    assert_eq!(c.save_top_k(), 3);
    assert_eq!(c.save_last(), SaveLast::Yes);
    assert_eq!(c.trigger(), Trigger::EveryNEpochs(1));
    assert_eq!(c.every_n_epochs(), Some(1));
    assert_eq!(c.every_n_train_steps(), None);
    assert_eq!(c.train_time_interval(), None);
    assert!(!c.save_on_train_epoch_end());
    assert!(!c.save_weights_only());
    assert!(!c.save_optim_on_train_end());
    assert!(c.always_save_context());
    assert!(c.save_context_on_train_end());
    assert_eq!(c.dirpath(), None);
    assert_eq!(c.filename(), "{name}--{val_loss:.4f}-{epoch}-{step}");
    assert!(c.auto_insert_metric_name());
    assert!(c.enable_version_counter());
}

#[test]
fn every_knob_is_set_and_read_back() {
    let c = ModelCheckpoint::builder()
        .monitor("acc")
        .mode(Mode::Max)
        .save_top_k(-1)
        .save_last(SaveLast::Link)
        .train_time_interval(Duration::from_secs(600))
        .save_on_train_epoch_end(true)
        .save_weights_only(true)
        .save_optim_on_train_end(true)
        .always_save_context(false)
        .save_context_on_train_end(false)
        .dirpath("/ckpts")
        .filename("{name}-{acc:.2f}")
        .auto_insert_metric_name(false)
        .enable_version_counter(false)
        .build()
        .unwrap();
    assert_eq!(c.monitor(), Some("acc"));
    assert_eq!(c.mode(), Mode::Max);
    assert_eq!(c.save_top_k(), -1);
    assert_eq!(c.save_last(), SaveLast::Link);
    assert_eq!(c.train_time_interval(), Some(Duration::from_secs(600)));
    assert_eq!(c.every_n_epochs(), None);
    assert!(c.save_on_train_epoch_end());
    assert!(c.save_weights_only());
    assert!(c.save_optim_on_train_end());
    assert!(!c.always_save_context());
    assert!(!c.save_context_on_train_end());
    assert_eq!(c.dirpath(), Some("/ckpts"));
    assert_eq!(c.filename(), "{name}-{acc:.2f}");
    assert!(!c.auto_insert_metric_name());
    assert!(!c.enable_version_counter());
}

#[test]
fn triggers_and_default_filename_table() {
    let b = ModelCheckpoint::builder;
    let table = [
        (b().every_n_train_steps(30), Trigger::EveryNTrainSteps(30)),
        (b().every_n_epochs(2), Trigger::EveryNEpochs(2)),
        (
            b().train_time_interval(Duration::from_millis(1500)),
            Trigger::TrainTimeInterval(Duration::from_millis(1500)),
        ),
        (b(), Trigger::EveryNEpochs(1)),
    ];
    for (builder, want) in table {
        assert_eq!(builder.build().unwrap().trigger(), want);
    }
    let none = b().no_monitor().save_top_k(1).build().unwrap();
    assert_eq!(none.filename(), "{name}--{epoch}-{step}");
    let acc = b().monitor("acc").build().unwrap();
    assert_eq!(acc.filename(), "{name}--{acc:.4f}-{epoch}-{step}");
}

#[test]
fn top_k_without_monitor_table() {
    // Lightning: without a monitor only -1, 0 and 1 make sense.
    for (k, ok) in [
        (-1, true),
        (0, true),
        (1, true),
        (2, false),
        (3, false),
        (-2, false),
    ] {
        let r = ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(k)
            .build();
        assert_eq!(r.is_ok(), ok, "k={k}");
    }
    for k in [-1, 0, 1, 2, 10] {
        assert!(
            ModelCheckpoint::builder().save_top_k(k).build().is_ok(),
            "k={k}"
        );
    }
}

#[test]
fn misconfigurations_are_refused_with_their_reason() {
    let b = ModelCheckpoint::builder;
    let secs = Duration::from_secs;
    let table = [
        (
            b().save_top_k(-2),
            "invalid save_top_k: must be -1 (keep all), 0 (none) or a count, got -2",
        ),
        (
            b().no_monitor().save_top_k(3),
            "invalid save_top_k: save_top_k=3 needs a monitor",
        ),
        (
            b().monitor(""),
            "invalid monitor: \"\" is not a metric name",
        ),
        (
            b().monitor("a:b"),
            "invalid monitor: \"a:b\" is not a metric name",
        ),
        (b().monitor("a}"), "invalid monitor"),
        (
            b().every_n_train_steps(10).every_n_epochs(1),
            "invalid every_n_train_steps: every_n_train_steps and every_n_epochs are both set",
        ),
        (
            b().every_n_train_steps(10).train_time_interval(secs(5)),
            "every_n_train_steps and train_time_interval are both set",
        ),
        (
            b().every_n_epochs(1).train_time_interval(secs(5)),
            "invalid every_n_epochs: every_n_epochs and train_time_interval are both set",
        ),
        (
            b().every_n_train_steps(1)
                .every_n_epochs(1)
                .train_time_interval(secs(5)),
            "every_n_train_steps and every_n_epochs are both set",
        ),
        (
            b().every_n_train_steps(0),
            "invalid every_n_train_steps: must be at least 1",
        ),
        (
            b().every_n_epochs(0),
            "invalid every_n_epochs: must be at least 1",
        ),
        (
            b().train_time_interval(secs(0)),
            "invalid train_time_interval: must be at least 1",
        ),
        (b().dirpath(""), "invalid dirpath"),
        (b().filename("{step"), "invalid filename: unbalanced braces"),
        (
            b().filename("{step}}"),
            "invalid filename: unbalanced braces",
        ),
        (
            b().filename("{val_loss:.4g}"),
            "invalid filename: unknown format spec \".4g\"",
        ),
        (b().filename("{val_loss:>8}"), "unknown format spec \">8\""),
        (b().filename(".{step}"), "must not start with '.'"),
        (b().filename(""), "must not be empty"),
    ];
    for (builder, needle) in table {
        let err = builder.build().unwrap_err().to_string();
        assert!(err.contains(needle), "want {needle:?} in {err:?}");
    }
}

#[test]
fn mode_and_save_last_parse_like_nemo() {
    assert_eq!("min".parse::<Mode>().unwrap(), Mode::Min);
    assert_eq!("max".parse::<Mode>().unwrap(), Mode::Max);
    let err = "maximum".parse::<Mode>().unwrap_err().to_string();
    assert!(
        err.contains("`mode` can be min, max but got maximum"),
        "{err}"
    );
    for (s, want) in [
        ("true", SaveLast::Yes),
        ("false", SaveLast::No),
        ("link", SaveLast::Link),
    ] {
        assert_eq!(s.parse::<SaveLast>().unwrap(), want);
    }
    assert!("sometimes".parse::<SaveLast>().is_err());
    assert_eq!(Mode::Max.to_string(), "max");
}

#[test]
fn mode_comparisons_put_nan_last() {
    let nan = f64::NAN;
    let table = [
        (Mode::Min, 1.0, 2.0, true),
        (Mode::Min, 2.0, 1.0, false),
        (Mode::Min, 1.0, 1.0, false),
        (Mode::Max, 2.0, 1.0, true),
        (Mode::Max, 1.0, 1.0, false),
        (Mode::Min, 1e9, nan, true),
        (Mode::Max, -1e9, nan, true),
        (Mode::Min, nan, 1.0, false),
        (Mode::Max, nan, 1.0, false),
        (Mode::Min, nan, nan, false),
        (Mode::Min, f64::INFINITY, nan, true),
        (Mode::Min, f64::NEG_INFINITY, 0.0, true),
    ];
    for (mode, a, b, want) in table {
        assert_eq!(mode.is_better(a, b), want, "{mode} {a} {b}");
    }
}

/// Issue 18's knobs: off by default (NeMo's behaviour), read back when set, zero refused naming
/// the knob; `on_missing_monitor` parses `warn` / `error`.
#[test]
fn retention_and_order_knobs() {
    let c = ModelCheckpoint::builder().build().unwrap();
    assert_eq!(
        (
            c.max_to_keep(),
            c.keep_every_n_steps(),
            c.keep_time_interval()
        ),
        (None, None, None)
    );
    assert_eq!(c.on_missing_monitor(), MissingMonitor::Warn);
    assert!(c.uses_default_filename());
    let c = ModelCheckpoint::builder()
        .max_to_keep(2)
        .keep_every_n_steps(1000)
        .keep_time_interval(Duration::from_secs(3600))
        .on_missing_monitor(MissingMonitor::Error)
        .filename("{step}")
        .build()
        .unwrap();
    assert_eq!(c.max_to_keep(), Some(2));
    assert_eq!(c.keep_every_n_steps(), Some(1000));
    assert_eq!(c.keep_time_interval(), Some(Duration::from_secs(3600)));
    assert_eq!(c.on_missing_monitor(), MissingMonitor::Error);
    assert!(!c.uses_default_filename());
    let refused = [
        (
            ModelCheckpoint::builder().max_to_keep(0),
            "invalid max_to_keep",
        ),
        (
            ModelCheckpoint::builder().keep_every_n_steps(0),
            "invalid keep_every_n_steps",
        ),
        (
            ModelCheckpoint::builder().keep_time_interval(Duration::ZERO),
            "invalid keep_time_interval",
        ),
    ];
    for (builder, needle) in refused {
        let err = builder.build().unwrap_err().to_string();
        assert!(err.starts_with(needle), "{err}");
    }
    assert_eq!(
        "error".parse::<MissingMonitor>().unwrap(),
        MissingMonitor::Error
    );
    assert_eq!(
        "warn".parse::<MissingMonitor>().unwrap(),
        MissingMonitor::Warn
    );
    assert!("raise".parse::<MissingMonitor>().is_err());
}
