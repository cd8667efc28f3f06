//! Who may join a service: the Admission rules, compiled and evaluated.
//!
//! Workloads of the service's own namespace (pods of this cluster) are admitted by default;
//! every other workload needs an allow rule that matches it. A deny rule that matches wins
//! over everything, the default included. Every decision carries the rule behind it, for
//! the Endpoint's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use wireway_crds::conditions::reason;
use wireway_crds::{Admission, AdmissionRule, SpiffeId};

use super::key::ObjectKey;
use super::selector;
use super::world::Labels;

/// A workload asking to join, as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Its SPIFFE ID.
    pub identity: &'a SpiffeId,
    /// For a pod of this cluster, its namespace and that namespace's labels; `None` for
    /// external hosts (and, later, other clusters' workloads).
    pub local_namespace: Option<(&'a str, &'a Labels)>,
}

/// What admission decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Admitted or not.
    pub admitted: bool,
    /// `Admitted`, `Denied` or `NotAdmitted`.
    pub reason: &'static str,
    /// The rule behind it, for a person.
    pub message: String,
    /// The Admission whose rule decided, if one did.
    pub by: Option<ObjectKey>,
}

/// One rule in a form that can be evaluated.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(SpiffeId),
    Prefix(SpiffeId),
    TrustDomain(String),
    Namespaces(LabelSelector),
}

#[derive(Debug, Clone)]
struct Rule {
    admission: ObjectKey,
    /// `allow[0]`, `deny[2]`: where the rule is, for messages.
    at: String,
    /// `spiffeId spiffe://...`: what it matches, for messages.
    what: String,
    matcher: Matcher,
}

/// The compiled Admissions of one service.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// A rule that could not be compiled; the API server should have refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRule {
    /// The Admission holding it.
    pub admission: ObjectKey,
    /// What is wrong, with the rule's place.
    pub message: String,
}

impl Policy {
    /// Compiles the Admissions governing one service, sorted by name so every decision is
    /// deterministic. Rules that do not compile are left out and returned, so the
    /// Admission can say so; the others stay in force.
    pub fn compile<'a>(
        admissions: impl IntoIterator<Item = &'a Admission>,
    ) -> (Self, Vec<InvalidRule>) {
        let mut admissions: Vec<&Admission> = admissions.into_iter().collect();
        admissions.sort_by_key(|a| ObjectKey::of(&a.metadata));
        let mut policy = Policy::default();
        let mut invalid = Vec::new();
        for admission in admissions {
            let key = ObjectKey::of(&admission.metadata);
            for (list, rules, out) in [
                ("allow", &admission.spec.allow, &mut policy.allow),
                ("deny", &admission.spec.deny, &mut policy.deny),
            ] {
                for (i, rule) in rules.iter().enumerate() {
                    let at = format!("{list}[{i}]");
                    match compile_rule(rule) {
                        Ok((what, matcher)) => out.push(Rule {
                            admission: key.clone(),
                            at,
                            what,
                            matcher,
                        }),
                        Err(e) => invalid.push(InvalidRule {
                            admission: key.clone(),
                            message: format!("{at}: {e}"),
                        }),
                    }
                }
            }
        }
        (policy, invalid)
    }

    /// Decides whether `candidate` may join the service, which lives in `service_namespace`.
    pub fn decide(&self, candidate: Candidate<'_>, service_namespace: &str) -> Decision {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(candidate)) {
            return rule.decision(false, reason::DENIED, "denied");
        }
        if candidate
            .local_namespace
            .is_some_and(|(ns, _)| ns == service_namespace)
        {
            return Decision {
                admitted: true,
                reason: reason::ADMITTED,
                message: "same namespace as the service".into(),
                by: None,
            };
        }
        match self.allow.iter().find(|r| r.matches(candidate)) {
            Some(rule) => rule.decision(true, reason::ADMITTED, "allowed"),
            None => Decision {
                admitted: false,
                reason: reason::NOT_ADMITTED,
                message: format!(
                    "no Admission in namespace {service_namespace} allows {}",
                    candidate.identity
                ),
                by: None,
            },
        }
    }
}

impl Rule {
    /// The decision this rule makes, naming itself: `denied by Admission red/x (deny[0]: ...)`.
    fn decision(&self, admitted: bool, reason: &'static str, verb: &str) -> Decision {
        Decision {
            admitted,
            reason,
            message: format!(
                "{verb} by Admission {} ({}: {})",
                self.admission, self.at, self.what
            ),
            by: Some(self.admission.clone()),
        }
    }

    fn matches(&self, candidate: Candidate<'_>) -> bool {
        match &self.matcher {
            Matcher::Exact(id) => candidate.identity == id,
            Matcher::Prefix(prefix) => candidate.identity.has_prefix(prefix),
            Matcher::TrustDomain(td) => candidate.identity.trust_domain() == td,
            // Compiled selectors are valid (compile_rule checked them), so an error here
            // cannot happen; treat it as no match, which admits nothing.
            Matcher::Namespaces(sel) => candidate
                .local_namespace
                .is_some_and(|(_, labels)| selector::matches(sel, labels).unwrap_or(false)),
        }
    }
}

fn compile_rule(rule: &AdmissionRule) -> Result<(String, Matcher), String> {
    let parse = |s: &str| s.parse::<SpiffeId>().map_err(|e| format!("{s:?}: {e}"));
    let matchers: Vec<(String, Matcher)> = [
        rule.spiffe_id
            .as_deref()
            .map(|s| Ok((format!("spiffeId {s}"), Matcher::Exact(parse(s)?)))),
        rule.spiffe_id_prefix
            .as_deref()
            .map(|s| Ok((format!("spiffeIdPrefix {s}"), Matcher::Prefix(parse(s)?)))),
        rule.trust_domain.as_deref().map(|td| {
            td.parse::<wireway_crds::TrustDomain>()
                .map_err(|e| format!("{td:?}: {e}"))?;
            Ok((
                format!("trustDomain {td}"),
                Matcher::TrustDomain(td.to_owned()),
            ))
        }),
        rule.namespace_selector.as_ref().map(|sel| {
            selector::matches(sel, &Labels::new()).map_err(|e| e.to_string())?;
            Ok((
                "namespaceSelector".to_owned(),
                Matcher::Namespaces(sel.clone()),
            ))
        }),
    ]
    .into_iter()
    .flatten()
    .collect::<Result<_, String>>()?;
    match <[_; 1]>::try_from(matchers) {
        Ok([matcher]) => Ok(matcher),
        Err(found) => Err(format!(
            "a rule needs exactly one of spiffeId, spiffeIdPrefix, trustDomain or namespaceSelector (found {})",
            found.len()
        )),
    }
}
