//! Differences between two JSON values (trainer states), as JSON paths: `user.lr`,
//! `user.losses[3]`, `waypoint.run.completed`, `user["odd key"]`. Objects are compared key by
//! key, arrays index by index; anything else (or two values of different types) is one change.
//! Pure code over values.

use serde_json::Value;

/// One difference: the path, the first value (`None`: added) and the second (`None`: removed).
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// Where, as a JSON path.
    pub path: String,
    /// The first checkpoint's value, absent when the second added it.
    pub a: Option<Value>,
    /// The second checkpoint's value, absent when it was removed.
    pub b: Option<Value>,
}

impl StateChange {
    /// `added`, `removed` or `changed`.
    pub fn change(&self) -> &'static str {
        match (&self.a, &self.b) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        }
    }
}

/// The differences between `a` and `b` below `path`, appended to `out` in path order.
pub fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<StateChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let here = key_path(path, key);
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => diff_values(&here, u, v, out),
                    (u, v) => out.push(StateChange {
                        path: here,
                        a: u.cloned(),
                        b: v.cloned(),
                    }),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let here = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(u), Some(v)) => diff_values(&here, u, v, out),
                    (u, v) => out.push(StateChange {
                        path: here,
                        a: u.cloned(),
                        b: v.cloned(),
                    }),
                }
            }
        }
        _ if a == b => {}
        _ => out.push(StateChange {
            path: path.to_owned(),
            a: Some(a.clone()),
            b: Some(b.clone()),
        }),
    }
}

/// `path.key`, or `path["key"]` when the key is not a plain identifier.
fn key_path(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (plain, path.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!("{path}[{}]", Value::from(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(a: Value, b: Value) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        diff_values("user", &a, &b, &mut out);
        out.iter().map(|c| (c.path.clone(), c.change())).collect()
    }

    #[test]
    fn changes_are_named_by_path() {
        let a = json!({"step": 10, "opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "gone": 1});
        let b = json!({"step": 12, "opt": {"lr": 0.1, "betas": [0.9, 0.98, 1]}, "new": true});
        let want = [
            ("user.gone", "removed"),
            ("user.new", "added"),
            ("user.opt.betas[1]", "changed"),
            ("user.opt.betas[2]", "added"),
            ("user.step", "changed"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        assert_eq!(paths(a, b), want);
    }

    #[test]
    fn equal_states_have_no_changes() {
        let v = json!({"a": [1, {"b": null}], "c": "x"});
        assert!(paths(v.clone(), v).is_empty());
    }

    #[test]
    fn a_type_change_is_one_change_and_odd_keys_are_quoted() {
        assert_eq!(
            paths(json!({"a.b": 1}), json!({"a.b": [1]})),
            [("user[\"a.b\"]".to_string(), "changed")]
        );
        assert_eq!(
            paths(json!(1), json!("1")),
            [("user".to_string(), "changed")]
        );
    }
}
