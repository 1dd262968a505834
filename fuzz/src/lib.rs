//! What the fuzz targets share: one current-thread runtime, and JSON values whose field names
//! come from a short list, so that generated documents meet the paths a target configures.

use std::sync::OnceLock;

use arbitrary::Unstructured;
use serde_json::{json, Map, Value};

/// How deep generated JSON nests at most.
const MAX_DEPTH: usize = 6;

/// A current-thread runtime with time, built once per fuzzing process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A JSON value whose object keys are mostly drawn from `names`.
pub fn json(u: &mut Unstructured<'_>, names: &[&str]) -> arbitrary::Result<Value> {
    value(u, names, 0)
}

fn value(u: &mut Unstructured<'_>, names: &[&str], depth: usize) -> arbitrary::Result<Value> {
    let kind = if depth >= MAX_DEPTH {
        u.int_in_range(0..=3)?
    } else {
        u.int_in_range(0..=5)?
    };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => {
            if u.arbitrary()? {
                json!(u.arbitrary::<f64>()?)
            } else {
                json!(u.arbitrary::<i64>()?)
            }
        }
        3 => Value::String(u.arbitrary()?),
        4 => {
            let len = u.int_in_range(0..=4)?;
            Value::Array(
                (0..len)
                    .map(|_| value(u, names, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => {
            let len = u.int_in_range(0..=5)?;
            let mut object = Map::new();
            for _ in 0..len {
                let name = if !names.is_empty() && u.ratio(7, 8)? {
                    (*u.choose(names)?).to_owned()
                } else {
                    u.arbitrary()?
                };
                object.insert(name, value(u, names, depth + 1)?);
            }
            Value::Object(object)
        }
    })
}
