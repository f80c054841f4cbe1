//! A parse error as a person reads it: the key, what is wrong, where the value came from, and a
//! hint where the mistake is a common one: a file in another format than its name says (YAML in
//! a `.toml`), `[routes]` for `[[routes]]`, `[[profiles]]` or a bare `[profiles]`, `[[server]]`,
//! and a misspelt key (the nearest valid name, not all of them).

use std::collections::BTreeSet;
use std::path::Path;

use figment::error::Kind;
use figment::value::{Dict, Value};

use super::env::{Overrides, METADATA_NAME};
use super::Format;
use crate::config::suggest;

/// What the errors of one load are read against.
pub(super) struct Context<'a> {
    /// The file's format, by its name.
    pub(super) format: Format,
    /// The file's name (or "embedded default").
    pub(super) source_name: &'a str,
    /// The file's text.
    pub(super) text: &'a str,
    /// The file's top-level table; `None` when the text does not parse to one.
    pub(super) file: Option<&'a Dict>,
    /// The `PATLESS_…` variables.
    pub(super) overrides: &'a Overrides,
}

/// Every error of a failed extraction, described, a hint after the first error of each section
/// that has one (and after the first error of a file that does not parse).
pub(super) fn describe_all(errors: figment::Error, cx: &Context) -> Vec<String> {
    let mut hinted = BTreeSet::new();
    errors
        .into_iter()
        .map(|e| {
            let mut text = describe(&e, cx);
            let section = e.path.first().cloned().unwrap_or_default();
            let hint = match cx.file {
                Some(_) if section.is_empty() => None,
                Some(_) => shape_hint(cx, &section),
                None => format_hint(cx),
            };
            if let Some(hint) = hint.filter(|_| hinted.insert(section)) {
                text.push_str("\nhint: ");
                text.push_str(&hint);
            }
            text
        })
        .collect()
}

/// `key: what is wrong (where it came from)`; an unknown key with the nearest valid one.
fn describe(e: &figment::Error, cx: &Context) -> String {
    let key = e.path.join(".");
    let from_env = e.metadata.as_ref().is_some_and(|m| m.name == METADATA_NAME);
    let origin = if from_env {
        let var = cx
            .overrides
            .origin(&key)
            .unwrap_or("a PATLESS_… environment variable");
        format!(" (from {var})")
    } else if key.is_empty() {
        // The file as a whole: the heading already names it.
        String::new()
    } else {
        format!(" (in {})", cx.source_name)
    };
    let message = match &e.kind {
        Kind::UnknownField(field, valid) => {
            format!(
                "unknown key{origin}{}",
                suggest::unknown_key_advice(field, valid)
            )
        }
        kind => format!("{}{origin}", kind.to_string().trim_end()),
    };
    if key.is_empty() {
        message
    } else {
        format!("{key}: {message}")
    }
}

/// For a text that does not parse: the format it seems written in, when that is another.
fn format_hint(cx: &Context) -> Option<String> {
    let (written, line, telling) = written_in(cx.text)?;
    if written == cx.format {
        return None;
    }
    let renamed = Path::new(cx.source_name).with_extension(match written {
        Format::Toml => "toml",
        Format::Yaml => "yaml",
        Format::Json => "json",
    });
    Some(format!(
        "this looks like {} (line {line}: `{telling}`), not {}: name the file {}, or write it in \
         {} ({})",
        name(written),
        name(cx.format),
        renamed.display(),
        name(cx.format),
        syntax(cx.format),
    ))
}

fn name(format: Format) -> &'static str {
    match format {
        Format::Toml => "TOML",
        Format::Yaml => "YAML",
        Format::Json => "JSON",
    }
}

fn syntax(format: Format) -> &'static str {
    match format {
        Format::Toml => "`[section]` headers, `key = \"value\"` lines",
        Format::Yaml => "`section:` lines, `key: value` indented under them",
        Format::Json => "one `{ \"section\": { \"key\": \"value\" } }` object",
    }
}

