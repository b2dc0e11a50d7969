//! The graph: values, nodes and the constant store.
//!
//! Ids are indices and stay stable for the life of a graph: removing a node
//! leaves a tombstone, so a pass can hold ids across rewrites. Every value has
//! exactly one definition: a graph input, a constant, or one output of one
//! node.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{Op, Tensor, TensorType};

/// Index of a value in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Index of a node in the graph's node list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// How a value comes to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    Input,
    Const,
    /// Output `1` of node `0`.
    Node(NodeId, usize),
    /// Declared but not yet defined (only while a graph is being built).
    Undefined,
}

/// A value: a name (from the source model, for messages), its static type and
/// its definition.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: TensorType,
    pub def: ValueDef,
}

/// One operator application.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// Positional inputs; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
}

impl Node {
    /// The value at input position `i`, if present.
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
}

/// A computation graph in mlc's IR.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    /// The default-domain opset the graph was imported at.
    pub opset: i64,
    pub values: Vec<Value>,
    nodes: Vec<Option<Node>>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Weights and other constants, keyed by the value they define.
    pub consts: BTreeMap<ValueId, Arc<Tensor>>,
    /// Who reads each value (`[value] -> (node, input position)` in node
    /// order), built on the first [`Graph::users`] query and kept up to date
    /// by the node edits that can (add, remove, replace uses); `node_mut`
    /// drops it. Passes ask for users node after node, and a scan of the
    /// whole graph per question made them quadratic.
    users_index: std::sync::OnceLock<Vec<Vec<(NodeId, usize)>>>,
}

