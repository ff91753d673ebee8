//! A position-preserving view of the YAML document, used to pin errors to line:column.
//!
//! The typed parse (serde) knows *what* is wrong; this tree knows *where* each key and value
//! is written. It is built by a second pass over the same text with serde-saphyr's
//! [`Spanned`] wrapper, so it agrees with the typed parse on what the YAML means.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in the manifest text (`0:0` when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) fn from_location(location: serde_saphyr::Location) -> Pos {
        Pos {
            line: usize::try_from(location.line()).unwrap_or(0),
            column: usize::try_from(location.column()).unwrap_or(0),
        }
    }

    pub(crate) fn is_known(self) -> bool {
        self.line > 0
    }
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Map(Vec<Entry>),
    Seq(Vec<Node>),
    Scalar(String),
    Null,
}

/// A mapping entry: the key (text and position) and the value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A step in a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path the way errors show it: `services.api.run[0]`.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Parses `text` into a position tree. Syntax errors come back as serde-saphyr errors.
pub(crate) fn parse(text: &str) -> Result<Node, serde_saphyr::Error> {
    // Repeated keys reach the visitor, so `duplicates` can report all of them by path.
    let options =
        serde_saphyr::options! { duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough };
    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, options)?;
    Ok(Node {
        pos: Pos::from_location(root.referenced),
        kind: root.value.kind,
    })
}

impl Node {
    /// Every key written twice in one mapping: its path, where it is repeated, where it
    /// was first written.
    pub(crate) fn duplicates(&self) -> Vec<(Vec<Seg>, Pos, Pos)> {
        let mut out = Vec::new();
        self.collect_duplicates(&mut Vec::new(), &mut out);
        out
    }

    fn collect_duplicates(&self, path: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, Pos, Pos)>) {
        match &self.kind {
            Kind::Map(entries) => {
                // Linear in the keys: a map may be large, and it is caller input.
                let mut first: std::collections::HashMap<&str, Pos> =
                    std::collections::HashMap::with_capacity(entries.len());
                for entry in entries {
                    path.push(Seg::Key(entry.key.clone()));
                    match first.entry(entry.key.as_str()) {
                        std::collections::hash_map::Entry::Occupied(at) => {
                            out.push((path.clone(), entry.key_pos, *at.get()));
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(entry.key_pos);
                        }
                    }
                    entry.value.collect_duplicates(path, out);
                    path.pop();
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    item.collect_duplicates(path, out);
                    path.pop();
                }
            }
            Kind::Scalar(_) | Kind::Null => {}
        }
    }

    /// The node written at `path`, if any.
    pub(crate) fn get(&self, path: &[Seg]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = match (seg, &node.kind) {
                (Seg::Key(k), Kind::Map(entries)) => &entries.iter().find(|e| e.key == *k)?.value,
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// A short description of this node for messages: `` `three` ``, `a list`, `a map`.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Map(_) => "a map".to_string(),
            Kind::Seq(_) => "a list".to_string(),
            Kind::Scalar(s) => format!("`{s}`"),
            Kind::Null => "nothing".to_string(),
        }
    }

    /// Where `path` is written: the value's position (`value = true`) or its key's position.
    /// When the path is not written (a default applies), the deepest written ancestor's key.
    pub(crate) fn locate(&self, path: &[Seg], value: bool) -> Pos {
        let mut node = self;
        let mut best = self.pos;
        for seg in path {
            match (seg, &node.kind) {
                (Seg::Key(k), Kind::Map(entries)) => match entries.iter().find(|e| e.key == *k) {
                    Some(entry) => {
                        best = entry.key_pos;
                        node = &entry.value;
                    }
                    None => return best,
                },
                (Seg::Index(i), Kind::Seq(items)) => match items.get(*i) {
                    Some(item) => {
                        best = item.pos;
                        node = item;
                    }
                    None => return best,
                },
                _ => return best,
            }
        }
        if value && node.pos.is_known() {
            node.pos
        } else {
            best
        }
    }

    /// The path of the node (key or value) written at `pos`, or of the last node written
    /// before it. Used to name the field of an error serde only gave a position for.
    pub(crate) fn path_at(&self, pos: Pos) -> Vec<Seg> {
        let mut best: (Pos, Vec<Seg>) = (self.pos, Vec::new());
        let mut path = Vec::new();
        self.walk_before(pos, &mut path, &mut best);
        best.1
    }

    fn walk_before(&self, pos: Pos, path: &mut Vec<Seg>, best: &mut (Pos, Vec<Seg>)) {
        fn consider(p: Pos, pos: Pos, path: &[Seg], best: &mut (Pos, Vec<Seg>)) {
            if p.is_known() && p <= pos && p >= best.0 {
                *best = (p, path.to_vec());
            }
        }
        match &self.kind {
            Kind::Map(entries) => {
                for entry in entries {
                    path.push(Seg::Key(entry.key.clone()));
                    consider(entry.key_pos, pos, path, best);
                    consider(entry.value.pos, pos, path, best);
                    entry.value.walk_before(pos, path, best);
                    path.pop();
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    consider(item.pos, pos, path, best);
                    item.walk_before(pos, path, best);
                    path.pop();
                }
            }
            Kind::Scalar(_) | Kind::Null => {}
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

fn scalar<E>(text: impl ToString) -> Result<Node, E> {
    Ok(Node {
        pos: Pos::default(),
        kind: Kind::Scalar(text.to_string()),
    })
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        scalar(v)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        scalar(String::from_utf8_lossy(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node {
            pos: Pos::default(),
            kind: Kind::Null,
        })
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(Node {
                pos: Pos::from_location(item.referenced),
                kind: item.value.kind,
            });
        }
        Ok(Node {
            pos: Pos::default(),
            kind: Kind::Seq(items),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Node>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            let key_text = match key.value.kind {
                Kind::Scalar(s) => s,
                Kind::Null => String::new(),
                other => format!("{other:?}"),
            };
            entries.push(Entry {
                key: key_text,
                key_pos: Pos::from_location(key.referenced),
                value: Node {
                    pos: Pos::from_location(value.referenced),
                    kind: value.value.kind,
                },
            });
        }
        Ok(Node {
            pos: Pos::default(),
            kind: Kind::Map(entries),
        })
    }
}