/// The format `text` looks written in, judged by its first line that is neither blank nor a
/// comment; with that line's number and its telling part (a name, never a value: it could be a
/// secret).
fn written_in(text: &str) -> Option<(Format, usize, String)> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
    };
    let (number, line) = text
        .lines()
        .map(str::trim)
        .enumerate()
        .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))?;
    let number = number + 1;
    if line.starts_with('{') {
        return Some((Format::Json, number, "{".into()));
    }
    if line.starts_with('[') && line.ends_with(']') && is_name(line.trim_matches(['[', ']'])) {
        return Some((Format::Toml, number, line.to_string()));
    }
    if let Some((name, _)) = line.split_once('=').filter(|(k, _)| is_name(k.trim())) {
        return Some((Format::Toml, number, format!("{} =", name.trim())));
    }
    if line == "---" || line == "-" || line.starts_with("- ") {
        let telling = if line == "---" { "---" } else { "-" };
        return Some((Format::Yaml, number, telling.into()));
    }
    let (name, rest) = line.split_once(':')?;
    (is_name(name) && (rest.is_empty() || rest.starts_with(' ')))
        .then(|| (Format::Yaml, number, format!("{name}:")))
}

/// For a section written in the wrong shape: how it is written.
fn shape_hint(cx: &Context, section: &str) -> Option<String> {
    let value = cx.file?.get(section)?;
    let tables = matches!(
        section,
        "server" | "entra" | "logging" | "identity_endpoint"
    );
    let hint = match (section, value, cx.format) {
        ("routes", Value::Dict(..), Format::Toml) => {
            "each route is a table of its own: write `[[routes]]`, with double brackets, above \
             each one"
        }
        ("routes", Value::Dict(..), Format::Yaml) => {
            "`routes` is a list: begin each route with `- ` (`- prefix: /ado`)"
        }
        ("routes", Value::Dict(..), Format::Json) => {
            "`routes` is an array: `\"routes\": [{ \"prefix\": \"/ado\", … }]`"
        }
        ("profiles", Value::Array(..), Format::Toml) => {
            "profiles are named: `[profiles.NAME]`, not `[[profiles]]`"
        }
        ("profiles", Value::Array(..), _) => {
            "profiles are named: each goes under its name in `profiles`, not in a list"
        }
        ("profiles", Value::Dict(_, d), format)
            if d.values().any(|v| !matches!(v, Value::Dict(..))) =>
        {
            match format {
                Format::Toml => {
                    "each profile is a table named after it, `[profiles.NAME]`; under a bare \
                     `[profiles]` each key is read as a profile"
                }
                _ => "each profile goes under its own name: `profiles` → `NAME` → its keys",
            }
        }
        (_, Value::Array(..), Format::Toml) if tables => {
            return Some(format!(
                "`[{section}]` is one table: single brackets, not `[[{section}]]`"
            ))
        }
        (_, Value::Array(..), _) if tables => {
            return Some(format!("`{section}` holds keys, not a list"));
        }
        _ => return None,
    };
    Some(hint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_a_text_is_written_in() {
        let cases = [
            (
                "profiles:\n  bot:\n    kind: auto\n",
                Format::Yaml,
                "profiles:",
            ),
            ("# c\n\nserver:\n", Format::Yaml, "server:"),
            ("- prefix: /ado\n", Format::Yaml, "-"),
            ("---\nserver:\n", Format::Yaml, "---"),
            ("[server]\nlisten = \"x\"\n", Format::Toml, "[server]"),
            ("[[routes]]\n", Format::Toml, "[[routes]]"),
            (
                "client_secret = \"hunter2\"\n",
                Format::Toml,
                "client_secret =",
            ),
            ("{\"server\": {}}", Format::Json, "{"),
            ("  {\n", Format::Json, "{"),
        ];
        for (text, format, telling) in cases {
            let (f, _, t) = written_in(text).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!((f, t.as_str()), (format, telling), "{text:?}");
        }
        assert_eq!(
            written_in("client_secret: hunter2\n").map(|w| w.2),
            Some("client_secret:".into()),
            "a name, never a value"
        );
        for unclear in ["", "# only\n", "just words\n", "http://x\n"] {
            assert!(written_in(unclear).is_none(), "{unclear:?}");
        }
    }
}
