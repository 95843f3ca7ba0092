//! A rule's `metadata:` as envoyproxy/ratelimit returns it to Envoy (RLS
//! `dynamic_metadata`): a JSON-like tree with protobuf `Struct` semantics (numbers are
//! doubles). The server's RLS adapter turns it into a `google.protobuf.Struct`; keeping
//! the protobuf type out of the policy keeps this crate free of gRPC.

use std::collections::HashMap;

/// A mapping: a `Struct`'s fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub fields: HashMap<String, MetadataValue>,
}

/// One value: a `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<MetadataValue>),
    Map(Metadata),
}
