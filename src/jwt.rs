//! A JWT's claims, decoded without verification: for display, for choosing what to ask Entra
//! for, never for trusting the token (Entra and the APIs verify it).

use base64::Engine as _;

/// The claims (the payload) of `jwt`; `None` when it is not a JWT with a JSON object payload.
pub fn claims(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The first of `keys` that `jwt` carries as a string, when it is not empty.
pub fn first_string(jwt: &str, keys: &[&str]) -> Option<String> {
    let claims = claims(jwt)?;
    keys.iter()
        .find_map(|k| claims.get(*k).and_then(|v| v.as_str()))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn claims_are_read_from_the_payload_padded_or_not() {
        let token = jwt(r#"{"oid":"o-1","upn":""}"#);
        assert_eq!(claims(&token).expect("claims")["oid"], "o-1");
        assert_eq!(claims(&format!("{token}==")).expect("claims")["oid"], "o-1");
        assert_eq!(
            first_string(&token, &["oid", "upn"]).as_deref(),
            Some("o-1")
        );
        assert_eq!(
            first_string(&token, &["upn", "oid"]),
            None,
            "the first one present counts"
        );
        assert!(claims("not-a-jwt").is_none());
        assert!(
            claims(&jwt("[1]")).is_none(),
            "a payload that is not an object"
        );
    }
}
