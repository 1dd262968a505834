//! The per-backend response pipeline: what happens to one backend's JSON before the merge.
//!
//! The steps run in a fixed order, the one KrakenD users know: `target`, then `allow` and
//! `deny`, then `mapping`, then `group`, and a bare array is finally wrapped under
//! `collection`, so every backend hands the merge a JSON object.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A field path in dot notation (`address.city`): non-empty names separated by dots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DotPath(String);

impl DotPath {
    /// Refuses an empty path and empty names (leading, trailing or doubled dots).
    pub(crate) fn parse(path: &str) -> Result<Self, PathError> {
        if path.split('.').any(str::is_empty) {
            return Err(PathError {
                path: path.to_owned(),
            });
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as it was written.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A field path in the configuration is not a dot-separated list of names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path {path:?}: expected names separated by dots, such as \"address.city\"")]
pub struct PathError {
    /// The path as it was written in the configuration.
    pub path: String,
}

/// What one backend's response goes through before it is merged with the others.
#[derive(Clone, Debug)]
pub(crate) struct Pipeline {
    /// Keeps only the value at this path, dropping everything around it.
    pub(crate) target: Option<DotPath>,
    /// When non-empty, the only paths kept.
    pub(crate) allow: Vec<DotPath>,
    /// Paths removed.
    pub(crate) deny: Vec<DotPath>,
    /// Top-level renames, `from` to `to`, applied in list order.
    pub(crate) mapping: Vec<(String, String)>,
    /// Wraps the whole response under this key.
    pub(crate) group: Option<String>,
    /// The key a bare array is wrapped under.
    pub(crate) collection: String,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            target: None,
            allow: Vec::new(),
            deny: Vec::new(),
            mapping: Vec::new(),
            group: None,
            // KrakenD's name, so configurations ported from it keep their shape.
            collection: "collection".to_owned(),
        }
    }
}

impl Pipeline {
    /// Runs `value` through every step, in order, and returns the object handed to the merge.
    ///
    /// `allow` and `deny` reach into arrays: when a path meets an array, the rest of the path
    /// applies to each element, and a top-level array is filtered the same way.
    ///
    /// - `allow`: a path that ends at a field keeps its value whole. A path going further
    ///   rebuilds an object with only the listed fields, and drops it when none of them is
    ///   there, so an absent path leaves no empty shell behind. In an array, object and array
    ///   elements are filtered and kept even when left empty, so filtering never changes how
    ///   many objects a list holds; any other element is dropped, since the rest of the path
    ///   cannot exist in it.
    /// - `deny`: removes the field a path ends at; elements that are not objects or arrays are
    ///   left as they are, and objects emptied by a removal stay, as empty objects.
    pub(crate) fn apply(&self, value: Value) -> Result<Map<String, Value>, PipelineError> {
        let mut value = match &self.target {
            Some(target) => take_target(value, target)?,
            None => value,
        };

        if !self.allow.is_empty() {
            value = AllowTree::new(&self.allow).keep_top_level(value);
        }
        for path in &self.deny {
            remove_path(&mut value, path.as_str());
        }

        if let Value::Object(object) = &mut value {
            // All at once, not one after another: `a→b, b→a` swaps, and no rename consumes
            // another's result.
            let moved: Vec<(&String, Value)> = self
                .mapping
                .iter()
                .filter_map(|(from, to)| Some((to, object.remove(from)?)))
                .collect();
            for (to, renamed) in moved {
                object.insert(to.clone(), renamed);
            }
        }

        if let Some(group) = &self.group {
            value = Value::Object(Map::from_iter([(group.clone(), value)]));
        }
        match value {
            Value::Object(object) => Ok(object),
            Value::Array(items) => Ok(Map::from_iter([(
                self.collection.clone(),
                Value::Array(items),
            )])),
            Value::Null => Err(PipelineError::NotAnObject("null")),
            Value::Bool(_) => Err(PipelineError::NotAnObject("a boolean")),
            Value::Number(_) => Err(PipelineError::NotAnObject("a number")),
            Value::String(_) => Err(PipelineError::NotAnObject("a string")),
        }
    }
}

/// Why a backend's response could not go through its pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PipelineError {
    /// The `target` path is absent, or crosses something that is not an object.
    #[error("the target {0:?} is not in the response")]
    MissingTarget(String),
    /// After every step the response is a scalar, which cannot be merged.
    #[error("expected a JSON object or array, found {0}")]
    NotAnObject(&'static str),
}

