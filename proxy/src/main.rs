//! `strait-proxy`: the node proxy binary.

// jemalloc rather than glibc's malloc: under churn (pods, certificates, configuration changing all the time) the
// proxy's glibc heap kept growing in steps that it never gave back (+11-15 % RSS over a 10-minute soak on the
// busiest node), while jemalloc's decay returned it and RSS stayed flat; ztunnel makes the same choice.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    strait_proxy::cli::main()
}
