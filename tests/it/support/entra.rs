//! A fake Microsoft Entra: the token endpoint for apps (client credentials with a secret or an
//! assertion) and for people (device code, authorization code + PKCE, refresh token), the
//! device code endpoint and the authorize page.
//!
//! `POST {authority}/{tenant}/oauth2/v2.0/token` answers like Entra: RS256 access tokens signed
//! with [`super::TEST_KEY_PEM`] (kid `test-key`), or Entra-shaped JSON errors. Faults can be
//! injected, one-shot ([`FakeEntra::push_fault`]) or sticky ([`FakeEntra::set_fault`]).
//!
//! Apps: the confidential app [`CLIENT_ID`] in [`TENANT`], and any other
//! [`FakeEntra::register_app`] registers (a client id in a tenant; the tenant is then known too).
//! Each accepts [`CLIENT_SECRET`], a certificate assertion the verifier accepts, or a federated
//! assertion. A token says who asked, as Entra's do: `appid`/`azp` = the requesting client,
//! `tid` = the tenant in the token URL, `oid`/`sub` = [`app_object_id`] of (tenant, client), so a
//! fake upstream expecting one app ([`super::upstream::Identity`]) refuses another app's token
//! even for its audience.
//!
//! People: the registered public client [`PUBLIC_CLIENT_ID`] and one user, [`USER_UPN`]. The
//! confidential app [`CLIENT_ID`] is a web app too ([`WEB_REDIRECT_URI`]): its authorization code
//! and refresh token grants need its secret or assertion (AADSTS7000218 without), while the
//! public client may send neither (AADSTS700025).
//!
//! - `POST …/devicecode` issues a device code; polls with the device code grant follow a script
//!   ([`FakeEntra::push_device_code_step`], then [`FakeEntra::set_device_code_fallback`],
//!   `Approve` by default).
//! - `GET …/authorize` checks client, redirect URI (loopback for the public client, a registered
//!   Web one for the web app), `response_type=code` and an S256 challenge, then redirects (302) to `redirect_uri?code=…&state=…` — or as scripted with
//!   [`FakeEntra::push_authorize_step`]. The authorization code grant checks the PKCE verifier
//!   against the challenge and the redirect URI against the authorize request's.
//! - The refresh token grant rotates: each use returns a new refresh token and invalidates the
//!   old one (AADSTS70008). [`FakeEntra::revoke_refresh_tokens`] (70008) and
//!   [`FakeEntra::expire_refresh_tokens`] (700082) end every session. Access tokens carry the
//!   requested resource's audience, `scp`, the user's `oid` and `upn`, `appid` = the client
//!   signed in to and `tid` = [`TENANT`] (the user's home tenant, also when the flow went through
//!   `common` or `organizations`); an `id_token` comes with `openid`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};

use super::{full, lock, now_secs, AbortOnDrop, Body};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The confidential app: client credentials with [`CLIENT_SECRET`] or a client assertion, and a
/// web app people sign in to (platform Web, redirect URI [`WEB_REDIRECT_URI`]), whose code and
/// refresh token grants must carry that secret or assertion too.
pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
/// The redirect URI of [`CLIENT_ID`]'s Web platform, as a self-deployed app registers it: nothing
/// answers there, the person copies the address.
pub const WEB_REDIRECT_URI: &str = "https://localhost/myapp";
/// The registered public client (no secret, "Allow public client flows" on, redirect URI
/// `http://localhost`) that people sign in to.
pub const PUBLIC_CLIENT_ID: &str = "33333333-3333-3333-3333-333333333333";
/// The test user.
pub const USER_UPN: &str = "alice@contoso.example";
/// The test user's display name.
pub const USER_NAME: &str = "Alice Example";
/// The test user's object id.
pub const USER_OID: &str = "44444444-4444-4444-4444-444444444444";
/// `scp` of user access tokens.
pub const USER_SCP: &str = "user_impersonation";
/// `verification_uri` of device codes.
pub const VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";
/// The only client secret the fake accepts.
pub const CLIENT_SECRET: &str = "s3cr3t-VALUE-never-logged";
/// `oid` claim of the tokens of the default app, [`CLIENT_ID`] in [`TENANT`] (its service
/// principal's object id); other apps get [`app_object_id`].
pub const OBJECT_ID: &str = "22222222-2222-2222-2222-222222222222";
/// `kid` header of every issued token.
pub const KEY_ID: &str = "test-key";
/// Azure DevOps audience (scope `…/.default`).
pub const ADO_AUDIENCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
pub const ADO_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// Defender XDR audience (scope `…/.default`).
pub const DEFENDER_AUDIENCE: &str = "https://api.security.microsoft.com";
pub const DEFENDER_SCOPE: &str = "https://api.security.microsoft.com/.default";
/// Default `expires_in` of issued tokens.
pub const DEFAULT_LIFETIME_SECS: u64 = 3599;

/// A failure the fake answers with instead of (or before) a normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 401 `invalid_client` / AADSTS7000215, as for a wrong secret.
    InvalidClient,
    /// 429 with `Retry-After: N` and a `temporarily_unavailable` error body.
    Throttled { retry_after_secs: u64 },
    /// 500 with a `server_error` error body.
    ServerError,
    /// Sleep (`tokio::time::sleep`) this long, then answer normally.
    Delay(Duration),
    /// 200 `application/json` with the truncated body `{"access_token": `.
    MalformedJson,
    /// 502 `text/html` page (as from a broken intermediary).
    HtmlPage,
}

/// One request to the token (or device code) endpoint, as received.
#[derive(Debug, Clone)]
pub struct TokenRequestRecord {
    pub path: String,
    pub form: HashMap<String, String>,
    pub headers: HeaderMap,
    /// When it arrived (`tokio::time`, so paused-time tests can measure intervals).
    pub at: Instant,
}

