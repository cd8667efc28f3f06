//! Kubernetes label selectors (`metav1.LabelSelector`), evaluated as the API server does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::world::Labels;

/// A selector the API server would have refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator other than In, NotIn, Exists, DoesNotExist.
    #[error("unknown label selector operator {0:?} (use In, NotIn, Exists or DoesNotExist)")]
    Operator(String),
    /// In or NotIn without values, or Exists or DoesNotExist with values.
    #[error("operator {0} on key {1:?} has the wrong number of values")]
    Values(String, String),
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything; every
/// `matchLabels` pair and every `matchExpressions` requirement must hold.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> Result<bool, SelectorError> {
    let pairs_hold = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let mut expressions_hold = true;
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let value = labels.get(&requirement.key);
        let op = requirement.operator.as_str();
        let holds = match (op, values.is_empty()) {
            ("In", false) => value.is_some_and(|v| values.contains(v)),
            ("NotIn", false) => value.is_none_or(|v| !values.contains(v)),
            ("Exists", true) => value.is_some(),
            ("DoesNotExist", true) => value.is_none(),
            ("In" | "NotIn" | "Exists" | "DoesNotExist", _) => {
                return Err(SelectorError::Values(
                    op.to_owned(),
                    requirement.key.clone(),
                ));
            }
            _ => return Err(SelectorError::Operator(op.to_owned())),
        };
        expressions_hold &= holds;
    }
    Ok(pairs_hold && expressions_hold)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert_eq!(matches(&LabelSelector::default(), &labels(&[])), Ok(true));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("net", "red"), ("tier", "db")])),
            match_expressions: None,
        };
        assert_eq!(
            matches(&sel, &labels(&[("net", "red"), ("tier", "db"), ("x", "y")])),
            Ok(true)
        );
        assert_eq!(matches(&sel, &labels(&[("net", "red")])), Ok(false));
    }

    #[test]
    fn expressions() {
        let l = labels(&[("net", "red")]);
        let cases = [
            (expr("net", "In", &["red", "green"]), true),
            (expr("net", "In", &["green"]), false),
            (expr("net", "NotIn", &["green"]), true),
            (expr("other", "NotIn", &["green"]), true),
            (expr("net", "Exists", &[]), true),
            (expr("other", "Exists", &[]), false),
            (expr("other", "DoesNotExist", &[]), true),
        ];
        for (sel, want) in cases {
            assert_eq!(matches(&sel, &l), Ok(want), "{sel:?}");
        }
        assert_eq!(
            matches(&expr("net", "Has", &[]), &l),
            Err(SelectorError::Operator("Has".into()))
        );
        assert!(matches(&expr("net", "In", &[]), &l).is_err());
        assert!(matches(&expr("net", "Exists", &["x"]), &l).is_err());
    }
}
