//! Compiles the node API, the status API and the federation API with a vendored protoc, so a build needs no
//! system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // A service's names go to every node carrying it: the records are written by hand
    // (src/dns.rs) so that all those states share one copy.
    config.extern_path(".wireway.node.v1alpha1.ServiceDns", "crate::ServiceDns");
    // The transport (channel, server) is the binaries' business; this crate stays plain data
    // and service traits.
    tonic_prost_build::configure()
        .build_transport(false)
        // NodeState is also a file format (`wireway-agent apply --node-state`): JSON or
        // YAML with camelCase fields, every field optional.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(rename_all = \"camelCase\", default)]")
        .enum_attribute(".", "#[serde(rename_all = \"camelCase\")]")
        .compile_with_config(
            config,
            &[
                "proto/wireway/node/v1alpha1/node.proto",
                "proto/wireway/status/v1alpha1/status.proto",
                "proto/wireway/federation/v1alpha1/federation.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