/// One request to the authorize page.
#[derive(Debug, Clone)]
pub struct AuthorizeRecord {
    pub query: HashMap<String, String>,
}

/// What the person does at the device code page, as the next poll sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStep {
    /// Not yet: `authorization_pending`.
    Pending,
    /// `slow_down`.
    SlowDown,
    /// Declined: `authorization_declined`.
    Declined,
    /// The code expired: `expired_token`.
    Expired,
    /// `bad_verification_code`.
    BadCode,
    /// Signed in: tokens.
    Approve,
}

/// How the authorize page answers the next sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeStep {
    /// Redirects with a code and the request's state.
    Approve,
    /// Redirects with `error=access_denied` (the person declined consent).
    Deny,
    /// Redirects with a code but another state (a forged or stale redirect).
    WrongState,
    /// Redirects normally, but binds the code to another PKCE challenge than the request's, so
    /// redeeming it with the right verifier fails (as if the request had been tampered with).
    SwapChallenge,
}

/// Where a refresh token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshTokenStatus {
    /// Redeemable.
    Valid,
    /// Used once already: rotated away.
    Redeemed,
    /// Revoked by [`FakeEntra::revoke_refresh_tokens`].
    Revoked,
    /// Expired by [`FakeEntra::expire_refresh_tokens`].
    Expired,
}

struct DeviceSession {
    client_id: String,
    scope: String,
    consumed: bool,
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    used: bool,
}

struct RtInfo {
    family: u64,
    client_id: String,
    status: RefreshTokenStatus,
}

struct UserState {
    device_sessions: HashMap<String, DeviceSession>,
    device_steps: VecDeque<DeviceStep>,
    device_fallback: DeviceStep,
    device_interval: u64,
    device_expires_in: u64,
    device_requests: Vec<TokenRequestRecord>,
    authorize_steps: VecDeque<AuthorizeStep>,
    authorize_requests: Vec<AuthorizeRecord>,
    codes: HashMap<String, CodeGrant>,
    refresh_tokens: HashMap<String, RtInfo>,
    rt_order: Vec<String>,
    next_family: u64,
}

struct State {
    token_requests: AtomicUsize,
    requests: Mutex<Vec<TokenRequestRecord>>,
    issued: Mutex<Vec<String>>,
    lifetime: AtomicU64,
    refresh_in: Mutex<Option<u64>>,
    sticky_fault: Mutex<Option<Fault>>,
    fault_queue: Mutex<VecDeque<Fault>>,
    numbers_as_strings: AtomicBool,
    addr: SocketAddr,
    federated: Mutex<Vec<String>>,
    assertion_verifier: Mutex<Option<AssertionVerifier>>,
    users: Mutex<UserState>,
    /// `roles` of client-credential tokens; `None` keeps the default `["Machine.Read.All"]`.
    roles: Mutex<Option<Vec<String>>>,
    /// Confidential apps other than [`CLIENT_ID`] in [`TENANT`]: (tenant, client id).
    apps: Mutex<Vec<(String, String)>>,
    /// The redirect URIs of [`CLIENT_ID`]'s Web platform.
    web_redirect_uris: Mutex<Vec<String>>,
}

/// Checks a `client_assertion` (JWT) against what the app has registered; `Err((aadsts, message))`
/// becomes a 401 `invalid_client` with that code. Arguments: the assertion and the exact token URL
/// it must name as `aud`.
pub type AssertionVerifier = Arc<dyn Fn(&str, &str) -> Result<(), (u32, String)> + Send + Sync>;

