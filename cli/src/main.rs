//! `wireway`: the Wireway command line.
//!
//! * `wireway validate PATH...` checks manifests against the Wireway CRDs (schema and CEL
//!   rules) without a cluster, the way the API server will: for pre-commit hooks and CI of
//!   GitOps repositories.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod validate;

/// Wireway: flat L3 network services over WireGuard, across nodes, clusters and companies.
#[derive(Debug, Parser)]
#[command(name = "wireway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check NetworkService, Endpoint and Admission manifests against the CRDs' schema and
    /// CEL rules, as the API server would; objects of other API groups are listed and
    /// skipped. Exits 1 if any object is invalid.
    Validate {
        /// YAML files, or directories searched for *.yaml and *.yml files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { paths } => validate::run(&paths),
    }
}
