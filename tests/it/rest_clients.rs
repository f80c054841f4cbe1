//! Real Azure DevOps REST clients through patless (issue 9): curl, the `azure-devops` Python SDK
//! and `azure-devops-node-api`, each holding no credential of its own or a stale PAT that patless
//! must strip. The stand-in (`support/ado_rest.rs`) accepts only valid Entra bearer tokens and
//! records every request, so a passing test proves that each call went through patless with the
//! right token — including the calls the SDKs send to the resource areas' `locationUrl`, which
//! patless points back at itself (`src/proxy/urls/`).
//!
//! Clients run as child processes (tokio::process) so the in-process fakes keep serving; the
//! proxy variables are removed from their environment. `.ci/setup` installs the SDKs
//! (PIP_PACKAGES, NPM_PACKAGES); a missing one fails its test unless `PATLESS_SKIP_CLIENTS` names
//! it (`support::clients`).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;

use crate::support;
use crate::support::ado_rest::{Credential, FakeAdo, ADO_RESOURCE, CORE_AREA};
use crate::support::clients;
use crate::support::entra::FakeEntra;
use crate::support::patless::{config, Patless, ADO};

/// The credential the clients hold: a PAT that expired long ago. Never valid anywhere.
const STALE_PAT: &str = "stalepat0000000000000000000000000000000000000000000";
const ORG: &str = "contoso";
/// Longest a client may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A command for a client, without the proxy variables of this environment.
fn client(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end; panics (with its stderr, and what the stand-in saw) when it fails or
/// times out. Returns stdout.
async fn run(what: &str, ado: &FakeAdo, mut cmd: Command) -> String {
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Checked before anything is printed, so no failure message can hold it.
    assert!(
        !stderr.contains(STALE_PAT) && !stdout.contains(STALE_PAT),
        "{what} printed the PAT"
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}\nthe stand-in saw (a PAT: {}): \
         {:#?}",
        out.status,
        ado.saw_basic(),
        ado.requests()
            .iter()
            .map(|r| format!(
                "{} {} {:?} {}",
                r.method, r.path_and_query, r.credential, r.status
            ))
            .collect::<Vec<_>>()
    );
    stdout
}

async fn start() -> (FakeEntra, FakeAdo, Patless) {
    let entra = FakeEntra::start().await;
    let ado = FakeAdo::start().await;
    let p = Patless::start(&config(&entra, &[("/ado", &ado.url(), ADO)], "", "")).await;
    (entra, ado, p)
}

/// curl with the stale PAT, printing the body then the status on its own line.
fn curl(url: &str) -> Command {
    let mut cmd = client("curl");
    cmd.args([
        "-sS",
        "--noproxy",
        "*",
        "-u",
        &format!(":{STALE_PAT}"),
        "-w",
        "\n%{http_code}",
        url,
    ]);
    cmd
}

fn status_and_json(out: &str) -> (u16, Value) {
    let (body, status) = out.rsplit_once('\n').expect("status line");
    let status = status.trim().parse().expect("status");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json)
}