/// The fake Entra server; stops when dropped.
pub struct FakeEntra {
    addr: SocketAddr,
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakeEntra {
    pub async fn start() -> FakeEntra {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            token_requests: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            lifetime: AtomicU64::new(DEFAULT_LIFETIME_SECS),
            refresh_in: Mutex::new(None),
            sticky_fault: Mutex::new(None),
            fault_queue: Mutex::new(VecDeque::new()),
            numbers_as_strings: AtomicBool::new(false),
            addr,
            federated: Mutex::new(Vec::new()),
            assertion_verifier: Mutex::new(None),
            users: Mutex::new(UserState {
                device_sessions: HashMap::new(),
                device_steps: VecDeque::new(),
                device_fallback: DeviceStep::Approve,
                device_interval: 5,
                device_expires_in: 900,
                device_requests: Vec::new(),
                authorize_steps: VecDeque::new(),
                authorize_requests: Vec::new(),
                codes: HashMap::new(),
                refresh_tokens: HashMap::new(),
                rt_order: Vec::new(),
                next_family: 1,
            }),
            roles: Mutex::new(None),
            apps: Mutex::new(Vec::new()),
            web_redirect_uris: Mutex::new(vec![WEB_REDIRECT_URI.to_string()]),
        });
        let handler_state = state.clone();
        let server = super::serve(listener, move |req| handle(handler_state.clone(), req));
        FakeEntra {
            addr,
            state,
            _server: server,
        }
    }

    /// Accepts `assertion` verbatim as a federated client assertion (a projected service-account
    /// token, an Azure Pipelines OIDC token), as a federated identity credential would.
    pub fn accept_federated_assertion(&self, assertion: &str) {
        lock(&self.state.federated).push(assertion.to_string());
    }

    /// Registers the confidential app `client_id` in `tenant` (which the fake then knows), with
    /// the same credentials as [`CLIENT_ID`]'s; its tokens say `appid` = `client_id`, `tid` =
    /// `tenant`. Returns the identity a fake upstream should expect of them.
    pub fn register_app(&self, tenant: &str, client_id: &str) -> super::upstream::Identity {
        lock(&self.state.apps).push((tenant.to_string(), client_id.to_string()));
        super::upstream::Identity::app(client_id, tenant)
    }

    /// Adds `uri` to the redirect URIs of [`CLIENT_ID`]'s Web platform (it has
    /// [`WEB_REDIRECT_URI`]).
    pub fn register_web_redirect_uri(&self, uri: &str) {
        lock(&self.state.web_redirect_uris).push(uri.to_string());
    }

    /// Verifies other client assertions (certificate-signed ones) with `verifier`.
    pub fn set_assertion_verifier(&self, verifier: AssertionVerifier) {
        *lock(&self.state.assertion_verifier) = Some(verifier);
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// [`FakeEntra::authority`] as a URL, the way a credential under test is given it.
    pub fn authority_url(&self) -> url::Url {
        url::Url::parse(&self.authority()).expect("authority URL")
    }

    /// An `EntraClient` over [`super::http_client`], for a credential under test.
    pub fn client(&self) -> patless::credentials::EntraClient {
        patless::credentials::EntraClient::new(super::http_client())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `{authority}/{TENANT}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority(), TENANT)
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url_for(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority())
    }

    /// Number of POSTs to the token endpoint (any tenant), failed and faulted ones included.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Every token endpoint request, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequestRecord> {
        lock(&self.state.requests).clone()
    }

    /// The client assertions (`client_assertion` form fields) it received, in order.
    pub fn client_assertions(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|r| r.form.get("client_assertion").cloned())
            .collect()
    }

    /// The form field `name` of the last token request that had one.
    pub fn last_form(&self, name: &str) -> Option<String> {
        self.requests()
            .iter()
            .rev()
            .find_map(|r| r.form.get(name).cloned())
    }

    /// Every access token issued so far, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.issued).clone()
    }

    /// `expires_in` (and `ext_expires_in`) of tokens issued from now on; default 3599.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime.store(secs, Ordering::SeqCst);
    }

    /// The application roles (`roles` claim) of the app tokens issued from now on, as if the
    /// admin had granted exactly these.
    pub fn set_roles(&self, roles: &[&str]) {
        *lock(&self.state.roles) = Some(roles.iter().map(|r| r.to_string()).collect());
    }

    /// Adds `refresh_in` to successful answers when `Some`.
    pub fn set_refresh_in(&self, secs: Option<u64>) {
        *lock(&self.state.refresh_in) = secs;
    }

    /// Sticky fault: applies to every request until cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.state.sticky_fault) = fault;
    }

    /// One-shot fault, queued FIFO; queued faults are consumed before the sticky one applies.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state.fault_queue).push_back(fault);
    }

    /// Sends `expires_in`, `ext_expires_in` and `refresh_in` as JSON strings.
    pub fn set_numbers_as_strings(&self, on: bool) {
        self.state.numbers_as_strings.store(on, Ordering::SeqCst);
    }

    /// What the next device code poll sees (FIFO); after the queue, the fallback.
    pub fn push_device_code_step(&self, step: DeviceStep) {
        lock(&self.state.users).device_steps.push_back(step);
    }

    /// What polls see once the queue is empty (default `Approve`).
    pub fn set_device_code_fallback(&self, step: DeviceStep) {
        lock(&self.state.users).device_fallback = step;
    }

    /// `interval` and `expires_in` of device codes issued from now on (default 5 s and 900 s).
    pub fn set_device_code_timing(&self, interval_secs: u64, expires_in_secs: u64) {
        let mut u = lock(&self.state.users);
        u.device_interval = interval_secs;
        u.device_expires_in = expires_in_secs;
    }

    /// Every request to the device code endpoint.
    pub fn device_code_requests(&self) -> Vec<TokenRequestRecord> {
        lock(&self.state.users).device_requests.clone()
    }

    /// How the authorize page answers the next sign-in (FIFO; then `Approve`).
    pub fn push_authorize_step(&self, step: AuthorizeStep) {
        lock(&self.state.users).authorize_steps.push_back(step);
    }

    /// Every request to the authorize page.
    pub fn authorize_requests(&self) -> Vec<AuthorizeRecord> {
        lock(&self.state.users).authorize_requests.clone()
    }

    /// `{authority}/{TENANT}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/authorize", self.authority(), TENANT)
    }

    /// Token endpoint requests of one grant type.
    pub fn grant_requests(&self, grant_type: &str) -> Vec<TokenRequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.form.get("grant_type").map(String::as_str) == Some(grant_type))
            .collect()
    }

    /// A new session of the test user with [`PUBLIC_CLIENT_ID`], as if they had signed in
    /// elsewhere: its first refresh token.
    pub fn sign_in_user(&self) -> String {
        let mut u = lock(&self.state.users);
        let family = u.next_family;
        u.next_family += 1;
        issue_refresh_token(&mut u, family, PUBLIC_CLIENT_ID)
    }

    /// Every refresh token issued, oldest first.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        lock(&self.state.users).rt_order.clone()
    }

    /// The newest refresh token issued.
    pub fn latest_refresh_token(&self) -> Option<String> {
        lock(&self.state.users).rt_order.last().cloned()
    }

    /// The sign-in session a refresh token belongs to (each login starts a new one; rotation
    /// keeps it).
    pub fn refresh_token_family(&self, rt: &str) -> Option<u64> {
        lock(&self.state.users)
            .refresh_tokens
            .get(rt)
            .map(|i| i.family)
    }

    /// Where a refresh token stands.
    pub fn refresh_token_status(&self, rt: &str) -> Option<RefreshTokenStatus> {
        lock(&self.state.users)
            .refresh_tokens
            .get(rt)
            .map(|i| i.status)
    }

    /// Revokes every refresh token (as an admin's "revoke sessions"): AADSTS70008 from now on.
    pub fn revoke_refresh_tokens(&self) {
        for i in lock(&self.state.users).refresh_tokens.values_mut() {
            i.status = RefreshTokenStatus::Revoked;
        }
    }

    /// Expires every refresh token: AADSTS700082 from now on.
    pub fn expire_refresh_tokens(&self) {
        for i in lock(&self.state.users).refresh_tokens.values_mut() {
            if i.status == RefreshTokenStatus::Valid {
                i.status = RefreshTokenStatus::Expired;
            }
        }
    }
}

