//! The pickle virtual machine: bytes in, a graph of data nodes out. It never imports, calls or
//! constructs anything: `REDUCE`, `NEWOBJ` and `BUILD` only record *what would have been called*,
//! as [`Node::Call`] data, for the typed layer to map onto Rust structs (or refuse by name).
//!
//! Nodes live in one arena ([`Pickle::nodes`]) and refer to each other by index, so memo references
//! share instead of copying (a "billion laughs" memo costs one node per opcode), nothing is
//! recursive while parsing (a deep nest cannot overflow the stack) and dropping is flat. Every
//! length field is checked against the input that remains before anything is allocated.
//! This module must not interpret globals: that is the typed layer's job.

use std::collections::HashMap;

mod ops;

/// Index of a node in [`Pickle::nodes`].
pub type NodeId = u32;

/// One value of the pickle, with its children as indices into the same arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer: little-endian two's-complement bytes, as `LONG1`/`LONG4` carry them.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<NodeId>),
    /// A list.
    List(Vec<NodeId>),
    /// A dict, in insertion order (keys may be any node: DCP keys its storage by objects).
    Dict(Vec<(NodeId, NodeId)>),
    /// A set or frozenset.
    Set(Vec<NodeId>),
    /// A global named by `GLOBAL`/`STACK_GLOBAL`: never imported.
    Global {
        /// The module, e.g. `torch`.
        module: String,
        /// The attribute, e.g. `Size`.
        name: String,
    },
    /// What `REDUCE` (`callee(*args)`) or `NEWOBJ` (`callee.__new__(callee, *args)`) would have
    /// built, with the state a later `BUILD` would have applied. Nothing was called.
    Call {
        /// The callable (normally a [`Node::Global`]).
        callee: NodeId,
        /// The argument tuple.
        args: NodeId,
        /// Whether it came from `NEWOBJ` rather than `REDUCE`.
        new_obj: bool,
        /// The `BUILD` state, if any.
        state: Option<NodeId>,
        /// Items `APPEND(S)` added to it (list subclasses), in order.
        items: Vec<NodeId>,
        /// Pairs `SETITEM(S)` added to it (dict subclasses such as `OrderedDict`), in order.
        pairs: Vec<(NodeId, NodeId)>,
    },
    /// A persistent id (`BINPERSID`): torch's reference to a tensor storage.
    PersId(NodeId),
}

/// Bounds on what a pickle may make the machine do. Every bound is checked before the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input accepted, in bytes.
    pub max_input: usize,
    /// Most nodes created (each opcode creates at most one).
    pub max_nodes: usize,
    /// Most values on the stack (all marks together).
    pub max_stack: usize,
    /// Most open `MARK`s at once (the nesting depth of a pickle).
    pub max_marks: usize,
    /// Most memo entries.
    pub max_memo: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input: 1 << 30,
            max_nodes: 1 << 26,
            max_stack: 1 << 24,
            max_marks: 1000,
            max_memo: 1 << 24,
        }
    }
}

/// Why a pickle was refused: the byte offset of the opcode and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    /// Offset of the opcode (or field) at fault.
    pub offset: usize,
    /// What is wrong, e.g. "opcode INST (b'i') is refused: ...".
    pub reason: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pickle byte {}: {}", self.offset, self.reason)
    }
}

/// A parsed pickle: the node arena and the root value.
#[derive(Debug, Clone, PartialEq)]
pub struct Pickle {
    /// Every node the pickle created.
    pub nodes: Vec<Node>,
    /// The value `STOP` returned.
    pub root: NodeId,
}

impl Pickle {
    /// The node `id` (out-of-range ids, which the machine never creates, read as `None`).
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes.get(id as usize).unwrap_or(&Node::None)
    }
}