fn paths(ado: &FakeAdo) -> Vec<String> {
    ado.requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_stale_pat_lists_creates_and_updates_work_items() {
    if !clients::require_tool("curl", "apt-get install curl") {
        return;
    }
    let (_entra, ado, p) = start().await;

    let mut get = curl(&p.url(&format!("/ado/{ORG}/_apis/projects?api-version=7.1")));
    get.arg("-H").arg("Accept: application/json");
    let (status, projects) = status_and_json(&run("curl GET projects", &ado, get).await);
    assert_eq!(status, 200, "{projects}");
    assert_eq!(projects["count"], 2);
    assert_eq!(projects["value"][0]["name"], "Fabrikam");

    let mut post = curl(&p.url(&format!(
        "/ado/{ORG}/Fabrikam/_apis/wit/workitems/$Task?api-version=7.1"
    )));
    post.args([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json-patch+json",
        "--data-binary",
        r#"[{"op":"add","path":"/fields/System.Title","value":"Rotate the build agent's PAT out"}]"#,
    ]);
    let (status, item) = status_and_json(&run("curl POST work item", &ado, post).await);
    assert_eq!(status, 200, "{item}");
    assert_eq!(
        item["fields"]["System.Title"],
        "Rotate the build agent's PAT out"
    );
    assert_eq!(item["fields"]["System.TeamProject"], "Fabrikam");
    assert_eq!(item["fields"]["System.WorkItemType"], "Task");
    let id = item["id"].as_u64().expect("work item id");

    let mut patch = curl(&p.url(&format!(
        "/ado/{ORG}/_apis/wit/workitems/{id}?api-version=7.1"
    )));
    patch.args([
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json-patch+json",
        "--data-binary",
        r#"[{"op":"replace","path":"/fields/System.State","value":"Doing"}]"#,
    ]);
    let (status, updated) = status_and_json(&run("curl PATCH work item", &ado, patch).await);
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["rev"], 2);
    assert_eq!(updated["fields"]["System.State"], "Doing");
    let stored = ado.work_item(id).expect("stored");
    assert_eq!(stored["fields"]["System.State"], "Doing");

    assert_eq!(ado.requests().len(), 3, "{:#?}", paths(&ado));
    ado.assert_only_bearer();
    assert!(!ado.saw_basic(), "the PAT reached Azure DevOps");
    let post = &ado.requests()[1];
    assert_eq!(
        post.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(post.api_version.as_deref(), Some("7.1"));
}

/// FNV-1a and length of a file, read in chunks.
fn file_fnv(path: &Path) -> (u64, u64) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open download");
    let mut buf = vec![0u8; 1 << 20];
    let (mut hash, mut len) = (support::FNV_OFFSET, 0u64);
    loop {
        let n = f.read(&mut buf).expect("read download");
        if n == 0 {
            return (hash, len);
        }
        hash = support::fnv1a(hash, &buf[..n]);
        len += n as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_a_large_artifact_streamed_through() {
    if !clients::require_tool("curl", "apt-get install curl") {
        return;
    }
    const TOTAL: u64 = 64 * 1024 * 1024;
    const HOLD_AT: u64 = 32 * 1024 * 1024;
    let (_entra, ado, p) = start().await;
    ado.set_artifact(TOTAL);
    // The stand-in stops half way until told to go on: if patless held the body back, curl
    // would have nothing while it waits.
    ado.hold_artifact_after(HOLD_AT);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("drop.zip");
    let mut cmd = curl(&p.url(&format!(
        "/ado/{ORG}/Fabrikam/_apis/build/builds/42/artifacts?artifactName=drop&api-version=7.1&%24format=zip"
    )));
    cmd.arg("-o").arg(&file);
    let started = Instant::now();
    let download = cmd.spawn().expect("start curl");

    let early = 8 * 1024 * 1024;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = std::fs::metadata(&file).map_or(0, |m| m.len());
        if have >= early {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "curl had {have} bytes after 30 s while the stand-in held the artifact at {} of \
             {TOTAL} bytes: patless does not stream the download",
            ado.artifact_sent()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = ado.artifact_sent();
    assert!(
        sent <= HOLD_AT,
        "the stand-in sent {sent} bytes before curl had its first {early}"
    );
    ado.release_artifact();
    let out = tokio::time::timeout(CLIENT_TIMEOUT, download.wait_with_output())
        .await
        .expect("curl finished")
        .expect("curl ran");
    assert!(
        out.status.success(),
        "curl -o failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elapsed = started.elapsed();

    let (hash, len) = file_fnv(&file);
    assert_eq!(len, TOTAL, "artifact size");
    assert_eq!(hash, support::pattern_fnv(TOTAL), "artifact content");
    ado.assert_only_bearer();
    assert!(!ado.saw_basic());
    eprintln!("64 MiB artifact through patless in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_areas_point_back_at_the_proxy_and_nothing_else_changes() {
    let (_entra, ado, p) = start().await;
    let http = support::http_client();
    let proxied = http
        .get(p.url(&format!(
            "/ado/{ORG}/_apis/ResourceAreas?api-version=7.1-preview.1"
        )))
        .header("Accept-Encoding", "gzip, deflate")
        .basic_auth("", Some(STALE_PAT))
        .send()
        .await
        .expect("through patless");
    assert_eq!(proxied.status(), 200);
    // The rewrite streams: the upstream's length no longer holds, so none is sent (chunked),
    // and the answer is not compressed whatever the client accepted.
    assert!(proxied.headers().get("content-length").is_none());
    assert!(proxied.headers().get("content-encoding").is_none());
    let proxied = proxied.bytes().await.expect("body");

    // The same answer straight from the stand-in: byte for byte the same but for the URLs.
    let token = support::entra::mint_token(ADO_RESOURCE, 300);
    let direct = http
        .get(format!(
            "{}/{ORG}/_apis/ResourceAreas?api-version=7.1-preview.1",
            ado.url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("direct")
        .text()
        .await
        .expect("body");
    let ours = format!("{}/{ORG}/", ado.url());
    assert!(direct.contains(&ours), "{direct}");
    let want = direct.replace(&ours, &p.url(&format!("/ado/{ORG}/")));
    assert_eq!(String::from_utf8_lossy(&proxied), want);
    let areas: Value = serde_json::from_slice(&proxied).expect("JSON");
    let urls: Vec<&str> = areas["value"]
        .as_array()
        .expect("areas")
        .iter()
        .filter_map(|a| a["locationUrl"].as_str())
        .collect();
    assert!(
        urls.contains(&format!("https://vsrm.dev.azure.com/{ORG}/").as_str()),
        "a host no route serves is left alone: {urls:?}"
    );

    // One area, asked by id, in any case of the path.
    let one: Value = http
        .get(p.url(&format!(
            "/ado/{ORG}/_APIS/resourceAreas/{CORE_AREA}?api-version=7.1-preview.1"
        )))
        .send()
        .await
        .expect("one area")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        one["locationUrl"].as_str(),
        Some(p.url(&format!("/ado/{ORG}/")).as_str())
    );

    // Other answers are not touched, even where they hold the stand-in's URLs.
    let projects: Value = http
        .get(p.url(&format!("/ado/{ORG}/_apis/projects")))
        .send()
        .await
        .expect("projects")
        .json()
        .await
        .expect("JSON");
    assert!(projects["value"][0]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with(&ours)));
    // Every call through patless carried its token, not the PAT (the direct one came with ours).
    let through: Vec<_> = ado
        .requests()
        .into_iter()
        .filter(|r| r.credential != Credential::ValidBearer)
        .collect();
    assert!(through.is_empty(), "{through:#?}");
}

const PYTHON_SCRIPT: &str = r#"
import json, os, sys
from azure.devops.connection import Connection
from azure.devops.v7_0.work_item_tracking.models import JsonPatchOperation
from msrest.authentication import BasicAuthentication

connection = Connection(base_url=sys.argv[1], creds=BasicAuthentication('', os.environ['STALE_PAT']))
core = connection.clients.get_core_client()
projects = core.get_projects()
wit = connection.clients.get_work_item_tracking_client()
item = wit.create_work_item(
    [JsonPatchOperation(op='add', path='/fields/System.Title', value='Filed from Python')],
    project='Fabrikam', type='Task')
updated = wit.update_work_item(
    [JsonPatchOperation(op='replace', path='/fields/System.State', value='Doing')], item.id)
print(json.dumps({
    'projects': [p.name for p in projects],
    'id': item.id,
    'title': item.fields['System.Title'],
    'rev': updated.rev,
    'state': updated.fields['System.State'],
}))
"#;

/// What both SDKs must have done: discovery, then every call behind patless with a token.
fn assert_sdk_went_through_patless(ado: &FakeAdo, client: &str) {
    let seen = paths(ado);
    for want in [
        format!("GET /{ORG}/_apis/ResourceAreas"),
        format!("GET /{ORG}/_apis/projects"),
        format!("POST /{ORG}/Fabrikam/_apis/wit/workItems/$Task"),
        format!("PATCH /{ORG}/_apis/wit/workItems/"),
    ] {
        assert!(
            seen.iter().any(|s| s
                .to_ascii_lowercase()
                .starts_with(&want.to_ascii_lowercase())),
            "{client} never sent {want}: {seen:#?}"
        );
    }
    assert!(
        seen.iter().any(|s| s.starts_with("OPTIONS ")),
        "{client} did not look up its API locations: {seen:#?}"
    );
    ado.assert_only_bearer();
    assert!(!ado.saw_basic(), "{client}'s PAT reached Azure DevOps");
    for r in ado.requests() {
        if r.method == http::Method::POST || r.method == http::Method::PATCH {
            assert_eq!(
                r.content_type.as_deref().and_then(|c| c.split(';').next()),
                Some("application/json-patch+json"),
                "{client}: {r:?}"
            );
            assert!(r.api_version.is_some(), "{client}: {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_devops_sdk_with_a_stale_pat() {
    if !clients::require_python_module(
        "azure.devops",
        "python3 -m pip install 'azure-devops==7.1.0b4'",
    ) {
        return;
    }
    let (_entra, ado, p) = start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let mut cmd = client("python3");
    cmd.arg("-c")
        .arg(PYTHON_SCRIPT)
        .arg(p.url(&format!("/ado/{ORG}")))
        .env("STALE_PAT", STALE_PAT)
        // The SDK caches resource areas and locations on disk, by URL: not in $HOME, not stale.
        .env("AZURE_DEVOPS_CACHE_DIR", cache.path());
    let out = run("python azure-devops", &ado, cmd).await;
    let got: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(got["projects"], serde_json::json!(["Fabrikam", "Tailspin"]));
    assert_eq!(got["title"], "Filed from Python");
    assert_eq!(got["rev"], 2);
    assert_eq!(got["state"], "Doing");
    assert_sdk_went_through_patless(&ado, "the Python SDK");
    // It negotiated the versions the stand-in offers (released ClientFactory: 7.0).
    let post = ado
        .requests()
        .into_iter()
        .find(|r| r.method == http::Method::POST)
        .expect("POST");
    assert_eq!(post.api_version.as_deref(), Some("7.0"));
}

const NODE_SCRIPT: &str = r#"
const azdev = require('azure-devops-node-api');
(async () => {
  const api = new azdev.WebApi(process.argv[1], azdev.getPersonalAccessTokenHandler(process.env.STALE_PAT));
  const core = await api.getCoreApi();
  const projects = await core.getProjects();
  const wit = await api.getWorkItemTrackingApi();
  const item = await wit.createWorkItem(null,
    [{ op: 'add', path: '/fields/System.Title', value: 'Filed from Node' }], 'Fabrikam', 'Task');
  const updated = await wit.updateWorkItem(null,
    [{ op: 'replace', path: '/fields/System.State', value: 'Doing' }], item.id);
  console.log(JSON.stringify({
    projects: projects.map(p => p.name),
    id: item.id,
    title: item.fields['System.Title'],
    rev: updated.rev,
    state: updated.fields['System.State'],
  }));
})().catch(e => { console.error(String((e && e.stack) || e)); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_azure_devops_node_api_with_a_stale_pat() {
    if !clients::require_node_module(
        "azure-devops-node-api",
        "npm install --global azure-devops-node-api@17.0.1",
    ) {
        return;
    }
    let (_entra, ado, p) = start().await;
    let mut cmd = client("node");
    cmd.env("NODE_PATH", clients::node_path())
        .env("STALE_PAT", STALE_PAT)
        .arg("-e")
        .arg(NODE_SCRIPT)
        .arg(p.url(&format!("/ado/{ORG}")));
    let out = run("node azure-devops-node-api", &ado, cmd).await;
    let got: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(got["projects"], serde_json::json!(["Fabrikam", "Tailspin"]));
    assert_eq!(got["title"], "Filed from Node");
    assert_eq!(got["rev"], 2);
    assert_eq!(got["state"], "Doing");
    assert_sdk_went_through_patless(&ado, "azure-devops-node-api");
}