fn issue_refresh_token(u: &mut UserState, family: u64, client_id: &str) -> String {
    let rt = format!("1.AXoAfake-rt.{}", random_string(96));
    u.refresh_tokens.insert(
        rt.clone(),
        RtInfo {
            family,
            client_id: client_id.to_string(),
            status: RefreshTokenStatus::Valid,
        },
    );
    u.rt_order.push(rt.clone());
    rt
}

/// `exp` for a token living `lifetime_secs` from now, rounded up to the next whole second: a
/// token lives at least its `expires_in` (rounding down would cut up to a second off a 3-second
/// soak token, which patless, told 3 s, would then send expired).
fn exp_after(lifetime_secs: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    now.as_secs() + lifetime_secs + u64::from(now.subsec_nanos() > 0)
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// `YYYY-MM-DD hh:mm:ssZ`, as in Entra error bodies.
fn entra_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Signs `claims` as an RS256 JWT with [`super::TEST_KEY_PEM`] and kid `test-key`, exactly as the
/// fake issues its tokens. Lets tests craft expired or odd tokens the fake upstream will judge.
pub fn sign_token(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_ID.to_string());
    let key = EncodingKey::from_rsa_pem(super::TEST_KEY_PEM.as_bytes()).expect("test RSA key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign JWT")
}

/// The claims the fake puts in a token of the default app ([`CLIENT_ID`] in [`TENANT`]) for
/// `audience` living `lifetime_secs` from now.
pub fn token_claims(audience: &str, lifetime_secs: u64) -> Value {
    app_token_claims(audience, lifetime_secs, TENANT, CLIENT_ID)
}

/// The claims of an app-only token of `client_id` in `tenant` for `audience`: `appid`/`azp` the
/// client, `tid` the tenant, `oid`/`sub` its service principal ([`app_object_id`]), `roles` the
/// default `["Machine.Read.All"]`, no `scp`.
pub fn app_token_claims(
    audience: &str,
    lifetime_secs: u64,
    tenant: &str,
    client_id: &str,
) -> Value {
    let now = now_secs();
    let oid = app_object_id(tenant, client_id);
    json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now - 300,
        "nbf": now - 300,
        "exp": exp_after(lifetime_secs),
        "aio": random_string(40),
        "appid": client_id,
        "appidacr": "1",
        "azp": client_id,
        "idp": format!("https://sts.windows.net/{tenant}/"),
        "idtyp": "app",
        "oid": oid,
        "rh": random_string(20),
        "roles": ["Machine.Read.All"],
        "sub": oid,
        "tid": tenant,
        "uti": random_string(22),
        "ver": "1.0",
    })
}

/// The object id of the service principal of `client_id` in `tenant`: [`OBJECT_ID`] for the
/// default app, otherwise a GUID derived from the pair (the same pair, the same id; another
/// tenant or client, another id).
pub fn app_object_id(tenant: &str, client_id: &str) -> String {
    if tenant == TENANT && client_id == CLIENT_ID {
        return OBJECT_ID.to_string();
    }
    derived_guid(&format!("service-principal/{tenant}/{client_id}"))
}

/// A GUID-shaped id derived from `seed` (FNV-1a, twice): deterministic, distinct per seed.
pub fn derived_guid(seed: &str) -> String {
    let a = super::fnv1a(super::FNV_OFFSET, seed.as_bytes());
    let b = super::fnv1a(a, b"/guid");
    let h = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The claims of a user's access token for `audience` (delegated: `scp`, `upn`, no `roles`).
pub fn user_token_claims(audience: &str, lifetime_secs: u64, client_id: &str) -> Value {
    let now = now_secs();
    json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 300,
        "nbf": now - 300,
        "exp": exp_after(lifetime_secs),
        "acr": "1",
        "aio": random_string(40),
        "amr": ["pwd", "mfa"],
        "appid": client_id,
        "appidacr": "0",
        "family_name": "Example",
        "given_name": "Alice",
        "idtyp": "user",
        "name": USER_NAME,
        "oid": USER_OID,
        "rh": random_string(20),
        "scp": USER_SCP,
        "sub": random_string(43),
        "tid": TENANT,
        "unique_name": USER_UPN,
        "upn": USER_UPN,
        "uti": random_string(22),
        "ver": "1.0",
    })
}

/// An id token for the test user, as issued to `client_id`.
pub fn id_token(client_id: &str) -> String {
    let now = now_secs();
    sign_token(&json!({
        "aud": client_id,
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "iat": now - 300,
        "nbf": now - 300,
        "exp": now + 3600,
        "name": USER_NAME,
        "oid": USER_OID,
        "preferred_username": USER_UPN,
        "sub": random_string(43),
        "tid": TENANT,
        "ver": "2.0",
    }))
}

/// The S256 PKCE challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// A token of the default app as the fake would issue it, without going through HTTP (not
/// recorded in `issued_tokens`).
pub fn mint_token(audience: &str, lifetime_secs: u64) -> String {
    sign_token(&token_claims(audience, lifetime_secs))
}

/// A token of `client_id` in `tenant` ([`app_token_claims`]), without going through HTTP.
pub fn mint_app_token(audience: &str, lifetime_secs: u64, tenant: &str, client_id: &str) -> String {
    sign_token(&app_token_claims(
        audience,
        lifetime_secs,
        tenant,
        client_id,
    ))
}

