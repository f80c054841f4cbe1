//! The header names patless reads or writes that `http::header` does not have, in one place:
//! as `HeaderName`s, and as text in [`name`] (for a `const` list such as the sensitive headers).

use http::HeaderName;

/// The same names as text.
pub mod name {
    /// See [`super::PATLESS_TOKEN`].
    pub const PATLESS_TOKEN: &str = "x-patless-token";
    /// See [`super::REQUEST_ID`].
    pub const REQUEST_ID: &str = "x-patless-request-id";
    /// See [`super::IDENTITY_HEADER`].
    pub const IDENTITY_HEADER: &str = "x-identity-header";
    /// See [`super::TFS_FEDAUTH_REDIRECT`].
    pub const TFS_FEDAUTH_REDIRECT: &str = "x-tfs-fedauthredirect";
    /// See [`super::METADATA`].
    pub const METADATA: &str = "metadata";
    /// See [`super::X_FORWARDED_FOR`].
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
}

/// The inbound token a client presents when `server.inbound_token` is set (docs/security.md).
pub static PATLESS_TOKEN: HeaderName = HeaderName::from_static(name::PATLESS_TOKEN);

/// The id of an answer patless made itself (a refusal, a panic's `500`): docs/errors.md.
pub static REQUEST_ID: HeaderName = HeaderName::from_static(name::REQUEST_ID);

/// The App Service managed-identity protocol's shared secret: sent by SDKs to patless's identity
/// endpoint, and by patless to App Service's.
pub static IDENTITY_HEADER: HeaderName = HeaderName::from_static(name::IDENTITY_HEADER);

/// `X-TFS-FedAuthRedirect: Suppress` asks Azure DevOps for a plain `401` instead of a redirect to
/// its sign-in page when it refuses a token.
pub static TFS_FEDAUTH_REDIRECT: HeaderName = HeaderName::from_static(name::TFS_FEDAUTH_REDIRECT);

/// `Metadata: true`, which IMDS requires of every request (a request forged by a server-side bug
/// rarely carries it): sent by patless to IMDS, and required by patless's IMDS-compatible path.
pub static METADATA: HeaderName = HeaderName::from_static(name::METADATA);

/// Set by a proxy that relays a request: IMDS refuses such requests, and so does patless's
/// IMDS-compatible path.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(name::X_FORWARDED_FOR);
