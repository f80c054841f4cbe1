//! The web app's keys: checked when the config loads, and shown by `patless config` with the
//! secret redacted.

use crate::support::entra::{CLIENT_ID, TENANT, WEB_REDIRECT_URI};
use crate::support::patless::try_load;
use crate::support::sandbox::Sandbox;

/// The keys of a web app, checked when the config loads, each error naming its key.
#[test]
fn the_web_app_keys_are_validated() {
    let entra_free = |keys: &str| {
        format!(
            "[server]\nhost_routes = false\n[profiles.web]\nkind = \"interactive_browser\"\n\
             tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n{keys}\n"
        )
    };
    for (keys, key, expected) in [
        (
            "redirect_uri = \"/myapp\"",
            "redirect_uri",
            "not an absolute URL",
        ),
        (
            "redirect_uri = \"localhost/myapp\"",
            "redirect_uri",
            "not an absolute URL",
        ),
        (
            "redirect_uri = \"ftp://localhost/x\"",
            "redirect_uri",
            "https://localhost/myapp",
        ),
        (
            "redirect_uri = \"https://localhost/#x\"",
            "redirect_uri",
            "#fragment",
        ),
        (
            "redirect_uri = \"http://localhost:8400\"\nredirect_port = 8400",
            "redirect_port",
            "not both",
        ),
        (
            "client_secret = \"s\"\ncertificate = \"/x.pem\"",
            "client_secret",
            "client_secret or certificate, not both",
        ),
        (
            "certificate_password = \"p\"",
            "certificate_password",
            "only with certificate",
        ),
        (
            "send_certificate_chain = true",
            "send_certificate_chain",
            "only with certificate",
        ),
        ("client_secrets = \"s\"", "client_secrets", "unknown key"),
    ] {
        let e = match try_load(&entra_free(keys)) {
            Ok(_) => panic!("{keys}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&format!("profiles.web.{key}")), "{keys}: {e}");
        assert!(e.contains(expected), "{keys}: {e}");
    }
    for keys in [
        format!("client_secret = {{ file = \"/run/secrets/web\" }}\nredirect_uri = \"{WEB_REDIRECT_URI}\""),
        "certificate = \"/etc/patless/web.pfx\"\ncertificate_password = { env = \"P\" }\nredirect_uri = \"https://app.contoso.example/signin\"".to_string(),
        "redirect_uri = \"http://127.0.0.1:8400/callback\"".to_string(),
    ] {
        try_load(&entra_free(&keys)).unwrap_or_else(|e| panic!("{keys}: {e}"));
    }
}

/// `patless config` shows the web app's keys, the secret redacted.
#[test]
fn patless_config_shows_the_web_app_with_its_secret_redacted() {
    let sb = Sandbox::new();
    let secret = "web-app-literal-secret-VALUE-31";
    let text = format!(
        "[server]\nhost_routes = false\n[profiles.web]\nkind = \"interactive_browser\"\n\
         tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\n\
         redirect_uri = \"{WEB_REDIRECT_URI}\"\n\
         [profiles.cert]\nkind = \"interactive_browser\"\ntenant_id = \"{TENANT}\"\n\
         client_id = \"{CLIENT_ID}\"\ncertificate = \"/etc/patless/web.pfx\"\n\
         certificate_password = {{ env = \"WEB_PFX_PASSWORD\" }}\n"
    );
    let path = sb.write("patless.toml", text);
    let run = sb.run(&["config", "--config", path.to_str().expect("UTF-8")], &[]);
    assert!(run.ok(), "{run:?}");
    assert!(!run.all().contains(secret), "{run:?}");
    for expected in [
        format!("redirect_uri = \"{WEB_REDIRECT_URI}\""),
        "client_secret = \"<redacted>\"".to_string(),
        "certificate = \"/etc/patless/web.pfx\"".to_string(),
        "env = \"WEB_PFX_PASSWORD\"".to_string(),
        "send_certificate_chain = false".to_string(),
    ] {
        assert!(run.stdout.contains(&expected), "{expected}: {}", run.stdout);
    }
}