fn take_target(mut value: Value, target: &DotPath) -> Result<Value, PipelineError> {
    let missing = || PipelineError::MissingTarget(target.as_str().to_owned());
    for name in target.as_str().split('.') {
        let Value::Object(mut object) = value else {
            return Err(missing());
        };
        value = object.remove(name).ok_or_else(missing)?;
    }
    Ok(value)
}

/// The `allow` paths as a tree, so paths sharing a prefix (`address.city`, `address.zip`)
/// rebuild one `address` object instead of competing for it.
#[derive(Default)]
struct AllowTree<'p> {
    /// A listed path ends here: the value is kept whole, whatever lies below.
    whole: bool,
    fields: BTreeMap<&'p str, AllowTree<'p>>,
}

impl<'p> AllowTree<'p> {
    fn new(paths: &'p [DotPath]) -> Self {
        let mut root = Self::default();
        for path in paths {
            let mut node = &mut root;
            for name in path.as_str().split('.') {
                node = node.fields.entry(name).or_default();
            }
            node.whole = true;
        }
        root
    }

    /// The response itself is never dropped: a scalar is left for `apply` to refuse by kind.
    fn keep_top_level(&self, value: Value) -> Value {
        match value {
            Value::Object(object) => Value::Object(self.keep_in_object(object)),
            Value::Array(items) => Value::Array(self.keep_in_items(items)),
            scalar => scalar,
        }
    }

    fn keep_in_object(&self, object: Map<String, Value>) -> Map<String, Value> {
        object
            .into_iter()
            .filter_map(|(name, value)| {
                let kept = self.fields.get(name.as_str())?.keep_field(value)?;
                Some((name, kept))
            })
            .collect()
    }

    fn keep_in_items(&self, items: Vec<Value>) -> Vec<Value> {
        items
            .into_iter()
            .filter_map(|item| match item {
                Value::Object(object) => Some(Value::Object(self.keep_in_object(object))),
                Value::Array(items) => Some(Value::Array(self.keep_in_items(items))),
                _ => None,
            })
            .collect()
    }

    fn keep_field(&self, value: Value) -> Option<Value> {
        if self.whole {
            return Some(value);
        }
        match value {
            Value::Object(object) => {
                let kept = self.keep_in_object(object);
                (!kept.is_empty()).then_some(Value::Object(kept))
            }
            Value::Array(items) => Some(Value::Array(self.keep_in_items(items))),
            _ => None,
        }
    }
}

