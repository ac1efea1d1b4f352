//! Compiles `proto/pgsat.proto` with protox (pure Rust, no protoc) and prost.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pgsat.proto");
    let fds = protox::compile(["proto/pgsat.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