/// A token of the test user ([`user_token_claims`]) signed in with `client_id`, without going
/// through HTTP.
pub fn mint_user_token(audience: &str, lifetime_secs: u64, client_id: &str) -> String {
    sign_token(&user_token_claims(audience, lifetime_secs, client_id))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store, no-cache")
        .header(header::PRAGMA, "no-cache")
        .body(full(body.to_string()))
        .expect("response")
}

struct ErrorCtx {
    correlation_id: String,
}

fn entra_error(
    ctx: &ErrorCtx,
    status: StatusCode,
    error: &str,
    code: u64,
    message: &str,
) -> Response<Body> {
    let trace_id = random_uuid();
    let timestamp = entra_timestamp(now_secs());
    let description = format!(
        "AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {} Timestamp: {timestamp}",
        ctx.correlation_id
    );
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": ctx.correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn invalid_client(ctx: &ErrorCtx, client_id: &str) -> Response<Body> {
    entra_error(
        ctx,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7_000_215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        ),
    )
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found", "error_description": "no such endpoint on the fake Entra"}),
    )
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let endpoint = (segments.len() == 4 && segments[1..3] == ["oauth2", "v2.0"])
        .then(|| segments[3].to_string());
    let tenant = segments[0].to_string();
    match endpoint.as_deref() {
        Some("token") => token_endpoint(state, tenant, path, req).await,
        Some("devicecode") => device_code_endpoint(state, tenant, path, req).await,
        Some("authorize") => authorize_endpoint(state, tenant, req),
        _ => not_found(),
    }
}

fn method_not_allowed(what: &str) -> Response<Body> {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "invalid_request", "error_description": format!("the {what} only accepts POST")}),
    )
}

fn tenant_not_found(ctx: &ErrorCtx, tenant: &str) -> Response<Body> {
    entra_error(
        ctx,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90_002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
             and are signing into the correct cloud."
        ),
    )
}

fn app_not_found(ctx: &ErrorCtx, tenant: &str, client_id: &str) -> Response<Body> {
    entra_error(
        ctx,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700_016,
        &format!(
            "Application with identifier '{client_id}' was not found in the directory \
             '{tenant}'. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant."
        ),
    )
}

fn invalid_grant(ctx: &ErrorCtx, code: u64, message: &str) -> Response<Body> {
    entra_error(ctx, StatusCode::BAD_REQUEST, "invalid_grant", code, message)
}

async fn read_form(req: Request<Incoming>) -> (http::request::Parts, HashMap<String, String>) {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let form = url::form_urlencoded::parse(&bytes).into_owned().collect();
    (parts, form)
}

fn error_ctx(headers: &HeaderMap) -> ErrorCtx {
    ErrorCtx {
        correlation_id: headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(random_uuid),
    }
}

async fn token_endpoint(
    state: Arc<State>,
    tenant: String,
    path: String,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::POST {
        return method_not_allowed("token endpoint");
    }
    let (parts, form) = read_form(req).await;
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    lock(&state.requests).push(TokenRequestRecord {
        path: path.clone(),
        form: form.clone(),
        headers: parts.headers.clone(),
        at: Instant::now(),
    });
    let ctx = error_ctx(&parts.headers);
    let client_id = form.get("client_id").cloned().unwrap_or_default();

    let fault = {
        let queued = lock(&state.fault_queue).pop_front();
        queued.or_else(|| lock(&state.sticky_fault).clone())
    };
    match fault {
        None => {}
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::InvalidClient) => return invalid_client(&ctx, &client_id),
        Some(Fault::Throttled { retry_after_secs }) => {
            let mut resp = entra_error(
                &ctx,
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90_033,
                "A transient error has occurred. Please try again.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return resp;
        }
        Some(Fault::ServerError) => {
            return entra_error(
                &ctx,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50_000,
                "There was an error issuing a token or an issue with our sign-in service.",
            )
        }
        Some(Fault::MalformedJson) => {
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(full(r#"{"access_token": "#))
                .expect("response")
        }
        Some(Fault::HtmlPage) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(full(
                    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
                     <body><h1>Bad Gateway</h1><p>The proxy server received an invalid response \
                     from an upstream server.</p></body></html>",
                ))
                .expect("response")
        }
    }

    let grant_type = form.get("grant_type").map(String::as_str);
    let user_flow = matches!(
        grant_type,
        Some(
            "urn:ietf:params:oauth:grant-type:device_code" | "authorization_code" | "refresh_token"
        )
    );
    if !knows_tenant(&state, &tenant, user_flow) {
        return tenant_not_found(&ctx, &tenant);
    }
    match grant_type {
        Some("client_credentials") => client_credentials(&state, &ctx, &tenant, &form),
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            device_code_grant(&state, &ctx, &form)
        }
        Some("authorization_code") => authorization_code_grant(&state, &ctx, &tenant, &form),
        Some("refresh_token") => refresh_token_grant(&state, &ctx, &tenant, &form),
        Some(other) => entra_error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
        None => entra_error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            "The request body must contain the following parameter: 'grant_type'.",
        ),
    }
}

/// Whether the fake knows `tenant`: the home [`TENANT`], a registered app's tenant, and for a
/// person's sign-in (`user_flow`) also `common` and `organizations` (the user's home is
/// [`TENANT`]).
fn knows_tenant(state: &State, tenant: &str, user_flow: bool) -> bool {
    if user_flow {
        return [TENANT, "common", "organizations"].contains(&tenant);
    }
    tenant == TENANT || lock(&state.apps).iter().any(|(t, _)| t == tenant)
}

/// Whether `client_id` is a confidential app registered in `tenant`.
fn knows_app(state: &State, tenant: &str, client_id: &str) -> bool {
    (tenant == TENANT && client_id == CLIENT_ID)
        || lock(&state.apps)
            .iter()
            .any(|(t, c)| t == tenant && c == client_id)
}