fn remove_path(value: &mut Value, path: &str) {
    match value {
        Value::Object(object) => match path.split_once('.') {
            None => {
                object.remove(path);
            }
            Some((name, rest)) => {
                if let Some(field) = object.get_mut(name) {
                    remove_path(field, rest);
                }
            }
        },
        Value::Array(items) => {
            for item in items {
                remove_path(item, path);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(paths: &[&str]) -> Vec<DotPath> {
        paths
            .iter()
            .map(|path| DotPath::parse(path).expect("valid test path"))
            .collect()
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("test expectation is not an object: {other}"),
        }
    }

    #[test]
    fn dot_path_keeps_its_text() {
        let path = DotPath::parse("address.city").expect("valid path");
        assert_eq!(path.as_str(), "address.city");
    }

    #[test]
    fn dot_path_refuses_empty_names() {
        for bad in ["", ".", "a.", ".a", "a..b"] {
            let err = DotPath::parse(bad).expect_err(bad);
            assert_eq!(err.path, bad);
            assert!(
                err.to_string().contains("expected names separated by dots"),
                "{err}"
            );
        }
    }

    #[test]
    fn default_pipeline_passes_an_object_through() {
        let response = json!({"id": 1, "name": "x"});
        let out = Pipeline::default().apply(response.clone());
        assert_eq!(out, Ok(object(response)));
    }

    #[test]
    fn default_pipeline_wraps_an_array_under_collection() {
        let out = Pipeline::default().apply(json!([1, 2]));
        assert_eq!(out, Ok(object(json!({"collection": [1, 2]}))));
    }

    #[test]
    fn target_replaces_the_response_with_the_nested_value() {
        let pipeline = Pipeline {
            target: DotPath::parse("data.user").ok(),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"data": {"user": {"id": 1}, "meta": 2}, "status": "ok"}));
        assert_eq!(out, Ok(object(json!({"id": 1}))));
    }

    #[test]
    fn target_that_is_absent_is_an_error_naming_it() {
        let pipeline = Pipeline {
            target: DotPath::parse("data.user").ok(),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"data": {"account": {}}}));
        assert_eq!(
            out,
            Err(PipelineError::MissingTarget("data.user".to_owned()))
        );
    }

    #[test]
    fn target_does_not_descend_through_arrays_or_scalars() {
        let pipeline = Pipeline {
            target: DotPath::parse("data.user").ok(),
            ..Pipeline::default()
        };
        for response in [
            json!({"data": [{"user": 1}]}),
            json!({"data": "user"}),
            json!(3),
        ] {
            assert_eq!(
                pipeline.apply(response),
                Err(PipelineError::MissingTarget("data.user".to_owned()))
            );
        }
    }

    #[test]
    fn allow_keeps_only_listed_paths_and_rebuilds_their_parents() {
        let pipeline = Pipeline {
            allow: paths(&["id", "address.city"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({
            "id": 1, "name": "x", "address": {"city": "c", "zip": "z"}
        }));
        assert_eq!(out, Ok(object(json!({"id": 1, "address": {"city": "c"}}))));
    }

    #[test]
    fn allow_paths_sharing_a_prefix_build_one_object() {
        let pipeline = Pipeline {
            allow: paths(&["a.b.c", "a.b.d", "a.e"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"a": {"b": {"c": 1, "d": 2, "x": 3}, "e": 4, "f": 5}}));
        assert_eq!(
            out,
            Ok(object(json!({"a": {"b": {"c": 1, "d": 2}, "e": 4}})))
        );
    }

    #[test]
    fn allow_of_a_parent_keeps_it_whole_even_with_a_child_listed() {
        let pipeline = Pipeline {
            allow: paths(&["address.city", "address"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"address": {"city": "c", "zip": "z"}, "id": 1}));
        assert_eq!(
            out,
            Ok(object(json!({"address": {"city": "c", "zip": "z"}})))
        );
    }

    #[test]
    fn allow_of_absent_paths_leaves_no_empty_parent() {
        let pipeline = Pipeline {
            allow: paths(&["id", "address.city", "name.first"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"address": {"zip": "z"}, "name": "x"}));
        assert_eq!(out, Ok(Map::new()));
    }

    #[test]
    fn allow_filters_each_element_of_a_nested_array() {
        let pipeline = Pipeline {
            allow: paths(&["items.id"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({
            "items": [{"id": 1, "secret": "s"}, {"secret": "t"}, 7, [{"id": 2, "x": 0}]],
            "total": 2
        }));
        assert_eq!(
            out,
            Ok(object(json!({"items": [{"id": 1}, {}, [{"id": 2}]]})))
        );
    }

    #[test]
    fn allow_ending_at_an_array_keeps_it_whole() {
        let pipeline = Pipeline {
            allow: paths(&["tags"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"tags": [1, {"a": 2}], "id": 1}));
        assert_eq!(out, Ok(object(json!({"tags": [1, {"a": 2}]}))));
    }

    #[test]
    fn allow_filters_a_top_level_array_element_wise() {
        let pipeline = Pipeline {
            allow: paths(&["id"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!([{"id": 1, "x": 1}, {"id": 2}, "scalar"]));
        assert_eq!(
            out,
            Ok(object(json!({"collection": [{"id": 1}, {"id": 2}]})))
        );
    }

    #[test]
    fn deny_removes_top_level_and_nested_paths() {
        let pipeline = Pipeline {
            deny: paths(&["password", "address.zip", "absent.path"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({
            "id": 1, "password": "p", "address": {"city": "c", "zip": "z"}
        }));
        assert_eq!(out, Ok(object(json!({"id": 1, "address": {"city": "c"}}))));
    }

    #[test]
    fn deny_applies_to_each_element_of_arrays_and_leaves_scalars() {
        let pipeline = Pipeline {
            deny: paths(&["items.secret"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({
            "items": [{"id": 1, "secret": "s"}, 7, [{"id": 2, "secret": "t"}]]
        }));
        assert_eq!(
            out,
            Ok(object(json!({"items": [{"id": 1}, 7, [{"id": 2}]]})))
        );
    }

    #[test]
    fn deny_filters_a_top_level_array_element_wise() {
        let pipeline = Pipeline {
            deny: paths(&["secret"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!([{"id": 1, "secret": "s"}, {"id": 2}]));
        assert_eq!(
            out,
            Ok(object(json!({"collection": [{"id": 1}, {"id": 2}]})))
        );
    }

    #[test]
    fn deny_runs_after_allow() {
        let pipeline = Pipeline {
            allow: paths(&["user"]),
            deny: paths(&["user.password"]),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"user": {"name": "n", "password": "p"}, "other": 1}));
        assert_eq!(out, Ok(object(json!({"user": {"name": "n"}}))));
    }

    #[test]
    fn mapping_renames_top_level_keys_all_at_once() {
        let pipeline = Pipeline {
            mapping: vec![
                ("a".to_owned(), "b".to_owned()),
                ("b".to_owned(), "a".to_owned()),
                ("missing".to_owned(), "d".to_owned()),
            ],
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"a": 1, "b": 2, "nested": {"a": 3}}));
        assert_eq!(out, Ok(object(json!({"b": 1, "a": 2, "nested": {"a": 3}}))));
    }

    #[test]
    fn mapping_replaces_an_existing_key_of_the_new_name() {
        let pipeline = Pipeline {
            mapping: vec![("blog".to_owned(), "posts".to_owned())],
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"blog": [1], "posts": "old"}));
        assert_eq!(out, Ok(object(json!({"posts": [1]}))));
    }

    #[test]
    fn mapping_leaves_a_bare_array_alone() {
        let pipeline = Pipeline {
            mapping: vec![("collection".to_owned(), "items".to_owned())],
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!([1]));
        assert_eq!(out, Ok(object(json!({"collection": [1]}))));
    }

    #[test]
    fn group_wraps_the_response_under_its_key() {
        let pipeline = Pipeline {
            group: Some("user".to_owned()),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"id": 1}));
        assert_eq!(out, Ok(object(json!({"user": {"id": 1}}))));
    }

    #[test]
    fn group_of_an_array_needs_no_collection() {
        let pipeline = Pipeline {
            group: Some("posts".to_owned()),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!([1, 2]));
        assert_eq!(out, Ok(object(json!({"posts": [1, 2]}))));
    }

    #[test]
    fn group_makes_a_scalar_target_mergeable() {
        let pipeline = Pipeline {
            target: DotPath::parse("data.count").ok(),
            group: Some("count".to_owned()),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"data": {"count": 3}}));
        assert_eq!(out, Ok(object(json!({"count": 3}))));
    }

    #[test]
    fn array_is_wrapped_under_the_configured_collection_key() {
        let pipeline = Pipeline {
            collection: "items".to_owned(),
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!([{"id": 1}]));
        assert_eq!(out, Ok(object(json!({"items": [{"id": 1}]}))));
    }

    #[test]
    fn scalar_result_is_refused_by_kind() {
        let cases = [
            (json!("text"), "a string"),
            (json!(1.5), "a number"),
            (json!(true), "a boolean"),
            (Value::Null, "null"),
        ];
        for (response, kind) in cases {
            let err = Pipeline::default().apply(response);
            assert_eq!(err, Err(PipelineError::NotAnObject(kind)));
        }
    }

    #[test]
    fn scalar_target_without_group_is_refused() {
        let pipeline = Pipeline {
            target: DotPath::parse("count").ok(),
            ..Pipeline::default()
        };
        let err = pipeline.apply(json!({"count": 3})).expect_err("a number");
        assert_eq!(
            err.to_string(),
            "expected a JSON object or array, found a number"
        );
    }

    #[test]
    fn every_step_runs_in_order() {
        let pipeline = Pipeline {
            target: DotPath::parse("data").ok(),
            allow: paths(&["user", "posts"]),
            deny: paths(&["user.password", "posts.draft"]),
            mapping: vec![
                ("user".to_owned(), "author".to_owned()),
                ("posts".to_owned(), "articles".to_owned()),
            ],
            group: Some("blog".to_owned()),
            collection: "items".to_owned(),
        };
        let out = pipeline.apply(json!({
            "status": "ok",
            "data": {
                "user": {"name": "n", "password": "p"},
                "posts": [{"title": "t", "draft": true}],
                "debug": 1
            }
        }));
        assert_eq!(
            out,
            Ok(object(json!({
                "blog": {"author": {"name": "n"}, "articles": [{"title": "t"}]}
            })))
        );
    }

    #[test]
    fn target_array_is_filtered_then_wrapped_under_collection() {
        let pipeline = Pipeline {
            target: DotPath::parse("data.items").ok(),
            allow: paths(&["id", "name"]),
            deny: paths(&["name"]),
            mapping: vec![("id".to_owned(), "ignored".to_owned())],
            ..Pipeline::default()
        };
        let out = pipeline.apply(json!({"data": {"items": [{"id": 1, "name": "a", "x": 0}]}}));
        assert_eq!(out, Ok(object(json!({"collection": [{"id": 1}]}))));
    }
}
