//! An error's chain of causes, read the one way every caller needs: hyper, reqwest and rustls
//! wrap the real cause (refused, reset, DNS, TLS) in layers whose own message says little.

use std::error::Error;

/// The messages of `e` and each of its sources, outermost first.
pub fn messages<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = String> + 'a {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
        .map(ToString::to_string)
}

/// The message of the innermost cause of `e` (its own when it has no source).
pub fn innermost(e: &(dyn Error + 'static)) -> String {
    messages(e).last().unwrap_or_default()
}

/// The message of the innermost of `e`'s sources; `None` when it has none.
pub fn innermost_source(e: &(dyn Error + 'static)) -> Option<String> {
    e.source().map(innermost)
}

/// `e` and its sources, joined with `": "` (for a one-line report).
pub fn joined(e: &(dyn Error + 'static)) -> String {
    messages(e).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_chain_is_read_outermost_first() {
        let e = Outer(Middle(std::io::Error::other("refused")));
        assert_eq!(joined(&e), "outer: middle: refused");
        assert_eq!(innermost(&e), "refused");
        assert_eq!(innermost_source(&e).as_deref(), Some("refused"));
        let alone = std::io::Error::other("alone");
        assert_eq!(innermost(&alone), "alone");
        assert_eq!(innermost_source(&alone), None);
    }
}