fn client_credentials(
    state: &State,
    ctx: &ErrorCtx,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    if !knows_app(state, tenant, &client_id) {
        return app_not_found(ctx, tenant, &client_id);
    }
    if let Err(refused) = verify_client_credential(state, ctx, tenant, &client_id, form) {
        return *refused;
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let audience = match scope.strip_suffix("/.default") {
        Some(aud) if !aud.is_empty() && !scope.contains(char::is_whitespace) => aud.to_string(),
        _ => {
            return entra_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70_011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided \
                     value for the input parameter 'scope' is not valid. The scope '{scope}' is \
                     not valid. The scope must be in the format of a resource identifier with the \
                     '/.default' suffix."
                ),
            );
        }
    };

    let lifetime = state.lifetime.load(Ordering::SeqCst);
    let mut claims = app_token_claims(&audience, lifetime, tenant, &client_id);
    if let Some(roles) = lock(&state.roles).clone() {
        claims["roles"] = json!(roles);
    }
    // A claims request (CAE challenge, client capabilities) is echoed into the token, so the
    // fake upstream can tell a token that satisfies its challenge.
    if let Some(requested) = form.get("claims") {
        claims[CLAIMS_REQUEST_CLAIM] = Value::String(requested.clone());
    }
    let token = sign_token(&claims);
    lock(&state.issued).push(token.clone());
    let body = success_body(state, lifetime, token);
    json_response(StatusCode::OK, &body)
}

/// Checks a confidential app's secret or client assertion (certificate-signed, verified by the
/// [`AssertionVerifier`], or federated), as the token endpoint does for every grant of such an app.
fn verify_client_credential(
    state: &State,
    ctx: &ErrorCtx,
    tenant: &str,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<(), Box<Response<Body>>> {
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(Box::new(entra_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50_027,
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            )));
        }
        let federated = lock(&state.federated).iter().any(|a| a == assertion);
        if !federated {
            let verifier = lock(&state.assertion_verifier).clone();
            let token_url = format!("http://{}/{tenant}/oauth2/v2.0/token", state.addr);
            let verdict = match verifier {
                Some(v) => v(assertion, &token_url),
                None => Err((
                    70_021,
                    "No matching federated identity record found for presented assertion."
                        .to_string(),
                )),
            };
            if let Err((code, message)) = verdict {
                return Err(Box::new(entra_error(
                    ctx,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    u64::from(code),
                    &message,
                )));
            }
        }
    } else if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return Err(Box::new(invalid_client(ctx, client_id)));
    }
    Ok(())
}

/// The token claim where the fake copies a client-credentials request's `claims` parameter.
pub const CLAIMS_REQUEST_CLAIM: &str = "test_claims_request";

/// `token_type`, `expires_in`, `ext_expires_in`, `access_token` (+ `refresh_in` when set).
fn success_body(state: &State, lifetime: u64, token: String) -> Value {
    let as_strings = state.numbers_as_strings.load(Ordering::SeqCst);
    let number = |n: u64| -> Value {
        if as_strings {
            Value::String(n.to_string())
        } else {
            Value::from(n)
        }
    };
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": number(lifetime),
        "ext_expires_in": number(lifetime),
        "access_token": token,
    });
    if let Some(refresh_in) = *lock(&state.refresh_in) {
        body["refresh_in"] = number(refresh_in);
    }
    body
}

/// A user flow's scope: one resource (`<resource>/<permission>`, `/.default` included) plus any
/// of `openid profile email offline_access`. Returns (audience, offline_access, openid).
fn user_scope(scope: &str) -> Result<(String, bool, bool), String> {
    const OIDC: [&str; 4] = ["openid", "profile", "email", "offline_access"];
    let words: Vec<&str> = scope.split_whitespace().collect();
    let resources: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !OIDC.contains(w))
        .collect();
    let [resource] = resources[..] else {
        return Err(format!(
            "The provided value for the input parameter 'scope' is not valid: '{scope}' must name exactly one resource."
        ));
    };
    let audience = match resource.rsplit_once('/') {
        Some((aud, perm)) if !aud.is_empty() && !perm.is_empty() => aud.to_string(),
        _ => return Err(format!("The scope '{resource}' is not valid.")),
    };
    Ok((
        audience,
        words.contains(&"offline_access"),
        words.contains(&"openid"),
    ))
}

/// Who may redeem a code or a refresh token: the public client without a secret, or the web
/// app [`CLIENT_ID`] with its secret or certificate assertion (without one: AADSTS7000218).
fn check_code_client(
    state: &State,
    ctx: &ErrorCtx,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<String, Box<Response<Body>>> {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let credential = form.contains_key("client_secret") || form.contains_key("client_assertion");
    if client_id != CLIENT_ID || !credential {
        return check_public_client(ctx, form);
    }
    verify_client_credential(state, ctx, tenant, &client_id, form)?;
    Ok(client_id)
}

/// Who may run the device code flow: the public client, without a secret (a confidential app
/// without "Allow public client flows": AADSTS7000218).
fn check_public_client(
    ctx: &ErrorCtx,
    form: &HashMap<String, String>,
) -> Result<String, Box<Response<Body>>> {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    if client_id == CLIENT_ID {
        // A confidential app without "Allow public client flows".
        return Err(Box::new(entra_error(
            ctx,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )));
    }
    if client_id != PUBLIC_CLIENT_ID {
        return Err(Box::new(app_not_found(ctx, TENANT, &client_id)));
    }
    if form.contains_key("client_secret") || form.contains_key("client_assertion") {
        return Err(Box::new(entra_error(
            ctx,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        )));
    }
    Ok(client_id)
}

/// Tokens for the test user: an access token for `scope`'s resource, a refresh token of `family`
/// (a new one when `None`) with `offline_access`, an id token with `openid`.
fn user_tokens(
    state: &State,
    ctx: &ErrorCtx,
    client_id: &str,
    scope: &str,
    family: Option<u64>,
) -> Response<Body> {
    let (audience, offline, openid) = match user_scope(scope) {
        Ok(s) => s,
        Err(message) => {
            return entra_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70_011,
                &message,
            )
        }
    };
    let lifetime = state.lifetime.load(Ordering::SeqCst);
    let token = sign_token(&user_token_claims(&audience, lifetime, client_id));
    lock(&state.issued).push(token.clone());
    let mut body = success_body(state, lifetime, token);
    body["scope"] = Value::String(format!("{audience}/{USER_SCP}"));
    if offline {
        let mut u = lock(&state.users);
        let family = family.unwrap_or_else(|| {
            let f = u.next_family;
            u.next_family += 1;
            f
        });
        body["refresh_token"] = Value::String(issue_refresh_token(&mut u, family, client_id));
    }
    if openid {
        body["id_token"] = Value::String(id_token(client_id));
    }
    json_response(StatusCode::OK, &body)
}

