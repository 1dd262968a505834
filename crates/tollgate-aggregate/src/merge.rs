//! Merging the backends' objects into the one object the client receives.
//!
//! Backends are merged in the order they are declared, never in the order their responses
//! arrive, so the same responses always give the same body. KrakenD lets the backend that
//! answers last win a contested field, which makes the body depend on timing.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

/// How the backends' objects are combined.
///
/// The default is [`Merge::Shallow`], KrakenD's behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Merge {
    /// Only top-level fields are combined: two backends returning the same top-level field
    /// collide, even when both values are objects.
    #[default]
    Shallow,
    /// Objects found under the same field are merged recursively; only two values that are not
    /// both objects collide, at their dot path (`user.name`).
    Deep,
}

/// What happens when two backends return the same field.
///
/// The default is [`Collision::FirstWins`]: with the default [`Merge::Shallow`], the backend
/// declared first keeps a contested field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Collision {
    /// The request fails with a [`MergeConflict`] naming both backends.
    Error,
    /// The backend declared first keeps the field.
    #[default]
    FirstWins,
    /// The backend declared last replaces the field.
    LastWins,
    /// The field becomes an array of every backend's value, in declaration order. A backend's
    /// own array is one element of it, never spliced in.
    Collect,
}

/// Two backends returned the same field under [`Collision::Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backends {first:?} and {second:?} both return the field {path:?}")]
pub struct MergeConflict {
    /// The contested field, as a dot path from the top of the merged object (`user.name`).
    pub path: String,
    /// The backend that supplied the field first, in declaration order.
    pub first: String,
    /// The backend that supplied it again.
    pub second: String,
}

/// Merges the backends' objects in declaration order (the order of `parts`), never in order
/// of arrival.
pub(crate) fn merge<'a>(
    parts: impl IntoIterator<Item = (&'a str, Map<String, Value>)>,
    merge: Merge,
    collision: Collision,
) -> Result<Map<String, Value>, MergeConflict> {
    let merger = Merger { merge, collision };
    let mut result = Map::new();
    let mut fields = Fields::new();
    for (backend, part) in parts {
        // Only `Collision::Error` reads `enclosing`, and it records every top-level field, so
        // the top level needs no real owner.
        merger.merge_object(&mut result, &mut fields, backend, part, backend, None)?;
    }
    Ok(result)
}

/// What the merge remembers about the fields of one object of the result, by name.
///
/// A field without an entry belongs to its enclosing field: entries are only made where the
/// policy needs them, and where deep merges reach.
type Fields<'a> = HashMap<String, Field<'a>>;

struct Field<'a> {
    /// The backend that supplied the field first, named by [`Collision::Error`].
    first: &'a str,
    /// The value is an array built by [`Collision::Collect`], so a further collision appends
    /// to it instead of nesting it; a backend's own array value is never `collected`.
    collected: bool,
    fields: Fields<'a>,
}

impl<'a> Field<'a> {
    fn new(first: &'a str) -> Self {
        Self {
            first,
            collected: false,
            fields: Fields::new(),
        }
    }
}

/// A field's place in the result, rendered as a dot path only when a conflict is reported.
struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    name: &'p str,
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)
    }
}

struct Merger {
    merge: Merge,
    collision: Collision,
}

