//! The mTLS HTTP/2 CONNECT tunnel between node proxies (HBONE-like): the pooled client (`pool`), the server
//! on 15008 (`server`), which hands each stream to the destination side, and the stream adapter.

mod pool;
pub(crate) mod server;
mod stream;

pub use pool::{parse_forwarded_for, Pool, PoolConfig, PoolKey, TunnelError};
pub use stream::H2Stream;

/// HTTP/2 settings for bulk transfer, as ztunnel tunes them: the 64 KiB defaults cap one stream far below
/// what a link carries.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Streams one HTTP/2 connection may carry at once (Envoy's and ztunnel's default); the pool dials another
/// connection beyond it, and servers refuse more.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// The largest header block a peer may send, on the tunnel and on every HTTP server of the proxy.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
