//! Branch-name patterns: `*` matches any run of characters (`/` included, so `release/*`
//! matches `release/1.2/hotfix`), `?` matches exactly one character, everything else matches
//! itself. No character classes or escapes: branch names rarely need them, and a pattern can
//! then never be invalid.

/// Whether `pattern` matches all of `text`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and which text position it currently swallows up to: on a
    // mismatch, let that star swallow one more character and retry (linear-time wildcard
    // matching, no recursion).
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, swallowed)) => {
                    p = star + 1;
                    t = swallowed + 1;
                    backtrack = Some((star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether any of `patterns` matches `text`.
pub fn any_matches(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|pattern| matches(pattern, text))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards() {
        let cases = [
            ("main", "main", true),
            ("main", "mainline", false),
            ("main", "mai", false),
            ("release/*", "release/1.2", true),
            ("release/*", "release/1.2/hotfix", true),
            ("release/*", "release", false),
            ("release/*", "release/", true),
            ("*", "", true),
            ("*", "anything/at/all", true),
            ("", "", true),
            ("", "x", false),
            ("v?.?", "v1.2", true),
            ("v?.?", "v1.22", false),
            ("*-hotfix", "acme-1-hotfix", true),
            ("*-hotfix", "acme-1-hotfix-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "x", true),
            ("dependabot/*/*", "dependabot/npm/lodash", true),
            ("dependabot/*/*", "dependabot/npm", false),
            ("ü*", "über", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(matches(pattern, text), expected, "{pattern:?} vs {text:?}");
        }
    }
}