/// Parses `data` as one pickle (protocol 2 to 5) under `limits`. The whole input must be the
/// pickle: bytes after `STOP` are an error.
pub fn parse(data: &[u8], limits: &Limits) -> Result<Pickle, PickleError> {
    if data.len() > limits.max_input {
        return Err(PickleError {
            offset: 0,
            reason: format!(
                "{} bytes is more than the {} this reader accepts",
                data.len(),
                limits.max_input
            ),
        });
    }
    let mut vm = Vm {
        data,
        pos: 0,
        op_at: 0,
        limits,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = vm.run()?;
    if vm.pos != data.len() {
        return Err(vm.err(format!(
            "{} bytes after STOP; a pickle file holds one pickle",
            data.len() - vm.pos
        )));
    }
    Ok(Pickle {
        nodes: vm.nodes,
        root,
    })
}

/// The machine's state while it runs.
struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    limits: &'a Limits,
    nodes: Vec<Node>,
    stack: Vec<NodeId>,
    marks: Vec<usize>,
    memo: HashMap<u64, NodeId>,
}

/// Opcodes refused outright, with the reason.
fn refused(op: u8) -> Option<&'static str> {
    Some(match op {
        b'i' => "INST (protocol 0/1 object creation by import)",
        b'o' => "OBJ (protocol 1 object creation)",
        0x82..=0x84 => "EXT1/EXT2/EXT4 (extension registry lookups)",
        b'P' => "PERSID (text persistent id)",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER (out-of-band buffers)",
        0x98 => "READONLY_BUFFER",
        b'I' | b'L' | b'F' | b'S' | b'V' | b'p' | b'g' => "a protocol 0 text opcode",
        _ => return None,
    })
}

impl Vm<'_> {
    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_at,
            reason: reason.into(),
        }
    }

    /// Takes `n` bytes, checked against what remains (before any allocation).
    fn take(&mut self, n: u64) -> Result<&[u8], PickleError> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!(
                "a length of {n} bytes runs past the end of the pickle ({remaining} bytes left)"
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from(u32::from_le_bytes(self.le::<4>()?)))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.le::<8>()?))
    }

    /// A text line (GLOBAL's module and name), without its newline.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().take(1024).position(|&b| b == b'\n') else {
            return Err(self.err("GLOBAL: no newline within 1024 bytes"));
        };
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| self.err("GLOBAL: the name is not UTF-8"))?
            .to_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn string(&mut self, n: u64) -> Result<String, PickleError> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.err("a unicode string is not valid UTF-8")),
        }
    }

    fn push_node(&mut self, node: Node) -> Result<(), PickleError> {
        let id = self.add(node)?;
        self.push(id)
    }

    fn add(&mut self, node: Node) -> Result<NodeId, PickleError> {
        if self.nodes.len() >= self.limits.max_nodes {
            return Err(self.err(format!(
                "more than {} values; refusing to go on",
                self.limits.max_nodes
            )));
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as NodeId)
    }

    fn push(&mut self, id: NodeId) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(self.err(format!(
                "more than {} values on the stack",
                self.limits.max_stack
            )));
        }
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<NodeId, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<NodeId, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<NodeId>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err("no MARK to pop to"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return Err(self.err(format!("more than {} memo entries", self.limits.max_memo)));
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let Some(&id) = self.memo.get(&key) else {
            return Err(self.err(format!("memo entry {key} was never stored")));
        };
        self.push(id)
    }

    fn run(&mut self) -> Result<NodeId, PickleError> {
        loop {
            self.op_at = self.pos;
            if self.pos >= self.data.len() {
                return Err(self.err("the pickle ends without STOP (truncated?)"));
            }
            let op = self.u8()?;
            if let Some(why) = refused(op) {
                return Err(self.err(format!("opcode {why} (0x{op:02x}) is refused")));
            }
            if op == b'.' {
                let root = self.pop()?;
                if !self.marks.is_empty() || !self.stack.is_empty() {
                    return Err(self.err("STOP with values or marks left on the stack"));
                }
                return Ok(root);
            }
            self.step(op)?;
        }
    }
}
