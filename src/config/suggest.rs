//! "Did you mean …?": the name nearest a misspelt one, by edit distance, when one is close enough
//! to be worth saying.

/// The candidate nearest `word`, if it is close: case, `-` and `_` are ignored, and at most a
/// third of the letters (at least one) may differ, a swap of two neighbours counting as one.
///
/// ```text
/// listne → listen      clientid → client_id      SERVER_LISTEN → SERVER__LISTEN
/// ```
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (letters(word).chars().count() / 3).max(1);
    nearest_within(word, candidates, limit)
}

/// [`nearest`], with at most `limit` letters differing.
pub(crate) fn nearest_within<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Option<&'a str> {
    let word = letters(word);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word, &letters(c)), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `word` lower-cased, without `-` and `_`: `SERVER__LISTEN`, `server_listen` and
/// `server-listen` are the same letters.
pub(crate) fn letters(word: &str) -> String {
    word.chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// What to say after "unknown key": the nearest valid name, or, when none is close, the valid
/// names on a line of their own.
pub(crate) fn unknown_key_advice(word: &str, valid: &[&str]) -> String {
    match nearest(word, valid.iter().copied()) {
        Some(name) => format!("; did you mean `{name}`?"),
        None => format!("\nthe keys here: {}", valid.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &[&str] = &["listen", "admin_listen", "max_connections", "workers"];

    #[test]
    fn a_close_name_is_suggested() {
        assert_eq!(nearest("listne", SERVER.iter().copied()), Some("listen"));
        assert_eq!(
            nearest("maxconnections", SERVER.iter().copied()),
            Some("max_connections")
        );
        assert_eq!(nearest("Workers", SERVER.iter().copied()), Some("workers"));
        assert_eq!(
            nearest("SERVER_LISTEN", ["SERVER__LISTEN"]),
            Some("SERVER__LISTEN")
        );
    }

    #[test]
    fn a_far_name_is_not() {
        assert_eq!(nearest("threads", SERVER.iter().copied()), None);
        assert_eq!(nearest("log", ["logging.format"]), None);
        assert_eq!(nearest("x", ["y"]), Some("y"), "one letter may differ");
        assert_eq!(nearest("xz", ["yw"]), None);
    }

    #[test]
    fn advice_is_the_suggestion_or_the_list_on_its_own_line() {
        assert_eq!(
            unknown_key_advice("listne", SERVER),
            "; did you mean `listen`?"
        );
        assert_eq!(
            unknown_key_advice("threads", SERVER),
            "\nthe keys here: listen, admin_listen, max_connections, workers"
        );
    }
}
