//! How large a request may be, for every surface: the decide layer validates requests
//! against these caps and the engine sizes forwarded messages from them, so both read
//! one definition (and the engine need not import the layer above it).

/// Most hits in one `quorate.v1` request.
pub const MAX_HITS: usize = 256;
/// Longest `quorate.v1` counter key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest `quorate.v1` limit name, in bytes.
pub const MAX_LIMIT_LEN: usize = 128;

/// Most descriptors in one RLS request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one RLS descriptor.
pub const MAX_ENTRIES: usize = 32;
/// Longest RLS domain, entry key or entry value, in bytes.
pub const MAX_TEXT: usize = 1024;