async fn device_code_endpoint(
    state: Arc<State>,
    tenant: String,
    path: String,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::POST {
        return method_not_allowed("device code endpoint");
    }
    let (parts, form) = read_form(req).await;
    let ctx = error_ctx(&parts.headers);
    let mut u = lock(&state.users);
    u.device_requests.push(TokenRequestRecord {
        path,
        form: form.clone(),
        headers: parts.headers.clone(),
        at: Instant::now(),
    });
    if !knows_tenant(&state, &tenant, true) {
        return tenant_not_found(&ctx, &tenant);
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    if client_id != PUBLIC_CLIENT_ID && client_id != CLIENT_ID {
        return app_not_found(&ctx, TENANT, &client_id);
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    if let Err(message) = user_scope(&scope) {
        return entra_error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70_011,
            &message,
        );
    }
    let device_code = format!("DAQABfake.{}", random_string(64));
    let user_code = random_string(9).to_ascii_uppercase();
    u.device_sessions.insert(
        device_code.clone(),
        DeviceSession {
            client_id,
            scope,
            consumed: false,
        },
    );
    json_response(
        StatusCode::OK,
        &json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": VERIFICATION_URI,
            "expires_in": u.device_expires_in,
            "interval": u.device_interval,
            "message": format!(
                "To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the code {user_code} to authenticate."
            ),
        }),
    )
}

fn device_code_grant(
    state: &State,
    ctx: &ErrorCtx,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let client_id = match check_public_client(ctx, form) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let device_code = form.get("device_code").cloned().unwrap_or_default();
    let (step, scope) = {
        let mut u = lock(&state.users);
        let step = u.device_steps.pop_front().unwrap_or(u.device_fallback);
        let Some(session) = u.device_sessions.get_mut(&device_code) else {
            return entra_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "bad_verification_code",
                70_000,
                "The device code is not valid.",
            );
        };
        if session.client_id != client_id {
            return invalid_grant(
                ctx,
                70_000,
                "The device code was issued to another application.",
            );
        }
        if session.consumed {
            return invalid_grant(
                ctx,
                54_005,
                "OAuth2 Authorization code was already redeemed.",
            );
        }
        if step == DeviceStep::Approve {
            session.consumed = true;
        }
        (step, session.scope.clone())
    };
    let (error, code, message) = match step {
        DeviceStep::Approve => return user_tokens(state, ctx, &client_id, &scope, None),
        DeviceStep::Pending => (
            "authorization_pending",
            70_016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        ),
        DeviceStep::SlowDown => ("slow_down", 70_016, "Polling too fast: slow down."),
        DeviceStep::Declined => (
            "authorization_declined",
            65_004,
            "User declined to consent to access the app.",
        ),
        DeviceStep::Expired => ("expired_token", 70_019, "Verification code expired."),
        DeviceStep::BadCode => (
            "bad_verification_code",
            70_000,
            "The device code is not valid.",
        ),
    };
    entra_error(ctx, StatusCode::BAD_REQUEST, error, code, message)
}

fn authorization_code_grant(
    state: &State,
    ctx: &ErrorCtx,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let client_id = match check_code_client(state, ctx, tenant, form) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let code = form.get("code").cloned().unwrap_or_default();
    let scope = {
        let mut u = lock(&state.users);
        let Some(grant) = u.codes.get_mut(&code) else {
            return invalid_grant(
                ctx,
                9_002_313,
                "Invalid request. The authorization code is not valid.",
            );
        };
        if grant.used {
            return invalid_grant(ctx, 54_005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.");
        }
        if grant.client_id != client_id {
            return invalid_grant(
                ctx,
                70_000,
                "The authorization code was issued to another application.",
            );
        }
        if form.get("redirect_uri") != Some(&grant.redirect_uri) {
            return invalid_grant(ctx, 500_117, "The reply uri specified in the request does not match the reply uri used in the authorization request.");
        }
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        if !(43..=128).contains(&verifier.len()) {
            return invalid_grant(ctx, 501_491, "Invalid size of Code_Verifier parameter.");
        }
        if pkce_challenge(&verifier) != grant.challenge {
            return invalid_grant(ctx, 50_148, "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.");
        }
        grant.used = true;
        form.get("scope")
            .cloned()
            .unwrap_or_else(|| grant.scope.clone())
    };
    user_tokens(state, ctx, &client_id, &scope, None)
}

fn refresh_token_grant(
    state: &State,
    ctx: &ErrorCtx,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let client_id = match check_code_client(state, ctx, tenant, form) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    let scope = form.get("scope").cloned().unwrap_or_default();
    let offline = match user_scope(&scope) {
        Ok((_, offline, _)) => offline,
        Err(message) => {
            return entra_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70_011,
                &message,
            )
        }
    };
    let family = {
        let mut u = lock(&state.users);
        let Some(info) = u.refresh_tokens.get_mut(&rt) else {
            return invalid_grant(
                ctx,
                9_002_313,
                "Invalid request. Request is malformed or invalid.",
            );
        };
        if info.client_id != client_id {
            return invalid_grant(
                ctx,
                70_000,
                "The refresh token was issued to another application.",
            );
        }
        match info.status {
            RefreshTokenStatus::Valid => {}
            RefreshTokenStatus::Redeemed => {
                return invalid_grant(ctx, 70_008, "The refresh token has already been redeemed (the fake rotates refresh tokens).")
            }
            RefreshTokenStatus::Revoked => {
                return invalid_grant(ctx, 70_008, "The provided authorization code or refresh token has expired due to inactivity or was revoked.")
            }
            RefreshTokenStatus::Expired => {
                return invalid_grant(ctx, 700_082, "The refresh token has expired due to inactivity.")
            }
        }
        if offline {
            info.status = RefreshTokenStatus::Redeemed;
        }
        info.family
    };
    user_tokens(state, ctx, &client_id, &scope, Some(family))
}

