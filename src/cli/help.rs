//! The examples each command's `--help` ends with; docs/commands.md shows the same ones.

/// `patless --help`.
pub(super) const PATLESS: &str = "\
Examples:
  patless                                    # serve: ./patless.toml, else the embedded default
  patless check                              # a token per route, what it holds, a probe of each
  patless token --output raw                 # a token for the default profile's first route";

/// `patless serve --help`.
pub(super) const SERVE: &str = "\
Examples:
  patless serve --config /etc/patless/patless.toml
  PATLESS_SERVER__LISTEN=127.0.0.1:8080 patless serve
  patless serve -vv                          # with debug logs";

/// `patless config --help`.
pub(super) const CONFIG: &str = "\
Examples:
  patless config
  patless config --config patless.toml | head -20
  PATLESS_SERVER__SHUTDOWN_GRACE=10s patless config | grep shutdown";

/// `patless token --help`.
pub(super) const TOKEN: &str = "\
Examples:
  patless token --resource https://management.azure.com
  patless token --profile ado-bot --output raw
  curl -H \"Authorization: Bearer $(patless token --output raw)\" https://dev.azure.com/org/_apis/projects";

/// `patless login --help`.
pub(super) const LOGIN: &str = "\
Examples:
  patless login --profile me
  patless login --profile me --config ~/.config/patless/patless.toml";

/// `patless logout --help`.
pub(super) const LOGOUT: &str = "\
Examples:
  patless logout --profile me
  patless logout --profile me --config ~/.config/patless/patless.toml";

/// `patless check --help`.
pub(super) const CHECK: &str = "\
Examples:
  patless check
  patless check --profile ado-bot --no-probe
  patless check -v                           # with the logs of each acquisition";

/// `patless git-credential --help`.
pub(super) const GIT_CREDENTIAL: &str = "\
Examples:
  git config --global credential.https://dev.azure.com.helper '!patless git-credential'
  printf 'protocol=https\\nhost=dev.azure.com\\n\\n' | patless git-credential get
  printf 'protocol=https\\nhost=dev.azure.com\\n\\n' | patless -v git-credential get   # with logs";
