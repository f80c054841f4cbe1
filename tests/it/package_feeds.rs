//! Real package clients against the Azure Artifacts stand-in (`support/artifacts.rs`), each
//! holding a credential in its own config the way people set them up for Azure Artifacts: npm
//! (`.npmrc`, `_authToken` or `username`/`_password`), pip (`pip.conf` `index-url` with the
//! credential as password) and twine (`.pypirc`), cargo (a `[registries]` entry with
//! `credential-provider = "cargo:token"` and a `Basic` token), Maven (`settings.xml`), and NuGet
//! over raw HTTP.
//! They install, fetch and publish; the stand-in checks every credential as the service does and
//! sends downloads to its blob storage, which refuses a credential.
//!
//! Each scenario takes a [`Target`]: the feed's URL as the client is to be configured with it and
//! the credential to put in the client's config. Here that is the stand-in's own URL and a token
//! minted for Azure DevOps; through patless it becomes a route's URL and a stale PAT, with no
//! other change. Clients run as child processes (tokio::process, so the in-process stand-in keeps
//! serving) with `env_clear()`, in temporary directories; `.ci/run` installs them, and elsewhere
//! a missing one makes its test say NOT RUN and return.
//!
//! Maven: Maven Central is out of reach and Debian's `maven` comes without the deploy and
//! dependency plugins; `.ci/run` installs Debian's (`libmaven-deploy-plugin-java`,
//! `libmaven-dependency-plugin-java`, and `junit4`, which the latter's POM names), and
//! [`maven_resolve_and_deploy`] runs `mvn` with `/usr/share/maven-repo` mirroring Central.
//! [`maven_over_http`] checks the layout, checksums and `PUT`s byte by byte over raw HTTP. NuGet
//! has no client here: raw HTTP ([`nuget_restore_over_http`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Command;

use crate::support::artifacts::{
    self, archive, cargo_index, maven_repo, npm_registry, nuget_index, pypi_simple, pypi_upload,
    AuthForm, FakeArtifacts, ADO_AUDIENCE,
};
use crate::support::clients;
use crate::support::entra::{mint_token, FakeEntra, ADO_SCOPE, CLIENT_ID, TENANT};
use crate::support::patless::{config, route_toml, Patless};
use crate::support::upstream::Identity;
use crate::support::{http_client, write_file};

/// Longest a client may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// Where a client points and what it holds.
pub struct Target<'a> {
    /// The feed, `…/_packaging/{feed}` without a trailing slash.
    pub feed_url: &'a str,
    /// The credential written into the client's config.
    pub credential: &'a str,
}

/// How npm holds its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpmAuth {
    /// `:_authToken=` (npm sends `Authorization: Bearer`).
    Token,
    /// `:username=` and `:_password=` base64 (npm sends `Basic`), as Azure Artifacts documents.
    Password,
}

fn base64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A command for a client: empty environment but `PATH` and `HOME` (and `env`), run in `dir`.
fn client(program: &str, dir: &Path, home: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", search_path())
        .env("HOME", home)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `PATH` for the clients: the toolchain that built this test (so `cargo` finds its `rustc`
/// without rustup) and Python's own directory, then the system's.
fn search_path() -> String {
    let cargo_dir = Path::new(env!("CARGO")).parent().map(Path::to_path_buf);
    let python_dir = Path::new(python()).parent().map(Path::to_path_buf);
    let mut dirs: Vec<PathBuf> = cargo_dir.into_iter().chain(python_dir).collect();
    dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
    std::env::join_paths(dirs)
        .expect("PATH")
        .to_string_lossy()
        .into_owned()
}

/// The Python interpreter `python3` stands for here (a pyenv shim needs the environment this
/// test clears; the interpreter itself does not).
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "python3".into())
    })
}

/// Runs `cmd` to its end; panics (with its output and what the feed saw) when it fails or times
/// out. Returns stdout.
async fn run(what: &str, feed: &FakeArtifacts, mut cmd: Command) -> String {
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}\nthe feed saw: {:#?}\nblob \
         storage saw: {:#?}",
        out.status,
        feed.requests()
            .iter()
            .map(|r| format!(
                "{} {} {:?} {} {}",
                r.method,
                r.path_and_query,
                r.auth,
                r.status,
                r.refused.as_deref().unwrap_or("")
            ))
            .collect::<Vec<_>>(),
        feed.blob_requests()
    );
    stdout
}

