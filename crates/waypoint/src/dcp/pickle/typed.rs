//! Reading a parsed [`Pickle`] as data: accessors that check each node's kind, the allow-list of
//! globals the typed layer understands, and a bounded conversion of any pickle (a BYTE_IO item)
//! to JSON in which every global outside the allow-list stays an opaque, named object.
//!
//! Nothing here calls, imports or evaluates anything; a global is only a pair of names.

use super::vm::{Node, NodeId, Pickle};
use serde_json::{Map, Value, json};

/// Globals the typed layer maps onto Rust values. Anything else in a strict context (the
/// `.metadata` file, a tensor's `data.pkl`) is refused by its name.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    (
        "torch.distributed.checkpoint.metadata",
        "TensorStorageMetadata",
    ),
    (
        "torch.distributed.checkpoint.metadata",
        "BytesStorageMetadata",
    ),
    (
        "torch.distributed.checkpoint.metadata",
        "ChunkStorageMetadata",
    ),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    (
        "torch.distributed.checkpoint.metadata",
        "_MEM_FORMAT_ENCODING",
    ),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    (
        "megatron.core.dist_checkpointing.strategies.torch",
        "MCoreMetadata",
    ),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "UntypedStorage"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("pathlib._local", "PosixPath"),
    ("pathlib._local", "PurePosixPath"),
    ("pathlib._local", "WindowsPath"),
    ("pathlib._local", "PureWindowsPath"),
];

/// Whether `module.name` is on the allow-list (dtypes `torch.<dtype>` and storage classes
/// `torch.<Kind>Storage` included).
pub fn is_allowed(module: &str, name: &str) -> bool {
    ALLOWED_GLOBALS.contains(&(module, name))
        || (module == "torch"
            && (super::super::dtype::from_torch_name(name).is_some()
                || super::super::dtype::from_storage_class(name).is_some()))
}

/// A call seen by [`Pickle::call`]: `((module, name), arguments, BUILD state)`.
pub type CallView<'a> = ((&'a str, &'a str), &'a [NodeId], Option<NodeId>);

/// How deep the JSON conversion goes before refusing.
pub const MAX_JSON_DEPTH: usize = 128;
/// How many nodes the JSON conversion visits in all before refusing (shared nodes count each
/// time they are reached, so a memo bomb stops here).
pub const MAX_JSON_VISITS: usize = 1 << 20;

