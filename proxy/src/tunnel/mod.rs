//! The mTLS HTTP/2 CONNECT tunnel between node proxies (HBONE-like): a pooled client and the stream adapter.
//! The server side lives in `inbound`, where the tunnel ends and authorization happens.

mod pool;
mod stream;

pub use pool::{parse_forwarded_for, Pool, PoolConfig, PoolKey, TunnelError};
pub use stream::H2Stream;

/// HTTP/2 settings for bulk transfer, as ztunnel tunes them: the 64 KiB defaults cap one stream far below
/// what a link carries.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
