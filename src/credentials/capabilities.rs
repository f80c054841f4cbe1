//! Client capabilities (`client_capabilities = ["cp1"]`): a profile that declares them tells Entra,
//! in every token request, that patless handles Continuous Access Evaluation claims challenges, so
//! Entra may issue long-lived CAE tokens and revoke them by challenge instead of by expiry.
//!
//! The declaration travels as the `claims` request parameter,
//! `{"access_token":{"xms_cc":{"values":["cp1"]}}}`, merged with a claims challenge when there is
//! one (MSAL does the same). A wrapper around any credential that can send claims.

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{AccessToken, BoxFuture, Credential, CredentialError};

/// Any credential, with capabilities merged into its claims.
pub struct WithCapabilities {
    inner: Arc<dyn Credential>,
    capabilities: Vec<String>,
}

impl WithCapabilities {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Credential>, capabilities: Vec<String>) -> Self {
        WithCapabilities {
            inner,
            capabilities,
        }
    }
}

impl fmt::Debug for WithCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithCapabilities")
            .field("inner", &self.inner)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl Credential for WithCapabilities {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let merged = merge_claims(claims, &self.capabilities);
            self.inner.acquire(scope, Some(&merged)).await
        })
    }
}

/// The claims parameter: a challenge's claims (JSON) deep-merged with the capabilities'
/// `access_token.xms_cc.values`. A challenge that is not a JSON object is sent as it came.
pub fn merge_claims(challenge: Option<&str>, capabilities: &[String]) -> String {
    let declared = json!({"access_token": {"xms_cc": {"values": capabilities}}});
    let Some(text) = challenge else {
        return declared.to_string();
    };
    let Ok(Value::Object(mut base)) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    if let Value::Object(add) = declared {
        merge(&mut base, add);
    }
    Value::Object(base).to_string()
}

fn merge(base: &mut Map<String, Value>, add: Map<String, Value>) {
    for (k, v) in add {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(b)), Value::Object(a)) => merge(b, a),
            // Both lists (xms_cc values): keep the challenge's, add ours that are missing.
            (Some(Value::Array(b)), Value::Array(a)) => {
                for item in a {
                    if !b.contains(&item) {
                        b.push(item);
                    }
                }
            }
            (Some(_), _) => {}
            (None, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_alone_and_merged_with_a_challenge() {
        let cp1 = vec!["cp1".to_string()];
        assert_eq!(
            merge_claims(None, &cp1),
            r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#
        );
        let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        let merged: Value = serde_json::from_str(&merge_claims(Some(challenge), &cp1)).unwrap();
        assert_eq!(
            merged,
            json!({"access_token": {
                "nbf": {"essential": true, "value": "1700000000"},
                "xms_cc": {"values": ["cp1"]}
            }})
        );
        // Already declared: not repeated.
        let again = r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#;
        assert_eq!(merge_claims(Some(again), &cp1), again);
        // Not JSON: passed on untouched rather than lost.
        assert_eq!(merge_claims(Some("nope"), &cp1), "nope");
    }
}
