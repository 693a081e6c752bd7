//! `strait-proxy`: the node proxy binary.

fn main() -> anyhow::Result<()> {
    strait_proxy::cli::main()
}
