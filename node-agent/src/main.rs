//! `wireway-agent`: converges a node's kernel (WireGuard, veths, addresses, routes, policy
//! rules) to the NodeState the operator serves.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wireway_agent::agent::{Agent, StateDir};
use wireway_agent::dataplane::{describe, wireguard};
use wireway_proto::NodeState;

/// The Wireway node agent.
#[derive(Debug, Parser)]
#[command(name = "wireway-agent", version)]
struct Cli {
    /// Directory for the node's private key (0600) and WireGuard control sockets.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/wireway",
        env = "WIREWAY_STATE_DIR"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge the kernel once to a NodeState read from a file (JSON or YAML), and print
    /// what changed.
    Apply {
        /// The NodeState file.
        #[arg(long)]
        node_state: PathBuf,
    },
    /// Print what the kernel holds of the agent's objects.
    Show,
    /// Print this node's WireGuard public key.
    PublicKey,
    /// Run one userspace WireGuard device (started by the agent itself).
    #[command(hide = true)]
    WireguardUserspace {
        /// Interface name.
        #[arg(long)]
        interface: String,
        /// Control socket path.
        #[arg(long)]
        socket: PathBuf,
    },
}

fn read_state(path: &PathBuf) -> Result<NodeState, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read {}: {e}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| format!("failed to parse {} as a NodeState: {e}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::WireguardUserspace { interface, socket } = &cli.command {
        return match wireguard::run_device(interface, socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let state = StateDir(cli.state_dir.clone());
    if let Command::PublicKey = &cli.command {
        return match state.private_key().map(|k| wireguard::public_key(&k)) {
            Ok(Ok(public)) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => fail(&e),
            Err(e) => fail(&e),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    runtime.block_on(async {
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wireway-agent"));
        let agent = match Agent::new(&state, &program).await {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        match cli.command {
            Command::Apply { node_state } => {
                let desired = match read_state(&node_state) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                match agent.converge(&desired).await {
                    Ok(pass) => {
                        for op in &pass.ops {
                            println!("{}", describe(op));
                        }
                        for e in &pass.desired_errors {
                            eprintln!("skipped: {e}");
                        }
                        for e in &pass.apply_errors {
                            eprintln!("error: {}", chain(e));
                        }
                        println!(
                            "{} operations, {} netlink writes, {} errors ({} WireGuard)",
                            pass.ops.len(),
                            pass.writes,
                            pass.apply_errors.len(),
                            agent.backend()
                        );
                        if pass.apply_errors.is_empty() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        }
                    }
                    Err(e) => fail(&e),
                }
            }
            Command::Show => match agent.show().await {
                Ok(plane) => {
                    println!("{plane:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Command::PublicKey | Command::WireguardUserspace { .. } => ExitCode::SUCCESS,
        }
    })
}

/// An error with its causes, one after another.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", chain(e));
    ExitCode::FAILURE
}
