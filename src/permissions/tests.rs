use super::*;

fn grants(roles: &[&str], scopes: &[&str]) -> Grants {
    Grants {
        roles: roles.iter().map(|s| s.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

fn url(s: &str) -> Url {
    Url::parse(s).expect("url")
}

#[test]
fn api_comes_from_the_scope_then_the_host() {
    let loopback = url("http://127.0.0.1:9/");
    assert_eq!(
        Api::of_route("https://api.security.microsoft.com/.default", &loopback),
        Some(Api::DefenderXdr)
    );
    assert_eq!(
        Api::of_route(
            "https://api.securitycenter.microsoft.com/.default",
            &loopback
        ),
        Some(Api::DefenderForEndpoint)
    );
    assert_eq!(
        Api::of_route(
            "https://api-gcc.securitycenter.microsoft.us/.default",
            &loopback
        ),
        Some(Api::DefenderForEndpoint)
    );
    assert_eq!(
        Api::of_route("https://api-gov.security.microsoft.us/.default", &loopback),
        Some(Api::DefenderXdr)
    );
    assert_eq!(
        Api::of_route(crate::hosts::AZURE_DEVOPS_SCOPE, &loopback),
        Some(Api::AzureDevOps)
    );
    assert_eq!(
        Api::of_route("fc780465-2017-40d4-a0c5-307022471b92/.default", &loopback),
        Some(Api::DefenderForEndpoint)
    );
    assert_eq!(
        Api::of_route("api://custom/.default", &url("https://dev.azure.com/org")),
        Some(Api::AzureDevOps)
    );
    assert_eq!(
        Api::of_route("https://graph.microsoft.com/.default", &loopback),
        None
    );
}

#[test]
fn family_is_the_longest_match_and_ignores_case() {
    let f = family_of(Api::DefenderForEndpoint, "/api/machines/abc/isolate").expect("f");
    assert_eq!(f.roles, ["Machine.Isolate"]);
    let f = family_of(Api::DefenderForEndpoint, "/API/Machines").expect("f");
    assert_eq!(f.path, "api/machines");
    let f = family_of(Api::DefenderForEndpoint, "/api/Software/x").expect("f");
    assert_eq!(f.roles, ["Software.Read.All"]);
    assert!(family_of(Api::DefenderXdr, "/api/machines").is_none());
    assert!(family_of(Api::DefenderXdr, "/").is_none());
    let f = family_of(Api::AzureDevOps, "/org/proj/_apis/git/repositories").expect("f");
    assert_eq!(f.path, "_apis/git");
    let f = family_of(Api::AzureDevOps, "/org/proj/_git/repo/info/refs").expect("f");
    assert_eq!(f.path, "_git");
    let f = family_of(Api::AzureDevOps, "/org/_apis/connectionData").expect("f");
    assert_eq!(f.path, "_apis/connectiondata");
}

#[test]
fn every_probe_path_has_a_family() {
    for api in [Api::DefenderXdr, Api::DefenderForEndpoint] {
        let probe = api.probe_path().expect("probe");
        let path = probe.split('?').next().unwrap_or(probe);
        assert!(family_of(api, path).is_some(), "{probe}");
    }
}

#[test]
fn roles_or_scopes_satisfy_a_family() {
    let incidents = family_of(Api::DefenderXdr, "/api/incidents").expect("f");
    assert_eq!(
        grants(&["Incident.ReadWrite.All"], &[]).satisfying(incidents),
        Some("Incident.ReadWrite.All".into())
    );
    assert_eq!(
        grants(&[], &["User.Read", "incident.read"]).satisfying(incidents),
        Some("Incident.Read".into())
    );
    assert_eq!(
        grants(&["Machine.Read.All"], &[]).satisfying(incidents),
        None
    );
}

#[test]
fn grants_come_from_roles_and_scp() {
    let claims = serde_json::json!({"roles": ["A", "B"], "scp": "x y"});
    let g = Grants::from_claims(claims.as_object().expect("object"));
    assert_eq!(g.roles, ["A", "B"]);
    assert_eq!(g.scopes, ["x", "y"]);
    let g = Grants::from_claims(&serde_json::Map::new());
    assert!(g.roles.is_empty() && g.scopes.is_empty());
}

#[test]
fn the_report_marks_what_is_missing() {
    let lines = report(Api::DefenderXdr, &grants(&["Incident.Read.All"], &[]));
    let incidents = lines
        .iter()
        .find(|l| l.contains("api/incidents"))
        .expect("row");
    assert!(
        incidents.contains("ok, has Incident.Read.All"),
        "{incidents}"
    );
    let hunting = lines
        .iter()
        .find(|l| l.contains("api/advancedhunting"))
        .expect("row");
    assert!(hunting.contains("AdvancedHunting.Read.All"), "{hunting}");
    assert!(hunting.contains("MISSING"), "{hunting}");
    let ado = report(Api::AzureDevOps, &grants(&[], &[]));
    assert!(ado[0].contains("application identity"), "{ado:?}");
    assert!(ado
        .iter()
        .any(|l| l.contains("_git") && l.contains("Code: Read")));
}

#[test]
fn a_403_names_the_missing_permission() {
    let hint = forbidden_hint(
        Api::DefenderXdr,
        "/api/advancedhunting/run",
        &grants(&["Incident.Read.All"], &[]),
    );
    assert!(hint.contains("lacks AdvancedHunting.Read.All"), "{hint}");
    assert!(hint.contains("Microsoft Threat Protection"), "{hint}");
    let hint = forbidden_hint(
        Api::DefenderForEndpoint,
        "/api/machines",
        &grants(&["Machine.Read.All"], &[]),
    );
    assert!(hint.contains("not about application permissions"), "{hint}");
    let hint = forbidden_hint(Api::AzureDevOps, "/org/_apis/projects", &grants(&[], &[]));
    assert!(hint.contains("Organization settings"), "{hint}");
}
