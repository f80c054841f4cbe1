//! Path validation, before routing: dot segments (raw or percent-encoded, any case), encoded
//! slashes or backslashes, NUL and bad escapes are refused, so a routed path never escapes its
//! prefix and the upstream sees exactly what was matched.

/// Why a path was refused (the `invalid_path` message).
pub fn validate(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with `/`");
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("the path has an invalid percent escape");
                };
                match (h * 16 + l) as u8 {
                    b'/' | b'\\' => return Err("the path has an encoded slash or backslash"),
                    0 => return Err("the path has an encoded NUL"),
                    _ => {}
                }
                i += 3;
            }
            b'\\' => return Err("the path has a backslash"),
            0 => return Err("the path has a NUL byte"),
            _ => i += 1,
        }
    }
    if path.split('/').any(is_dot_segment) {
        return Err("the path has a `.` or `..` segment");
    }
    Ok(())
}

/// `.` or `..`, each dot raw or as `%2e` in either case (without allocating: this runs on every
/// request).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn refuses_escapes() {
        for bad in [
            "/ado/../x",
            "/ado/./x",
            "/ado/%2e%2E/x",
            "/ado/.%2e",
            "/ado/%2E",
            "/ado/%2e.",
            "/..",
            "/ado/x/..",
            "/ado/a%2fb",
            "/ado/a%5Cb",
            "/ado/a\\b",
            "/ado/%zz",
            "/ado/%4",
            "/ado/%00",
            "ado",
        ] {
            assert!(validate(bad).is_err(), "{bad} should be refused");
        }
        for good in [
            "/",
            "/ado",
            "/ado/org/_apis/projects",
            "/ado/a%20b/..x",
            "/ado/.well-known",
            "/ado/...",
            "/ado/%2e%2e%2e",
            "/ado/%2ex",
        ] {
            assert!(validate(good).is_ok(), "{good} should pass");
        }
    }
}