fn html_error(status: StatusCode, code: u64, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(full(format!(
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>\
             <p>AADSTS{code}: {message}</p></body></html>"
        )))
        .expect("response")
}

fn redirect(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response<Body> {
    let mut url = url::Url::parse(redirect_uri).expect("checked redirect_uri");
    url.query_pairs_mut().extend_pairs(pairs);
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, url.as_str())
        .body(full(""))
        .expect("response")
}

/// Whether `uri` is a loopback redirect URI as a public client registers it (`http://localhost`,
/// any port, no path).
fn loopback_redirect(uri: &str) -> bool {
    match url::Url::parse(uri) {
        Ok(u) => {
            u.scheme() == "http"
                && matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
                && (u.path() == "/" || u.path().is_empty())
                && u.query().is_none()
        }
        Err(_) => false,
    }
}

/// Whether `requested` is the registered web redirect URI `registered`: the same string, or for
/// an `http://` loopback one, the same but for the port (Entra ignores a loopback port).
fn same_redirect(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let without_port = |uri: &str| {
        url::Url::parse(uri)
            .ok()
            .filter(|u| u.scheme() == "http")
            .and_then(|mut u| {
                let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
                (loopback && u.set_port(None).is_ok()).then(|| u.to_string())
            })
    };
    without_port(registered).is_some_and(|r| Some(r) == without_port(requested))
}

fn authorize_endpoint(state: Arc<State>, tenant: String, req: Request<Incoming>) -> Response<Body> {
    let query = super::query_params(req.uri());
    let mut u = lock(&state.users);
    u.authorize_requests.push(AuthorizeRecord {
        query: query.clone(),
    });
    if req.method() != Method::GET {
        return html_error(
            StatusCode::METHOD_NOT_ALLOWED,
            900_561,
            "The endpoint only accepts GET.",
        );
    }
    if !knows_tenant(&state, &tenant, true) {
        return html_error(
            StatusCode::BAD_REQUEST,
            90_002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    let client_id = get("client_id");
    let redirect_uri = get("redirect_uri");
    if client_id != PUBLIC_CLIENT_ID && client_id != CLIENT_ID {
        return html_error(
            StatusCode::BAD_REQUEST,
            700_016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    }
    // The public client registers http://localhost, the web app its Web redirect URIs; errors
    // about the redirect URI are shown, never redirected to it.
    let registered = if client_id == PUBLIC_CLIENT_ID {
        loopback_redirect(&redirect_uri)
    } else {
        lock(&state.web_redirect_uris)
            .iter()
            .any(|r| same_redirect(r, &redirect_uri))
    };
    if !registered {
        return html_error(StatusCode::BAD_REQUEST, 50_011, &format!("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'."));
    }
    let state_param = get("state");
    let fail = |error: &str, description: &str| {
        redirect(
            &redirect_uri,
            &[
                ("error", error),
                ("error_description", description),
                ("state", &state_param),
            ],
        )
    };
    if get("response_type") != "code" {
        return fail(
            "unsupported_response_type",
            "AADSTS700054: response_type must be 'code'.",
        );
    }
    let challenge = get("code_challenge");
    if get("code_challenge_method") != "S256" || challenge.len() != 43 {
        return fail(
            "invalid_request",
            "AADSTS501481: The Code_Challenge_Method must be S256 with a code_challenge.",
        );
    }
    if get("response_mode") != "query" {
        return fail(
            "invalid_request",
            "AADSTS900144: response_mode must be 'query' for this fake.",
        );
    }
    let scope = get("scope");
    if let Err(message) = user_scope(&scope) {
        return fail("invalid_scope", &format!("AADSTS70011: {message}"));
    }
    let step = u
        .authorize_steps
        .pop_front()
        .unwrap_or(AuthorizeStep::Approve);
    if step == AuthorizeStep::Deny {
        return fail(
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let code = format!("1.AXoAfake-code.{}", random_string(64));
    let bound_challenge = if step == AuthorizeStep::SwapChallenge {
        pkce_challenge(&random_string(64))
    } else {
        challenge
    };
    u.codes.insert(
        code.clone(),
        CodeGrant {
            client_id,
            redirect_uri: redirect_uri.clone(),
            challenge: bound_challenge,
            scope,
            used: false,
        },
    );
    let returned_state = if step == AuthorizeStep::WrongState {
        "forged-state".to_string()
    } else {
        state_param.clone()
    };
    redirect(
        &redirect_uri,
        &[
            ("code", &code),
            ("state", &returned_state),
            ("session_state", &random_uuid()),
        ],
    )
}
