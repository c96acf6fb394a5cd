//! Every kind of event written and read back, byte-exact where a golden vector exists.

use super::*;

#[test]
fn first_record_is_the_golden_file_version_record() {
    // The reference's golden record: Event{wall_time = (bytes 00 00 80 38 99 d6 d7 41),
    // file_version = "brain.Event:2"}, length CRC 0x224b7fa3, data CRC 0xab364b12.
    let wall_time = f64::from_le_bytes([0x00, 0x00, 0x80, 0x38, 0x99, 0xd6, 0xd7, 0x41]);
    let bytes = EventWriter::new(Vec::new(), "memory", wall_time)
        .unwrap()
        .into_inner()
        .unwrap();
    let mut want = vec![24, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0x7f, 0x4b, 0x22];
    want.extend_from_slice(&[
        0x09, 0x00, 0x00, 0x80, 0x38, 0x99, 0xd6, 0xd7, 0x41, 0x1a, 0x0d,
    ]);
    want.extend_from_slice(b"brain.Event:2");
    want.extend_from_slice(&[0x12, 0x4b, 0x36, 0xab]);
    assert_eq!(bytes, want);
}

#[test]
fn round_trip_of_every_kind() {
    let hp: BTreeMap<String, HParamValue> = [
        ("lr".to_owned(), HParamValue::Number(0.001)),
        ("optimizer".to_owned(), "adamw".into()),
        ("warmup".to_owned(), true.into()),
    ]
    .into();
    let bytes = write_to_vec(|w| {
        w.add_hparams_experiment(hparams::experiment(&hp, &["loss"], 2.0), 2.0)
            .unwrap();
        w.add_session_start(&hp, 0, 3.0).unwrap();
        w.add_scalar("loss", 0.25, 1, 4.0).unwrap();
        w.add_scalars(2, 5.0, &[("loss", 0.125f32), ("lr", 1e-3)])
            .unwrap();
        w.add_text("notes", "**bold** é", 3, 6.0).unwrap();
        w.add_histogram("weights", &[1.0, 2.0, 3.0], 4, 7.0)
            .unwrap();
        w.add_session_log_start(5, 8.0).unwrap();
        w.add_session_end(SessionStatus::Success, 6, 9.0).unwrap();
    });
    let events = read_all(&bytes);
    assert_eq!(events.len(), 9);
    assert_eq!(events[0].file_version(), Some("brain.Event:2"));
    assert_eq!(events[0].wall_time, 1.0);

    let experiment = only_value(&events[1]);
    assert_eq!(experiment.tag, "_hparams_/experiment");
    let plugin = experiment
        .metadata
        .as_ref()
        .unwrap()
        .plugin_data
        .as_ref()
        .unwrap();
    assert_eq!(plugin.plugin_name, "hparams");
    let data = HParamsPluginData::decode(&plugin.content[..]).unwrap();
    assert_eq!(data.version, 0);
    let Some(Data::Experiment(e)) = data.data else {
        panic!("{data:?}")
    };
    let names: Vec<_> = e.hparam_infos.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["lr", "optimizer", "warmup"]);
    assert_eq!(e.metric_infos[0].name.as_ref().unwrap().tag, "loss");

    let start = only_value(&events[2]);
    assert_eq!(start.tag, "_hparams_/session_start_info");
    let content = &start
        .metadata
        .as_ref()
        .unwrap()
        .plugin_data
        .as_ref()
        .unwrap()
        .content;
    let Some(Data::SessionStartInfo(s)) = HParamsPluginData::decode(&content[..]).unwrap().data
    else {
        panic!()
    };
    assert_eq!(s.hparams.len(), 3);
    assert_eq!(s.start_time_secs, 3.0);

    assert_eq!((events[3].step, events[3].wall_time), (1, 4.0));
    assert_eq!(only_value(&events[3]).value, Some(V::SimpleValue(0.25)));
    let two = &events[4].summary().unwrap().value;
    assert_eq!(
        two.iter()
            .map(|v| (v.tag.as_str(), v.value.clone()))
            .collect::<Vec<_>>(),
        [
            ("loss", Some(V::SimpleValue(0.125))),
            ("lr", Some(V::SimpleValue(1e-3)))
        ]
    );

    let text = only_value(&events[5]);
    let Some(V::Tensor(t)) = &text.value else {
        panic!()
    };
    assert_eq!(t.string_val, vec!["**bold** é".as_bytes().to_vec()]);
    assert_eq!(
        text.metadata
            .as_ref()
            .unwrap()
            .plugin_data
            .as_ref()
            .unwrap()
            .plugin_name,
        "text"
    );

    let Some(V::Histo(h)) = &only_value(&events[6]).value else {
        panic!()
    };
    assert_eq!(
        (h.min, h.max, h.num, h.sum, h.sum_squares),
        (1.0, 3.0, 3.0, 6.0, 14.0)
    );
    assert_eq!(h.bucket.iter().sum::<f64>(), 3.0);

    assert_eq!(events[7].step, 5);
    assert_eq!(
        events[7].session_log().unwrap().status,
        LogStatus::Start as i32
    );

    let end = only_value(&events[8]);
    let content = &end
        .metadata
        .as_ref()
        .unwrap()
        .plugin_data
        .as_ref()
        .unwrap()
        .content;
    let Some(Data::SessionEndInfo(s)) = HParamsPluginData::decode(&content[..]).unwrap().data
    else {
        panic!()
    };
    assert_eq!(
        (s.status, s.end_time_secs),
        (SessionStatus::Success as i32, 9.0)
    );
}

/// Events of `(step, wall_time, [(tag, value)])`.
type ScalarEvents = Vec<(i64, f64, Vec<(String, f32)>)>;

fn scalar_sequence() -> impl Strategy<Value = ScalarEvents> {
    let scalars = proptest::collection::vec(("[a-z/_]{0,12}", any::<f32>()), 0..9);
    proptest::collection::vec((any::<i64>(), 0.0f64..2e9, scalars), 0..40)
}

proptest! {
    #[test]
    fn random_scalar_sequences_round_trip(seq in scalar_sequence()) {
        let bytes = write_to_vec(|w| {
            for (step, wall_time, values) in &seq {
                w.add_scalars(*step, *wall_time, values).unwrap();
            }
        });
        let events = read_all(&bytes);
        prop_assert_eq!(events.len(), seq.len() + 1);
        for (event, (step, wall_time, values)) in events[1..].iter().zip(&seq) {
            prop_assert_eq!(event.step, *step);
            prop_assert_eq!(event.wall_time, *wall_time);
            let got: Vec<(String, u32)> = event.summary().unwrap().value.iter().map(|v| match v.value {
                Some(V::SimpleValue(x)) => (v.tag.clone(), x.to_bits()),
                _ => panic!("{v:?}"),
            }).collect();
            let want: Vec<(String, u32)> = values.iter().map(|(t, x)| (t.clone(), x.to_bits())).collect();
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn custom_events_round_trip() {
    let event = Event {
        wall_time: 3.5,
        step: -2,
        what: Some(What::Summary(Summary {
            value: vec![tfevents::summaries::scalar("t", 1.0)],
        })),
    };
    let bytes = write_to_vec(|w| w.write_event(&event).unwrap());
    assert_eq!(read_all(&bytes)[1], event);
}
