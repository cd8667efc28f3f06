//! The agent's nftables table through the `nft` binary (as kube-proxy's nftables mode
//! does): scripts from [`crate::converge::firewall`] go to `nft -f -`, one transaction
//! each; `nft -j list table inet wireway` is read back into a [`Firewall`]. Only that
//! table is ever named.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::converge::firewall::{self, Firewall, Part, Source};

/// The program.
const NFT: &str = "nft";

/// Why `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// It could not be run (not installed?).
    #[error("failed to run {NFT} (is nftables installed?)")]
    Run(#[source] std::io::Error),
    /// It refused.
    #[error("{NFT} failed: {0}")]
    Refused(String),
    /// Its listing did not parse.
    #[error("{NFT}'s listing does not parse")]
    Listing(#[source] serde_json::Error),
}

/// Runs `nft` with `args`, `input` on its standard input; its standard output.
fn nft(args: &[String], input: &str) -> Result<String, NftError> {
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Run)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(NftError::Run)?;
    }
    let out = child.wait_with_output().map_err(NftError::Run)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(NftError::Refused(stderr.trim().to_owned()))
    }
}

/// Runs `nft` off the runtime's thread.
async fn nft_blocking(args: Vec<String>, input: String) -> Result<String, NftError> {
    tokio::task::spawn_blocking(move || nft(&args, &input))
        .await
        .map_err(|e| NftError::Run(std::io::Error::other(e)))?
}

/// Applies `script` in one transaction (`nft -f -`): all of it or nothing.
pub async fn apply(script: String) -> Result<(), NftError> {
    nft_blocking(vec!["-f".into(), "-".into()], script)
        .await
        .map(drop)
}

/// The agent's table as the kernel holds it; `None` when there is none.
pub async fn list() -> Result<Option<Firewall>, NftError> {
    let args = format!("-j list table {}", firewall::TABLE);
    let args = args.split(' ').map(str::to_owned).collect();
    match nft_blocking(args, String::new()).await {
        Ok(json) => parse(&json).map(Some).map_err(NftError::Listing),
        Err(NftError::Refused(why)) if why.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// A listing (`nft -j list table ...`) as a [`Firewall`]: its sets, chains and rules (by
/// comment) and the sources in its sets.
pub fn parse(json: &str) -> Result<Firewall, serde_json::Error> {
    let listing: Value = serde_json::from_str(json)?;
    let mut parts = Vec::new();
    let mut sources = BTreeSet::new();
    let items = listing["nftables"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for item in items {
        if let Some(set) = item.get("set") {
            let key = match &set["type"] {
                Value::Array(types) => types
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" . "),
                other => other.as_str().unwrap_or_default().to_owned(),
            };
            parts.push(Part::Set {
                name: text(&set["name"]),
                key,
            });
            let elements = set["elem"].as_array().map_or(&[][..], Vec::as_slice);
            sources.extend(elements.iter().filter_map(source_of));
        } else if let Some(chain) = item.get("chain") {
            let hook = chain.get("hook").map(|hook| {
                format!(
                    "{} {} {} {}",
                    text(&chain["type"]),
                    text(hook),
                    chain["prio"],
                    text(&chain["policy"])
                )
            });
            parts.push(Part::Chain {
                name: text(&chain["name"]),
                hook,
            });
        } else if let Some(rule) = item.get("rule") {
            parts.push(Part::Rule {
                chain: text(&rule["chain"]),
                comment: text(&rule["comment"]),
            });
        }
    }
    Ok(Firewall {
        parts: firewall::canonical(parts),
        sources,
    })
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A set element `{"concat": ["wwv1", "10.0.0.1"]}` (or wrapped in `{"elem": {"val":
/// ...}}`) as a source.
fn source_of(element: &Value) -> Option<Source> {
    let element = element
        .get("elem")
        .and_then(|e| e.get("val"))
        .unwrap_or(element);
    let pair = element.get("concat")?.as_array()?;
    let [device, address] = pair.as_slice() else {
        return None;
    };
    Some(Source {
        device: device.as_str()?.to_owned(),
        address: address.as_str()?.parse::<IpAddr>().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nftables 1.0.6 lists for a table made by [`firewall::replace_script`].
    fn listing(rules: &[(&str, &str)], elements: &str) -> String {
        let rules: Vec<String> = rules
            .iter()
            .enumerate()
            .map(|(i, (chain, comment))| {
                format!(
                    r#"{{"rule": {{"family": "inet", "table": "wireway", "chain": "{chain}", "handle": {}, "comment": "{comment}", "expr": []}}}}"#,
                    10 + i
                )
            })
            .collect();
        format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
            {{"table": {{"family": "inet", "name": "wireway", "handle": 1}}}},
            {{"set": {{"family": "inet", "name": "sources4", "table": "wireway", "type": ["ifname", "ipv4_addr"], "handle": 4{elements}}}}},
            {{"set": {{"family": "inet", "name": "sources6", "table": "wireway", "type": ["ifname", "ipv6_addr"], "handle": 5}}}},
            {{"chain": {{"family": "inet", "table": "wireway", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}}},
            {{"chain": {{"family": "inet", "table": "wireway", "name": "member", "handle": 2}}}},
            {{"chain": {{"family": "inet", "table": "wireway", "name": "input", "handle": 3, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}}},
            {}]}}"#,
            rules.join(",\n")
        )
    }

    fn rules() -> Vec<(String, String)> {
        firewall::parts()
            .into_iter()
            .filter_map(|p| match p {
                Part::Rule { chain, comment } => Some((chain, comment)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_listing_of_the_table_as_made_is_the_table_wanted() {
        let rules = rules();
        let rules: Vec<(&str, &str)> = rules
            .iter()
            .map(|(c, r)| (c.as_str(), r.as_str()))
            .collect();
        let json = listing(
            &rules,
            r#", "elem": [{"concat": ["wwv1", "10.0.0.1"]}, {"elem": {"val": {"concat": ["wwv2", "10.0.0.2"]}, "counter": {}}}]"#,
        );
        let found = parse(&json).unwrap();
        let source = |d: &str, a: &str| Source {
            device: d.into(),
            address: a.parse().unwrap(),
        };
        assert_eq!(
            found,
            Firewall::with_sources(BTreeSet::from([
                source("wwv1", "10.0.0.1"),
                source("wwv2", "10.0.0.2")
            ]))
        );
    }

    #[test]
    fn a_rule_removed_or_a_chain_changed_by_hand_is_a_difference() {
        let rules = rules();
        let mut rules: Vec<(&str, &str)> = rules
            .iter()
            .map(|(c, r)| (c.as_str(), r.as_str()))
            .collect();
        rules.remove(1);
        assert_ne!(
            parse(&listing(&rules, "")).unwrap().parts,
            firewall::parts()
        );
        let all = self::rules();
        let all: Vec<(&str, &str)> = all.iter().map(|(c, r)| (c.as_str(), r.as_str())).collect();
        let changed = listing(&all, "").replace(
            r#""prio": -10, "policy": "accept""#,
            r#""prio": -10, "policy": "drop""#,
        );
        assert_ne!(parse(&changed).unwrap().parts, firewall::parts());
    }
}
