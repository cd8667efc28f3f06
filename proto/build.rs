//! Compiles the node API with a vendored protoc, so a build needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The transport (channel, server) is the binaries' business; this crate stays plain data
    // and service traits.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(
            config,
            &["proto/wireway/node/v1alpha1/node.proto"],
            &["proto"],
        )?;
    Ok(())
}
