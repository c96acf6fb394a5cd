//! The opcodes: one function per family (numbers, strings, containers, objects and the memo),
//! each checking its operands before it touches the arena. Part of the machine in `vm.rs`.

use super::{Node, NodeId, PickleError, Vm};

impl Vm<'_> {
    /// Runs one opcode other than STOP.
    pub(super) fn step(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if !(2..=5).contains(&proto) {
                    return Err(self.err(format!("pickle protocol {proto}; only 2 to 5 are read")));
                }
            }
            0x95 => {
                let len = self.u64()?;
                if len > (self.data.len() - self.pos) as u64 {
                    return Err(self.err("FRAME is longer than the rest of the pickle"));
                }
            }
            b'(' => {
                if self.marks.len() >= self.limits.max_marks {
                    return Err(self.err(format!(
                        "more than {} nested MARKs (too deeply nested)",
                        self.limits.max_marks
                    )));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.push(top)?;
            }
            b'N' => self.push_node(Node::None)?,
            0x88 => self.push_node(Node::Bool(true))?,
            0x89 => self.push_node(Node::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.le::<4>()?);
                self.push_node(Node::Int(i64::from(v)))?;
            }
            b'K' => {
                let v = self.u8()?;
                self.push_node(Node::Int(i64::from(v)))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le::<2>()?);
                self.push_node(Node::Int(i64::from(v)))?;
            }
            0x8a => {
                let n = u64::from(self.u8()?);
                let node = long(self.take(n)?);
                self.push_node(node)?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.le::<4>()?);
                let n = u64::try_from(n).map_err(|_| self.err("LONG4 with a negative length"))?;
                let node = long(self.take(n)?);
                self.push_node(node)?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.le::<8>()?);
                self.push_node(Node::Float(v))?;
            }
            _ => self.step_strings(op)?,
        }
        Ok(())
    }

    fn step_strings(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x8c => {
                let n = u64::from(self.u8()?);
                let s = self.string(n)?;
                self.push_node(Node::Str(s))?;
            }
            b'X' => {
                let n = self.u32()?;
                let s = self.string(n)?;
                self.push_node(Node::Str(s))?;
            }
            0x8d => {
                let n = self.u64()?;
                let s = self.string(n)?;
                self.push_node(Node::Str(s))?;
            }
            b'C' | b'B' | 0x8e => {
                let n = match op {
                    b'C' => u64::from(self.u8()?),
                    b'B' => self.u32()?,
                    _ => self.u64()?,
                };
                let bytes = self.take(n)?.to_vec();
                self.push_node(Node::Bytes(bytes))?;
            }
            // Python 2 str (BINSTRING, SHORT_BINSTRING): latin-1 text, as Python 3 reads it.
            b'T' | b'U' => {
                let n = if op == b'T' {
                    self.u32()?
                } else {
                    u64::from(self.u8()?)
                };
                let s: String = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                self.push_node(Node::Str(s))?;
            }
            _ => self.step_containers(op)?,
        }
        Ok(())
    }

    fn step_containers(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b')' => self.push_node(Node::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push_node(Node::Tuple(items))?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_node(Node::Tuple(items))?;
            }
            b']' => self.push_node(Node::List(Vec::new()))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push_node(Node::List(items))?;
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b'}' => self.push_node(Node::Dict(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push_node(Node::Dict(pairs))?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.extend_dict(vec![(key, value)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.extend_dict(pairs)?;
            }
            0x8f => self.push_node(Node::Set(Vec::new()))?,
            0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                match self.nodes.get_mut(target as usize) {
                    Some(Node::Set(set)) => set.extend(items),
                    _ => return Err(self.err("ADDITEMS on something that is not a set")),
                }
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push_node(Node::Set(items))?;
            }
            _ => self.step_objects(op)?,
        }
        Ok(())
    }

    fn step_objects(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push_node(Node::Global { module, name })?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Node::Str(module), Node::Str(name)) =
                    (self.node(module).clone(), self.node(name).clone())
                else {
                    return Err(self.err("STACK_GLOBAL needs two strings"));
                };
                self.push_node(Node::Global { module, name })?;
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callee = self.pop()?;
                if !matches!(self.node(args), Node::Tuple(_)) {
                    return Err(self.err("REDUCE/NEWOBJ arguments are not a tuple"));
                }
                self.push_node(Node::Call {
                    callee,
                    args,
                    new_obj: op == 0x81,
                    state: None,
                    items: Vec::new(),
                    pairs: Vec::new(),
                })?;
            }
            b'b' => {
                let new_state = self.pop()?;
                let target = self.top()?;
                match self.nodes.get_mut(target as usize) {
                    Some(Node::Call { state, .. }) if state.is_none() => {
                        *state = Some(new_state);
                    }
                    Some(Node::Call { .. }) => {
                        return Err(self.err("BUILD twice on the same object"));
                    }
                    _ => return Err(self.err("BUILD on something that is not an object")),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push_node(Node::PersId(pid))?;
            }
            b'q' => {
                let key = u64::from(self.u8()?);
                self.memo_put(key)?;
            }
            b'r' => {
                let key = self.u32()?;
                self.memo_put(key)?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = u64::from(self.u8()?);
                self.memo_get(key)?;
            }
            b'j' => {
                let key = self.u32()?;
                self.memo_get(key)?;
            }
            _ => return Err(self.err(format!("unknown or unsupported opcode 0x{op:02x}"))),
        }
        Ok(())
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes.get(id as usize).unwrap_or(&Node::None)
    }

    fn pairs(&self, items: Vec<NodeId>) -> Result<Vec<(NodeId, NodeId)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("an odd number of items for a dict"));
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn extend_list(&mut self, items: Vec<NodeId>) -> Result<(), PickleError> {
        let target = self.top()?;
        match self.nodes.get_mut(target as usize) {
            Some(Node::List(list)) | Some(Node::Call { items: list, .. }) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND(S) on something that is not a list")),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(NodeId, NodeId)>) -> Result<(), PickleError> {
        let target = self.top()?;
        match self.nodes.get_mut(target as usize) {
            Some(Node::Dict(dict)) | Some(Node::Call { pairs: dict, .. }) => {
                dict.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("SETITEM(S) on something that is not a dict")),
        }
    }
}

/// A `LONG1`/`LONG4` payload: little-endian two's complement.
fn long(bytes: &[u8]) -> Node {
    if bytes.is_empty() {
        return Node::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        return Node::Int(i64::from_le_bytes(buf));
    }
    // Longer encodings of a value that fits (sign extension only) still read as an Int.
    let (low, high) = bytes.split_at(8);
    let fill = if low[7] & 0x80 != 0 { 0xff } else { 0 };
    if high.iter().all(|&b| b == fill) {
        return long(low);
    }
    Node::BigInt(bytes.to_vec())
}