/// What every scenario ends with: credentials all good, some downloads through blob storage
/// and none of them with a credential.
fn assert_clean(feed: &FakeArtifacts) -> Vec<artifacts::FeedRequest> {
    let served = feed.assert_only_valid_credentials();
    assert!(
        !feed.blob_requests().is_empty(),
        "no download went through blob storage"
    );
    feed.assert_blob_saw_no_credential();
    served
}

/// The forms of credential the feed served.
fn forms(served: &[artifacts::FeedRequest]) -> Vec<AuthForm> {
    let mut forms: Vec<AuthForm> = served.iter().map(|r| r.auth.clone()).collect();
    forms.dedup();
    forms
}

fn direct_token() -> String {
    mint_token(ADO_AUDIENCE, 3600)
}

// ---------------------------------------------------------------------------------------------
// npm

/// `npm install` of a seeded package and a scoped one, `npm publish` of a scoped package, then
/// `npm install` of what was published.
pub async fn npm_install_and_publish(feed: &FakeArtifacts, target: &Target<'_>, auth: NpmAuth) {
    feed.add_npm("greeting", "1.0.0");
    feed.add_npm("@contoso/widget", "2.1.0");
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let registry = npm_registry(target.feed_url);
    let nerf = registry
        .trim_start_matches("http:")
        .trim_start_matches("https:");
    let credential = match auth {
        NpmAuth::Token => format!("{nerf}:_authToken={}\n", target.credential),
        NpmAuth::Password => format!(
            "{nerf}:username=org\n{nerf}:_password={}\n{nerf}:email=npm@contoso.example\n",
            base64(target.credential)
        ),
    };
    let cache = tmp.path().join("cache");
    write_file(
        &home,
        ".npmrc",
        format!(
            "registry={registry}\n{credential}audit=false\nfund=false\nupdate-notifier=false\n\
             fetch-retries=0\ncache={}\n",
            cache.display()
        ),
    );
    let npm = |dir: &Path, args: &[&str]| {
        let mut cmd = client("npm", dir, &home, &[]);
        cmd.args(args);
        cmd
    };

    let consumer = tmp.path().join("consumer");
    write_file(
        &consumer,
        "package.json",
        r#"{"name": "consumer", "version": "1.0.0", "private": true,
            "dependencies": {"greeting": "1.0.0", "@contoso/widget": "2.1.0"}}"#,
    );
    run("npm install", feed, npm(&consumer, &["install"])).await;
    let widget = std::fs::read_to_string(consumer.join("node_modules/@contoso/widget/index.js"))
        .expect("@contoso/widget installed");
    assert!(widget.contains("@contoso/widget@2.1.0"), "{widget}");
    assert!(consumer.join("node_modules/greeting/package.json").exists());

    let publisher = tmp.path().join("publisher");
    write_file(
        &publisher,
        "package.json",
        r#"{"name": "@contoso/published", "version": "1.0.0", "main": "index.js"}"#,
    );
    write_file(&publisher, "index.js", "module.exports = 'published';\n");
    run("npm publish", feed, npm(&publisher, &["publish"])).await;
    assert_eq!(
        feed.npm_versions(&feed.feed_url(), "@contoso/published"),
        ["1.0.0"]
    );

    let second = tmp.path().join("second");
    write_file(
        &second,
        "package.json",
        r#"{"name": "second", "version": "1.0.0", "private": true,
            "dependencies": {"@contoso/published": "1.0.0"}}"#,
    );
    run("npm install (published)", feed, npm(&second, &["install"])).await;
    let published =
        std::fs::read_to_string(second.join("node_modules/@contoso/published/index.js"))
            .expect("@contoso/published installed");
    assert!(published.contains("published"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_with_an_auth_token_installs_and_publishes() {
    if !clients::require_tool("npm", "apt-get install npm") {
        return;
    }
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    npm_install_and_publish(&feed, &target, NpmAuth::Token).await;
    assert_eq!(forms(&assert_clean(&feed)), [AuthForm::Bearer]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_with_a_password_installs_and_publishes() {
    if !clients::require_tool("npm", "apt-get install npm") {
        return;
    }
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    npm_install_and_publish(&feed, &target, NpmAuth::Password).await;
    let user = "org".to_string();
    assert_eq!(forms(&assert_clean(&feed)), [AuthForm::Basic { user }]);
}

// ---------------------------------------------------------------------------------------------
// pip and twine

/// `pip install` of a seeded wheel, `twine upload` of another, `pip install` of that one.
pub async fn pip_install_and_twine_upload(feed: &FakeArtifacts, target: &Target<'_>) {
    feed.add_wheel("contoso_tools", "1.0");
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut index = url::Url::parse(&pypi_simple(target.feed_url)).expect("index URL");
    index.set_username("feed").expect("user");
    index
        .set_password(Some(target.credential))
        .expect("password");
    let pip_conf = write_file(
        tmp.path(),
        "pip.conf",
        format!(
            "[global]\nindex-url = {index}\nno-cache-dir = true\ndisable-pip-version-check = true\n\
             no-input = true\nretries = 0\ntimeout = 30\n"
        ),
    );
    let pip_conf = pip_conf.to_string_lossy().into_owned();
    let pip_install = |target_dir: &Path, requirement: &str| {
        let mut cmd = client(
            python(),
            tmp.path(),
            &home,
            &[("PIP_CONFIG_FILE", pip_conf.as_str())],
        );
        cmd.args(["-m", "pip", "install", "--target"])
            .arg(target_dir)
            .arg(requirement);
        cmd
    };

    let site = tmp.path().join("site");
    run(
        "pip install",
        feed,
        pip_install(&site, "contoso-tools==1.0"),
    )
    .await;
    let init = std::fs::read_to_string(site.join("contoso_tools/__init__.py")).expect("installed");
    assert!(init.contains("\"1.0\""), "{init}");

    let (file, wheel) = archive::wheel("uploaded_pkg", "0.1");
    let dist = write_file(&tmp.path().join("dist"), &file, wheel);
    let pypirc = write_file(
        tmp.path(),
        ".pypirc",
        format!(
            "[distutils]\nindex-servers = feed\n\n[feed]\nrepository = {}\nusername = feed\n\
             password = {}\n",
            pypi_upload(target.feed_url),
            target.credential
        ),
    );
    let mut twine = client(python(), tmp.path(), &home, &[]);
    twine
        .args([
            "-m",
            "twine",
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
        ])
        .arg("--config-file")
        .arg(&pypirc)
        .args(["--repository", "feed"])
        .arg(&dist);
    run("twine upload", feed, twine).await;
    assert_eq!(feed.pypi_files(&feed.feed_url(), "uploaded-pkg"), [file]);

    let site2 = tmp.path().join("site2");
    run(
        "pip install (uploaded)",
        feed,
        pip_install(&site2, "uploaded-pkg==0.1"),
    )
    .await;
    assert!(site2.join("uploaded_pkg/__init__.py").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_installs_and_twine_uploads() {
    if !clients::require_python_module("pip", "apt-get install python3-pip")
        || !clients::require_python_module("twine", "python3 -m pip install twine==7.0.0")
    {
        return;
    }
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    pip_install_and_twine_upload(&feed, &target).await;
    let user = "feed".to_string();
    assert_eq!(forms(&assert_clean(&feed)), [AuthForm::Basic { user }]);
}

// ---------------------------------------------------------------------------------------------
// cargo

/// `cargo publish` of a crate that depends on a seeded one, then `cargo fetch` of a project that
/// depends on the published crate (so on both).
pub async fn cargo_publish_and_fetch(feed: &FakeArtifacts, target: &Target<'_>) {
    feed.add_crate("seeded", "1.0.0");
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let cargo_home = tmp.path().join("cargo-home");
    std::fs::create_dir_all(&home).expect("home");
    let token = format!("Basic {}", base64(&format!("cargo:{}", target.credential)));
    write_file(
        &cargo_home,
        "credentials.toml",
        format!("[registries.feed]\ntoken = {token:?}\n"),
    );
    let work = tmp.path().join("work");
    write_file(
        &work,
        ".cargo/config.toml",
        format!(
            "[registries.feed]\nindex = \"sparse+{}\"\ncredential-provider = \"cargo:token\"\n\n\
             [net]\nretry = 0\n\n[http]\ntimeout = 30\n",
            cargo_index(target.feed_url)
        ),
    );
    let cargo_home_str = cargo_home.to_string_lossy().into_owned();
    let cargo = |dir: &Path, args: &[&str]| {
        let env = [
            ("CARGO_HOME", cargo_home_str.as_str()),
            ("CARGO_TERM_COLOR", "never"),
        ];
        let mut cmd = client(env!("CARGO"), dir, &home, &env);
        cmd.args(args);
        cmd
    };

    let publisher = work.join("publisher");
    write_file(
        &publisher,
        "Cargo.toml",
        "[package]\nname = \"published-crate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
         description = \"Published to the feed\"\nlicense = \"MIT\"\npublish = [\"feed\"]\n\n\
         [dependencies]\nseeded = { version = \"1.0.0\", registry = \"feed\" }\n",
    );
    write_file(&publisher, "src/lib.rs", "pub use seeded::VERSION;\n");
    run(
        "cargo publish",
        feed,
        cargo(
            &publisher,
            &[
                "publish",
                "--registry",
                "feed",
                "--no-verify",
                "--allow-dirty",
            ],
        ),
    )
    .await;
    assert_eq!(
        feed.crate_versions(&feed.feed_url(), "published-crate"),
        ["0.1.0"]
    );

    let consumer = work.join("consumer");
    write_file(
        &consumer,
        "Cargo.toml",
        "[package]\nname = \"consumer\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\npublished-crate = { version = \"0.1.0\", registry = \"feed\" }\n",
    );
    write_file(
        &consumer,
        "src/lib.rs",
        "pub use published_crate::VERSION;\n",
    );
    run("cargo fetch", feed, cargo(&consumer, &["fetch"])).await;
    let cached: Vec<String> = std::fs::read_dir(cargo_home.join("registry/cache"))
        .expect("registry cache")
        .flat_map(|d| std::fs::read_dir(d.expect("entry").path()).expect("index dir"))
        .map(|f| f.expect("file").file_name().to_string_lossy().into_owned())
        .collect();
    for file in ["published-crate-0.1.0.crate", "seeded-1.0.0.crate"] {
        assert!(cached.iter().any(|c| c == file), "{file} not in {cached:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_publishes_and_fetches() {
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    cargo_publish_and_fetch(&feed, &target).await;
    let user = "cargo".to_string();
    assert_eq!(forms(&assert_clean(&feed)), [AuthForm::Basic { user }]);
    // cargo asks for config.json without a credential first, then with one.
    let first = &feed.requests()[0];
    assert_eq!(
        (first.auth.clone(), first.status),
        (AuthForm::None, http::StatusCode::UNAUTHORIZED)
    );
}

// ---------------------------------------------------------------------------------------------
// Maven

/// `mvn dependency:get` of a seeded artifact and `mvn deploy:deploy-file` of a jar, the
/// credential in `settings.xml` (server `feed`), Debian's plugins (`/usr/share/maven-repo`) as
/// the only other repository, standing in for Maven Central.
pub async fn maven_resolve_and_deploy(feed: &FakeArtifacts, target: &Target<'_>) {
    feed.add_maven("com.contoso", "seeded", "1.0.0");
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let m2 = tmp.path().join("m2");
    let settings = write_file(
        tmp.path(),
        "settings.xml",
        format!(
            r#"<settings>
  <localRepository>{}</localRepository>
  <interactiveMode>false</interactiveMode>
  <servers>
    <server><id>feed</id><username>feed</username><password>{}</password></server>
  </servers>
  <mirrors>
    <mirror><id>debian</id><mirrorOf>central</mirrorOf><url>file:///usr/share/maven-repo</url></mirror>
  </mirrors>
  <profiles>
    <profile>
      <id>feed</id>
      <repositories>
        <repository><id>feed</id><url>{}</url><snapshots><enabled>false</enabled></snapshots></repository>
      </repositories>
    </profile>
  </profiles>
  <activeProfiles><activeProfile>feed</activeProfile></activeProfiles>
</settings>
"#,
            m2.display(),
            target.credential,
            maven_repo(target.feed_url)
        ),
    );
    let mvn = |args: &[&str]| {
        let mut cmd = client("mvn", tmp.path(), &home, &[]);
        cmd.args(["--batch-mode", "--no-transfer-progress", "--settings"])
            .arg(&settings)
            .args(args);
        cmd
    };
    run(
        "mvn dependency:get",
        feed,
        mvn(&[
            "org.apache.maven.plugins:maven-dependency-plugin:3.5.0:get",
            "-Dartifact=com.contoso:seeded:1.0.0",
            "-Dtransitive=false",
        ]),
    )
    .await;
    assert!(m2
        .join("com/contoso/seeded/1.0.0/seeded-1.0.0.jar")
        .exists());

    let jar = archive::jar("deployed", "2.0.0");
    let file = write_file(tmp.path(), "deployed.jar", &jar);
    let file_arg = format!("-Dfile={}", file.display());
    let url_arg = format!("-Durl={}", maven_repo(target.feed_url));
    run(
        "mvn deploy:deploy-file",
        feed,
        mvn(&[
            "org.apache.maven.plugins:maven-deploy-plugin:3.0.0:deploy-file",
            &file_arg,
            "-DgroupId=com.contoso",
            "-DartifactId=deployed",
            "-Dversion=2.0.0",
            "-Dpackaging=jar",
            "-DrepositoryId=feed",
            &url_arg,
        ]),
    )
    .await;
    let stored = |path: &str| feed.maven_file(&feed.feed_url(), path);
    let base = "com/contoso/deployed/2.0.0/deployed-2.0.0";
    assert_eq!(
        stored(&format!("{base}.jar")).map(|b| b.to_vec()),
        Some(jar)
    );
    for file in [".jar.sha1", ".jar.md5", ".pom", ".pom.sha1"] {
        assert!(stored(&format!("{base}{file}")).is_some(), "{base}{file}");
    }
    assert!(stored("com/contoso/deployed/maven-metadata.xml").is_some());
}

/// `test` arguments: Debian's deploy and dependency plugins, and the JUnit the latter needs.
const MAVEN_PLUGINS_PROBE: [&str; 8] = [
    "-f",
    "/usr/share/maven-repo/org/apache/maven/plugins/maven-deploy-plugin/3.0.0/maven-deploy-plugin-3.0.0.jar",
    "-a",
    "-f",
    "/usr/share/maven-repo/org/apache/maven/plugins/maven-dependency-plugin/3.5.0/maven-dependency-plugin-3.5.0.jar",
    "-a",
    "-d",
    "/usr/share/maven-repo/junit/junit/4.x",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maven_resolves_and_deploys() {
    if !clients::require_tool("mvn", "apt-get install maven")
        || !clients::require(
            "Debian's Maven deploy and dependency plugins",
            &["mvn"],
            std::process::Command::new("test").args(MAVEN_PLUGINS_PROBE),
            "apt-get install libmaven-deploy-plugin-java libmaven-dependency-plugin-java junit4",
        )
    {
        return;
    }
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    maven_resolve_and_deploy(&feed, &target).await;
    let user = "feed".to_string();
    assert_eq!(
        forms(&feed.assert_only_valid_credentials()),
        [AuthForm::Basic { user }]
    );
}

// ---------------------------------------------------------------------------------------------
// Maven over raw HTTP, and NuGet

/// A `Basic` header with `credential` as the password.
fn basic(credential: &str) -> String {
    format!("Basic {}", base64(&format!("feed:{credential}")))
}

/// `GET url` with the credential; the status and body.
async fn get(url: &str, credential: &str) -> (StatusCode, bytes::Bytes) {
    let resp = http_client()
        .get(url)
        .header("authorization", basic(credential))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (resp.status(), resp.bytes().await.expect("body"))
}

/// What Maven does, over HTTP: metadata, POM and jar of a seeded artifact checked against their
/// `.sha1` and `.md5`; a deploy's `PUT`s (jar, POM, checksums, metadata) read back.
pub async fn maven_over_http(feed: &FakeArtifacts, target: &Target<'_>) {
    feed.add_maven("com.contoso", "seeded", "1.0.0");
    let repo = maven_repo(target.feed_url);
    let dir = format!("{repo}/com/contoso/seeded");
    let (status, metadata) = get(&format!("{dir}/maven-metadata.xml"), target.credential).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&metadata).contains("<release>1.0.0</release>"));
    for file in ["seeded-1.0.0.pom", "seeded-1.0.0.jar"] {
        let url = format!("{dir}/1.0.0/{file}");
        let (status, bytes) = get(&url, target.credential).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        let (_, sha1) = get(&format!("{url}.sha1"), target.credential).await;
        let (_, md5) = get(&format!("{url}.md5"), target.credential).await;
        assert_eq!(sha1, archive::sha1_hex(&bytes).as_bytes());
        assert_eq!(md5, archive::md5_hex(&bytes).as_bytes());
    }

    let deployed = format!("{repo}/com/contoso/deployed/2.0.0/deployed-2.0.0");
    let jar = archive::jar("deployed", "2.0.0");
    let pom = archive::pom("com.contoso", "deployed", "2.0.0").into_bytes();
    let client = http_client();
    for (url, body) in [
        (format!("{deployed}.jar"), jar.clone()),
        (
            format!("{deployed}.jar.sha1"),
            archive::sha1_hex(&jar).into_bytes(),
        ),
        (format!("{deployed}.pom"), pom.clone()),
        (
            format!("{deployed}.pom.md5"),
            archive::md5_hex(&pom).into_bytes(),
        ),
    ] {
        let resp = client
            .put(&url)
            .header("authorization", basic(target.credential))
            .body(body)
            .send()
            .await
            .expect("PUT");
        assert_eq!(resp.status(), StatusCode::CREATED, "PUT {url}");
    }
    let (status, back) = get(&format!("{deployed}.jar"), target.credential).await;
    assert_eq!((status, back.to_vec()), (StatusCode::OK, jar));
    let path = "com/contoso/deployed/2.0.0/deployed-2.0.0.pom";
    assert_eq!(
        feed.maven_file(&feed.feed_url(), path).map(|b| b.to_vec()),
        Some(pom)
    );
}

#[tokio::test]
async fn maven_layout_checksums_and_puts_over_http() {
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    maven_over_http(&feed, &target).await;
    feed.assert_only_valid_credentials();
}

/// NuGet's road to a package: the service index, its flat container, the version list, the
/// `.nupkg` through blob storage (followed without the credential, as NuGet's HttpClient does).
pub async fn nuget_restore_over_http(feed: &FakeArtifacts, target: &Target<'_>) {
    feed.add_nuget("Contoso.Lib", "3.0.0");
    let (status, index) = get(&nuget_index(target.feed_url), target.credential).await;
    assert_eq!(status, StatusCode::OK);
    let index: Value = serde_json::from_slice(&index).expect("service index");
    let flat = index["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["@type"] == "PackageBaseAddress/3.0.0"))
        .and_then(|r| r["@id"].as_str())
        .expect("PackageBaseAddress")
        .to_string();
    let (status, versions) = get(&format!("{flat}contoso.lib/index.json"), target.credential).await;
    assert_eq!(status, StatusCode::OK);
    let versions: Value = serde_json::from_slice(&versions).expect("versions");
    assert_eq!(versions["versions"][0], "3.0.0");
    let url = format!("{flat}contoso.lib/3.0.0/contoso.lib.3.0.0.nupkg");
    let resp = http_client()
        .get(&url)
        .header("authorization", basic(target.credential))
        .send()
        .await
        .expect("GET nupkg");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{url}");
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let blob = http_client().get(&location).send().await.expect("GET blob");
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(
        blob.bytes().await.expect("nupkg").to_vec(),
        archive::nupkg("Contoso.Lib", "3.0.0")
    );
}

#[tokio::test]
async fn nuget_finds_and_downloads_a_package_over_http() {
    let feed = FakeArtifacts::start().await;
    let token = direct_token();
    let target = Target {
        feed_url: &feed.feed_url(),
        credential: &token,
    };
    nuget_restore_over_http(&feed, &target).await;
    assert_clean(&feed);
}

// ---------------------------------------------------------------------------------------------
// The same clients through patless (docs/feeds.md): each keeps a stale PAT in its config, as a
// config left over from before the migration would; patless drops it, sends its own token as a
// `Basic` password, and points the feed's absolute URLs (tarballs, index links, service-index
// `@id`s, cargo's `dl`/`api`) at itself, so that every request but the blob downloads goes
// through it.

/// The PAT the clients still hold. The feed refuses it; it must never get there.
const STALE_PAT: &str = "stalepat7q3xkz2m5n8b4v6c1x9z0l2k4j6h8g0f2d4s6a8p0o9i";

/// patless in front of `feed` on `/feed`, as a user configures it for a feed on a loopback
/// stand-in (for `pkgs.dev.azure.com` both keys are the defaults).
async fn patless_for(feed: &FakeArtifacts) -> (FakeEntra, Patless) {
    let entra = FakeEntra::start().await;
    let mut toml = config(&entra, &[], "", "");
    toml.push_str(&route_toml("/feed", &feed.feed_url(), "bot", ADO_SCOPE));
    toml.push_str("auth = \"basic\"\nrewrite_urls = true\n");
    let p = Patless::start(&toml).await;
    (entra, p)
}

/// Through patless: the feed saw patless's token as a `Basic` password on every request (never
/// the stale PAT, never nothing), downloads went to blob storage without a credential.
fn assert_all_through_patless(feed: &FakeArtifacts) {
    let served = assert_clean(feed);
    assert!(!served.is_empty());
    let patless = AuthForm::Basic {
        user: "patless".into(),
    };
    assert_eq!(forms(&served), [patless], "{served:#?}");
}

async fn through_patless(
    scenario: impl AsyncFnOnce(&FakeArtifacts, &Target<'_>),
    check_blob: bool,
) {
    let feed = FakeArtifacts::start().await;
    // Only the token of the profile the route names (`bot`) opens the feed.
    feed.expect(Identity::app(CLIENT_ID, TENANT));
    let (_entra, p) = patless_for(&feed).await;
    let url = p.url("/feed");
    let target = Target {
        feed_url: &url,
        credential: STALE_PAT,
    };
    scenario(&feed, &target).await;
    if check_blob {
        assert_all_through_patless(&feed);
    } else {
        let served = feed.assert_only_valid_credentials();
        let patless = AuthForm::Basic {
            user: "patless".into(),
        };
        assert_eq!(forms(&served), [patless], "{served:#?}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_through_patless_installs_and_publishes_with_a_stale_token_in_npmrc() {
    if !clients::require_tool("npm", "apt-get install npm") {
        return;
    }
    through_patless(
        async |feed, target| npm_install_and_publish(feed, target, NpmAuth::Token).await,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_through_patless_installs_and_publishes_with_a_stale_password_in_npmrc() {
    if !clients::require_tool("npm", "apt-get install npm") {
        return;
    }
    through_patless(
        async |feed, target| npm_install_and_publish(feed, target, NpmAuth::Password).await,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_and_twine_through_patless() {
    if !clients::require_python_module("pip", "apt-get install python3-pip")
        || !clients::require_python_module("twine", "python3 -m pip install twine==7.0.0")
    {
        return;
    }
    through_patless(pip_install_and_twine_upload, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_through_patless_publishes_and_fetches() {
    through_patless(cargo_publish_and_fetch, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maven_through_patless_resolves_and_deploys() {
    if !clients::require_tool("mvn", "apt-get install maven")
        || !clients::require(
            "Debian's Maven deploy and dependency plugins",
            &["mvn"],
            std::process::Command::new("test").args(MAVEN_PLUGINS_PROBE),
            "apt-get install libmaven-deploy-plugin-java libmaven-dependency-plugin-java junit4",
        )
    {
        return;
    }
    // Maven's files are served by the feed itself: no blob storage.
    through_patless(maven_resolve_and_deploy, false).await;
}

#[tokio::test]
async fn maven_layout_through_patless_over_http() {
    through_patless(maven_over_http, false).await;
}

#[tokio::test]
async fn nuget_through_patless_follows_the_rewritten_service_index() {
    through_patless(nuget_restore_over_http, true).await;
}