impl Graph {
    pub fn new(name: impl Into<String>, opset: i64) -> Graph {
        Graph {
            name: name.into(),
            opset,
            ..Graph::default()
        }
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0 as usize]
    }

    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.0 as usize]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.value(id).ty
    }

    /// Adds a value with no definition yet.
    pub fn add_value(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value {
            name: name.into(),
            ty,
            def: ValueDef::Undefined,
        });
        id
    }

    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let id = self.add_value(name, ty);
        self.value_mut(id).def = ValueDef::Input;
        self.inputs.push(id);
        id
    }

    /// Adds a constant value; its type is taken from the tensor.
    pub fn add_const(&mut self, name: impl Into<String>, t: impl Into<Arc<Tensor>>) -> ValueId {
        let t = t.into();
        let ty = TensorType::new(t.dtype(), super::Shape::known(t.shape()));
        let id = self.add_value(name, ty);
        self.value_mut(id).def = ValueDef::Const;
        self.consts.insert(id, t);
        id
    }

    /// Adds a node whose outputs are existing, not yet defined values, and
    /// marks them as defined by it.
    pub fn add_node(&mut self, node: Node) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        for (i, &o) in node.outputs.iter().enumerate() {
            self.value_mut(o).def = ValueDef::Node(id, i);
        }
        if let Some(index) = self.users_index.get_mut() {
            // The newest node: its reads go last, keeping node order.
            for (pos, v) in node.inputs.iter().enumerate() {
                if let Some(v) = v {
                    let k = v.0 as usize;
                    if index.len() <= k {
                        index.resize(k + 1, Vec::new());
                    }
                    index[k].push((id, pos));
                }
            }
        }
        self.nodes.push(Some(node));
        id
    }

    /// Removes a node, leaving a tombstone. Its outputs become undefined.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.nodes.get_mut(id.0 as usize)?.take()?;
        for &o in &node.outputs {
            self.value_mut(o).def = ValueDef::Undefined;
        }
        if let Some(index) = self.users_index.get_mut() {
            for v in node.inputs.iter().flatten() {
                if let Some(users) = index.get_mut(v.0 as usize) {
                    users.retain(|&(n, _)| n != id);
                }
            }
        }
        Some(node)
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// The node, to edit in place; the users index is rebuilt on the next
    /// query, since the edit may change what the node reads.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.users_index.take();
        self.nodes.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// Live nodes in insertion order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (NodeId(i as u32), n)))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    /// Slots in the node list, tombstones included (an upper bound for ids).
    pub fn node_capacity(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_const(&self, id: ValueId) -> bool {
        self.consts.contains_key(&id)
    }

    pub fn const_value(&self, id: ValueId) -> Option<&Tensor> {
        self.consts.get(&id).map(|t| t.as_ref())
    }

    /// The node defining `id`, if a node does.
    pub fn producer(&self, id: ValueId) -> Option<NodeId> {
        match self.value(id).def {
            ValueDef::Node(n, _) => Some(n),
            _ => None,
        }
    }

    /// Live nodes in an order where every node comes after the producers of
    /// its inputs. Fails, naming some of the nodes involved, when the graph has
    /// a cycle.
    pub fn topo_order(&self) -> crate::Result<Vec<NodeId>> {
        let cap = self.nodes.len();
        let mut indegree = vec![0usize; cap];
        let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); cap];
        for (id, node) in self.nodes() {
            for v in node.inputs.iter().flatten() {
                if let Some(p) = self.producer(*v) {
                    if self.node(p).is_some() {
                        indegree[id.0 as usize] += 1;
                        users[p.0 as usize].push(id);
                    }
                }
            }
        }
        let mut ready: Vec<NodeId> = self
            .nodes()
            .filter(|(id, _)| indegree[id.0 as usize] == 0)
            .map(|(id, _)| id)
            .collect();
        // Pop from the front in id order so the order is deterministic and
        // keeps the source order whenever the source was already sorted.
        ready.reverse();
        let mut order = Vec::with_capacity(cap);
        while let Some(n) = ready.pop() {
            order.push(n);
            let mut newly = Vec::new();
            for &u in &users[n.0 as usize] {
                let d = &mut indegree[u.0 as usize];
                *d -= 1;
                if *d == 0 {
                    newly.push(u);
                }
            }
            newly.sort();
            for u in newly.into_iter().rev() {
                ready.push(u);
            }
        }
        if order.len() == self.node_count() {
            Ok(order)
        } else {
            let done: std::collections::HashSet<NodeId> = order.into_iter().collect();
            let stuck: Vec<String> = self
                .nodes()
                .filter(|(id, _)| !done.contains(id))
                .take(5)
                .map(|(_, n)| format!("'{}'", n.name))
                .collect();
            Err(crate::Error::InvalidGraph(format!(
                "the graph has a cycle through nodes {}",
                stuck.join(", ")
            )))
        }
    }

    /// Every (node, input position) that reads `v`, in node order.
    pub fn users(&self, v: ValueId) -> Vec<(NodeId, usize)> {
        self.users_index()
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_default()
    }

    fn users_index(&self) -> &Vec<Vec<(NodeId, usize)>> {
        self.users_index.get_or_init(|| {
            let mut index = vec![Vec::new(); self.values.len()];
            for (id, n) in self.nodes() {
                for (pos, v) in n.inputs.iter().enumerate() {
                    if let Some(users) = v.and_then(|v| index.get_mut(v.0 as usize)) {
                        users.push((id, pos));
                    }
                }
            }
            index
        })
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    /// Reads of `v` by nodes plus its appearances among the graph outputs.
    pub fn use_count(&self, v: ValueId) -> usize {
        self.users(v).len() + self.outputs.iter().filter(|&&o| o == v).count()
    }

    /// Redirects every read of `old` (node inputs and graph outputs) to `new`.
    /// When `old` is a graph output, `new` takes over its name, so the
    /// model's interface keeps the names its users know.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        if old == new {
            return;
        }
        // Only the readers of `old` are touched, found through the index.
        self.users_index();
        if let Some(index) = self.users_index.get_mut() {
            let moved = index
                .get_mut(old.0 as usize)
                .map(std::mem::take)
                .unwrap_or_default();
            for &(n, pos) in &moved {
                if let Some(slot) = self.nodes[n.0 as usize]
                    .as_mut()
                    .and_then(|node| node.inputs.get_mut(pos))
                {
                    *slot = Some(new);
                }
            }
            let k = new.0 as usize;
            if index.len() <= k {
                index.resize(k + 1, Vec::new());
            }
            index[k].extend(moved);
            index[k].sort_unstable();
        }
        if self.outputs.contains(&old) {
            for o in self.outputs.iter_mut() {
                if *o == old {
                    *o = new;
                }
            }
            let name = std::mem::take(&mut self.value_mut(old).name);
            self.value_mut(old).name = format!("{name}.replaced");
            self.value_mut(new).name = name;
        }
    }

    /// Number of weight elements held in constants.
    pub fn param_count(&self) -> usize {
        self.consts.values().map(|t| t.numel()).sum()
    }
}