impl Merger {
    /// Merges `incoming`, from `backend`, into `merged`; `enclosing` is the backend that owns
    /// the object being merged into, for the fields `fields` has no entry for.
    fn merge_object<'a>(
        &self,
        merged: &mut Map<String, Value>,
        fields: &mut Fields<'a>,
        enclosing: &'a str,
        incoming: Map<String, Value>,
        backend: &'a str,
        parent: Option<&Path<'_>>,
    ) -> Result<(), MergeConflict> {
        for (name, value) in incoming {
            let Some(existing) = merged.get_mut(&name) else {
                if self.collision == Collision::Error {
                    fields.insert(name.clone(), Field::new(backend));
                }
                merged.insert(name, value);
                continue;
            };
            let path = Path {
                parent,
                name: &name,
            };
            match (existing, value) {
                (Value::Object(existing), Value::Object(value)) if self.merge == Merge::Deep => {
                    let field = fields
                        .entry(name.clone())
                        .or_insert_with(|| Field::new(enclosing));
                    let first = field.first;
                    self.merge_object(
                        existing,
                        &mut field.fields,
                        first,
                        value,
                        backend,
                        Some(&path),
                    )?;
                }
                (existing, value) => {
                    self.collide(existing, value, fields, enclosing, backend, &path)?;
                }
            }
        }
        Ok(())
    }

    fn collide<'a>(
        &self,
        existing: &mut Value,
        value: Value,
        fields: &mut Fields<'a>,
        enclosing: &'a str,
        backend: &'a str,
        path: &Path<'_>,
    ) -> Result<(), MergeConflict> {
        match self.collision {
            Collision::Error => {
                let first = fields.get(path.name).map_or(enclosing, |field| field.first);
                Err(MergeConflict {
                    path: path.to_string(),
                    first: first.to_owned(),
                    second: backend.to_owned(),
                })
            }
            Collision::FirstWins => Ok(()),
            Collision::LastWins => {
                *existing = value;
                Ok(())
            }
            Collision::Collect => {
                let field = fields
                    .entry(path.name.to_owned())
                    .or_insert_with(|| Field::new(enclosing));
                match existing {
                    Value::Array(collected) if field.collected => collected.push(value),
                    _ => {
                        let earlier = std::mem::take(existing);
                        *existing = Value::Array(vec![earlier, value]);
                        field.collected = true;
                        // What was known below this field describes the object now inside
                        // the array, which no later backend can merge into.
                        field.fields.clear();
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("test part is not an object: {other}"),
        }
    }

    fn run(
        parts: &[(&'static str, Value)],
        how: Merge,
        collision: Collision,
    ) -> Result<Value, MergeConflict> {
        let parts = parts
            .iter()
            .map(|(backend, value)| (*backend, object(value.clone())));
        merge(parts, how, collision).map(Value::Object)
    }

    #[test]
    fn default_is_shallow_and_first_wins() {
        assert_eq!(Merge::default(), Merge::Shallow);
        assert_eq!(Collision::default(), Collision::FirstWins);
    }

    #[test]
    fn policies_deserialize_from_kebab_case() {
        let merges: Vec<Merge> =
            serde_json::from_value(json!(["shallow", "deep"])).expect("known merges");
        assert_eq!(merges, [Merge::Shallow, Merge::Deep]);
        let collisions: Vec<Collision> =
            serde_json::from_value(json!(["error", "first-wins", "last-wins", "collect"]))
                .expect("known collisions");
        assert_eq!(
            collisions,
            [
                Collision::Error,
                Collision::FirstWins,
                Collision::LastWins,
                Collision::Collect
            ]
        );
        assert!(serde_json::from_value::<Collision>(json!("firstWins")).is_err());
    }

    #[test]
    fn no_parts_merge_to_an_empty_object() {
        let out = merge(std::iter::empty(), Merge::Deep, Collision::Error);
        assert_eq!(out, Ok(Map::new()));
    }

    #[test]
    fn disjoint_parts_are_combined() {
        let parts = [("a", json!({"x": 1})), ("b", json!({"y": [2]}))];
        for how in [Merge::Shallow, Merge::Deep] {
            for collision in [
                Collision::Error,
                Collision::FirstWins,
                Collision::LastWins,
                Collision::Collect,
            ] {
                assert_eq!(run(&parts, how, collision), Ok(json!({"x": 1, "y": [2]})));
            }
        }
    }

    #[test]
    fn shallow_error_names_both_backends_and_the_field() {
        let parts = [
            ("users", json!({"id": 1, "name": "a"})),
            ("posts", json!({"posts": []})),
            ("profiles", json!({"name": "b"})),
        ];
        let err = run(&parts, Merge::Shallow, Collision::Error).expect_err("name collides");
        assert_eq!(
            err,
            MergeConflict {
                path: "name".to_owned(),
                first: "users".to_owned(),
                second: "profiles".to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            r#"backends "users" and "profiles" both return the field "name""#
        );
    }

    #[test]
    fn shallow_treats_two_objects_under_one_key_as_a_collision() {
        let parts = [
            ("a", json!({"user": {"name": "a"}})),
            ("b", json!({"user": {"age": 3}})),
        ];
        let err = run(&parts, Merge::Shallow, Collision::Error).expect_err("user collides");
        assert_eq!(err.path, "user");
        assert_eq!(
            run(&parts, Merge::Shallow, Collision::FirstWins),
            Ok(json!({"user": {"name": "a"}}))
        );
    }

    #[test]
    fn shallow_first_wins_keeps_the_earlier_backend() {
        let parts = [
            ("a", json!({"name": "a", "x": 1})),
            ("b", json!({"name": "b", "y": 2})),
        ];
        let out = run(&parts, Merge::Shallow, Collision::FirstWins);
        assert_eq!(out, Ok(json!({"name": "a", "x": 1, "y": 2})));
    }

    #[test]
    fn shallow_last_wins_keeps_the_later_backend() {
        let parts = [
            ("a", json!({"name": "a", "x": 1})),
            ("b", json!({"name": "b", "y": 2})),
        ];
        let out = run(&parts, Merge::Shallow, Collision::LastWins);
        assert_eq!(out, Ok(json!({"name": "b", "x": 1, "y": 2})));
    }

    #[test]
    fn shallow_collect_gathers_values_in_declaration_order() {
        let parts = [("a", json!({"name": "a"})), ("b", json!({"name": "b"}))];
        let out = run(&parts, Merge::Shallow, Collision::Collect);
        assert_eq!(out, Ok(json!({"name": ["a", "b"]})));
    }

    #[test]
    fn collect_over_three_parts_keeps_each_backend_array_as_one_element() {
        let parts = [
            ("a", json!({"tags": ["x", "y"]})),
            ("b", json!({"tags": "z"})),
            ("c", json!({"tags": []})),
        ];
        let out = run(&parts, Merge::Shallow, Collision::Collect);
        assert_eq!(out, Ok(json!({"tags": [["x", "y"], "z", []]})));
    }

    #[test]
    fn collect_appends_a_third_array_rather_than_nesting_the_collected_one() {
        let parts = [
            ("a", json!({"tags": [1]})),
            ("b", json!({"tags": [2]})),
            ("c", json!({"tags": [3]})),
        ];
        for how in [Merge::Shallow, Merge::Deep] {
            let out = run(&parts, how, Collision::Collect);
            assert_eq!(out, Ok(json!({"tags": [[1], [2], [3]]})));
        }
    }

    #[test]
    fn deep_merges_nested_objects_without_collision() {
        let parts = [
            (
                "a",
                json!({"user": {"name": "n", "address": {"city": "c"}}}),
            ),
            (
                "b",
                json!({"user": {"age": 3, "address": {"zip": "z"}}, "posts": [1]}),
            ),
        ];
        let out = run(&parts, Merge::Deep, Collision::Error);
        assert_eq!(
            out,
            Ok(json!({
                "user": {"name": "n", "age": 3, "address": {"city": "c", "zip": "z"}},
                "posts": [1]
            }))
        );
    }

    #[test]
    fn deep_error_reports_the_dot_path_and_the_backend_that_supplied_it_first() {
        let parts = [
            ("a", json!({"user": {"address": {"city": "c"}}})),
            ("b", json!({"user": {"age": 3}})),
            ("c", json!({"user": {"age": 4}})),
        ];
        let err = run(&parts, Merge::Deep, Collision::Error).expect_err("age collides");
        assert_eq!(
            err,
            MergeConflict {
                path: "user.age".to_owned(),
                first: "b".to_owned(),
                second: "c".to_owned(),
            }
        );
    }

    #[test]
    fn deep_error_inside_an_object_inserted_whole_names_its_backend() {
        let parts = [
            ("a", json!({"user": {"address": {"city": "c"}}})),
            ("b", json!({"user": {"age": 3}})),
            ("c", json!({"user": {"address": {"city": "d"}}})),
        ];
        let err = run(&parts, Merge::Deep, Collision::Error).expect_err("city collides");
        assert_eq!(
            err,
            MergeConflict {
                path: "user.address.city".to_owned(),
                first: "a".to_owned(),
                second: "c".to_owned(),
            }
        );
    }

    #[test]
    fn deep_collides_on_object_against_scalar_and_array_against_array() {
        let object_vs_scalar = [
            ("a", json!({"user": {"name": "n"}})),
            ("b", json!({"user": 1})),
        ];
        let err = run(&object_vs_scalar, Merge::Deep, Collision::Error).expect_err("collides");
        assert_eq!((err.path.as_str(), err.first.as_str()), ("user", "a"));

        let arrays = [("a", json!({"tags": [1]})), ("b", json!({"tags": [2]}))];
        let err = run(&arrays, Merge::Deep, Collision::Error).expect_err("collides");
        assert_eq!(err.path, "tags");
    }

    #[test]
    fn deep_first_wins_keeps_the_earlier_leaf() {
        let parts = [
            ("a", json!({"user": {"name": "a", "x": 1}})),
            ("b", json!({"user": {"name": "b", "y": 2}})),
        ];
        let out = run(&parts, Merge::Deep, Collision::FirstWins);
        assert_eq!(out, Ok(json!({"user": {"name": "a", "x": 1, "y": 2}})));
    }

    #[test]
    fn deep_last_wins_keeps_the_later_leaf() {
        let parts = [
            ("a", json!({"user": {"name": "a", "x": 1}})),
            ("b", json!({"user": {"name": "b", "y": 2}})),
        ];
        let out = run(&parts, Merge::Deep, Collision::LastWins);
        assert_eq!(out, Ok(json!({"user": {"name": "b", "x": 1, "y": 2}})));
    }

    #[test]
    fn deep_collect_gathers_leaves_at_their_path() {
        let parts = [
            ("a", json!({"user": {"name": "a", "x": 1}})),
            ("b", json!({"user": {"name": "b"}})),
            ("c", json!({"user": {"name": ["c"]}})),
        ];
        let out = run(&parts, Merge::Deep, Collision::Collect);
        assert_eq!(
            out,
            Ok(json!({"user": {"name": ["a", "b", ["c"]], "x": 1}}))
        );
    }

    #[test]
    fn deep_collect_of_an_object_and_a_scalar_stops_merging_into_the_object() {
        let parts = [
            ("a", json!({"user": {"tags": [1]}})),
            ("b", json!({"user": {"tags": [2]}})),
            ("c", json!({"user": "anonymous"})),
            ("d", json!({"user": {"tags": [4]}})),
        ];
        let out = run(&parts, Merge::Deep, Collision::Collect);
        assert_eq!(
            out,
            Ok(json!({"user": [{"tags": [[1], [2]]}, "anonymous", {"tags": [4]}]}))
        );
    }

    #[test]
    fn same_order_always_gives_the_same_body_and_order_picks_the_winner() {
        let inputs = [
            ("a", json!({"name": "a", "user": {"id": "a"}, "only_a": 1})),
            ("b", json!({"name": "b", "user": {"id": "b", "b": 2}})),
            ("c", json!({"name": "c", "user": {"id": "c"}, "only_c": 3})),
        ];
        let permutations = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in permutations {
            let parts = order.map(|i| inputs[i].clone());
            let (first, last) = (parts[0].0, parts[2].0);
            for how in [Merge::Shallow, Merge::Deep] {
                for collision in [
                    Collision::FirstWins,
                    Collision::LastWins,
                    Collision::Collect,
                ] {
                    let once = run(&parts, how, collision);
                    assert_eq!(once, run(&parts, how, collision), "{order:?}");
                }
                let first_wins = run(&parts, how, Collision::FirstWins).expect("no error");
                assert_eq!(first_wins["name"], json!(first));
                let last_wins = run(&parts, how, Collision::LastWins).expect("no error");
                assert_eq!(last_wins["name"], json!(last));
                let collected = run(&parts, how, Collision::Collect).expect("no error");
                assert_eq!(collected["name"], json!(order.map(|i| inputs[i].0)));
            }
            let deep = run(&parts, Merge::Deep, Collision::FirstWins).expect("no error");
            assert_eq!(deep["user"], json!({"id": first, "b": 2}));
            let err = run(&parts, Merge::Deep, Collision::Error).expect_err("name collides");
            assert_eq!(
                (err.first.as_str(), err.second.as_str()),
                (first, parts[1].0)
            );
        }
    }
}