/// Checked accessors over a pickle. Each returns `None` when the node is not of the kind asked.
impl Pickle {
    /// The string at `id`.
    pub fn str(&self, id: NodeId) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer at `id`.
    pub fn int(&self, id: NodeId) -> Option<i64> {
        match self.node(id) {
            Node::Int(v) => Some(*v),
            Node::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The tuple or list items at `id`.
    pub fn seq(&self, id: NodeId) -> Option<&[NodeId]> {
        match self.node(id) {
            Node::Tuple(items) | Node::List(items) => Some(items),
            _ => None,
        }
    }

    /// The dict pairs at `id` (a plain dict, or an `OrderedDict` built by REDUCE + SETITEMS).
    pub fn dict(&self, id: NodeId) -> Option<&[(NodeId, NodeId)]> {
        match self.node(id) {
            Node::Dict(pairs) => Some(pairs),
            Node::Call { callee, pairs, .. }
                if self.global(*callee) == Some(("collections", "OrderedDict")) =>
            {
                Some(pairs)
            }
            _ => None,
        }
    }

    /// The value under string key `key` of the dict at `id`.
    pub fn get(&self, id: NodeId, key: &str) -> Option<NodeId> {
        self.dict(id)?
            .iter()
            .find(|(k, _)| self.str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// The global at `id` as `(module, name)`.
    pub fn global(&self, id: NodeId) -> Option<(&str, &str)> {
        match self.node(id) {
            Node::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// `(module.name, args, state)` of the call at `id`, when its callee is a global.
    pub fn call(&self, id: NodeId) -> Option<CallView<'_>> {
        match self.node(id) {
            Node::Call {
                callee,
                args,
                state,
                ..
            } => Some((self.global(*callee)?, self.seq(*args)?, *state)),
            _ => None,
        }
    }

    /// A tuple of non-negative integers, or `torch.Size(tuple)`.
    pub fn shape(&self, id: NodeId) -> Option<Vec<u64>> {
        let items = match self.call(id) {
            Some((("torch", "Size"), [inner], _)) => self.seq(*inner)?,
            Some(_) => return None,
            None => self.seq(id)?,
        };
        items
            .iter()
            .map(|&i| self.int(i).and_then(|v| u64::try_from(v).ok()))
            .collect()
    }

    /// The first global the strict typed layer would refuse, reachable from the root, as
    /// `module.name` (the check a strict file runs before reading anything).
    pub fn first_refused_global(&self) -> Option<String> {
        self.nodes.iter().find_map(|node| match node {
            Node::Global { module, name } if !is_allowed(module, name) => {
                Some(format!("{module}.{name}"))
            }
            _ => None,
        })
    }

    /// The whole pickle as JSON (see [`Pickle::to_json_at`]).
    pub fn to_json(&self) -> Result<Value, String> {
        let mut visits = 0;
        self.to_json_at(self.root, 0, &mut visits)
    }

    /// The value at `id` as JSON: `None` → null, numbers, strings, tuples/lists/sets → arrays,
    /// dicts with string keys → objects (others → `{"$dict": [[k, v], …]}`), bytes →
    /// `{"$bytes": "<hex>"}`, integers beyond 64 bits → `{"$int": "<hex, little-endian>"}`,
    /// `torch.Size` → array, `OrderedDict` → object, `_codecs.encode(s, "latin1")` → bytes, and any
    /// other call → `{"$object": "module.name", "args": […], "state": …}`: named, never run.
    pub fn to_json_at(
        &self,
        id: NodeId,
        depth: usize,
        visits: &mut usize,
    ) -> Result<Value, String> {
        *visits += 1;
        if *visits > MAX_JSON_VISITS {
            return Err(format!(
                "more than {MAX_JSON_VISITS} values reached (shared values count each time): refused"
            ));
        }
        if depth > MAX_JSON_DEPTH {
            return Err(format!("nested more than {MAX_JSON_DEPTH} deep: refused"));
        }
        let mut sub = |i: NodeId| self.to_json_at(i, depth + 1, visits);
        Ok(match self.node(id) {
            Node::None => Value::Null,
            Node::Bool(b) => json!(b),
            Node::Int(v) => json!(v),
            Node::BigInt(bytes) => json!({ "$int": hex(bytes) }),
            Node::Float(f) if f.is_finite() => json!(f),
            Node::Float(f) => json!({ "$float": f.to_string() }),
            Node::Str(s) => json!(s),
            Node::Bytes(b) => json!({ "$bytes": hex(b) }),
            Node::Tuple(items) | Node::List(items) | Node::Set(items) => {
                Value::Array(items.iter().map(|&i| sub(i)).collect::<Result<_, _>>()?)
            }
            Node::Dict(pairs) => self.pairs_json(pairs, depth, visits)?,
            Node::Global { module, name } => json!({ "$global": format!("{module}.{name}") }),
            Node::PersId(pid) => json!({ "$persistent_id": sub(*pid)? }),
            Node::Call { .. } => self.call_json(id, depth, visits)?,
        })
    }

    fn pairs_json(
        &self,
        pairs: &[(NodeId, NodeId)],
        depth: usize,
        visits: &mut usize,
    ) -> Result<Value, String> {
        let all_str = pairs.iter().all(|(k, _)| self.str(*k).is_some());
        if all_str {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = self.str(*k).unwrap_or_default().to_owned();
                map.insert(key, self.to_json_at(*v, depth + 1, visits)?);
            }
            return Ok(Value::Object(map));
        }
        let mut list = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let k = self.to_json_at(*k, depth + 1, visits)?;
            let v = self.to_json_at(*v, depth + 1, visits)?;
            list.push(json!([k, v]));
        }
        Ok(json!({ "$dict": list }))
    }

    fn call_json(&self, id: NodeId, depth: usize, visits: &mut usize) -> Result<Value, String> {
        let Node::Call {
            callee,
            args,
            state,
            items,
            pairs,
            ..
        } = self.node(id)
        else {
            return Ok(Value::Null);
        };
        match (self.global(*callee), self.seq(*args)) {
            (Some(("collections", "OrderedDict")), Some([])) => {
                return self.pairs_json(pairs, depth, visits);
            }
            (Some(("torch", "Size")), Some([_])) => {
                if let Some(shape) = self.shape(id) {
                    return Ok(json!(shape));
                }
            }
            (Some(("_codecs", "encode")), Some([text, enc])) => {
                if let (Some(text), Some("latin1" | "latin-1")) = (self.str(*text), self.str(*enc))
                {
                    let bytes: Option<Vec<u8>> = text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect();
                    if let Some(bytes) = bytes {
                        return Ok(json!({ "$bytes": hex(&bytes) }));
                    }
                }
            }
            _ => {}
        }
        let name = match self.node(*callee) {
            Node::Global { module, name } => format!("{module}.{name}"),
            _ => "<not a global>".to_owned(),
        };
        let mut object = Map::new();
        object.insert("$object".into(), json!(name));
        object.insert("args".into(), self.to_json_at(*args, depth + 1, visits)?);
        if let Some(state) = state {
            object.insert("state".into(), self.to_json_at(*state, depth + 1, visits)?);
        }
        if !items.is_empty() {
            let list = items
                .iter()
                .map(|&i| self.to_json_at(i, depth + 1, visits))
                .collect::<Result<_, _>>()?;
            object.insert("items".into(), Value::Array(list));
        }
        if !pairs.is_empty() {
            object.insert("pairs".into(), self.pairs_json(pairs, depth, visits)?);
        }
        Ok(Value::Object(object))
    }
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
