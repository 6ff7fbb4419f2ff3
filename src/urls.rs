//! Credentials in URLs: refused where a URL is given (spec, flags), and cut from every URL that
//! is logged or quoted in an error. Credentials belong in Secrets; a `user:password@` in a URL
//! ends up in Git, in `kubectl get -o yaml`, and in log lines.

/// The authority of `scheme://authority/...`, or None without a `://`.
fn authority(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((start, &rest[..end]))
}

/// True when the URL carries userinfo (`user@`, `user:password@`, even an empty `@`): the same
/// language as the CRD's rule `!self.matches(USERINFO_PATTERN)`.
pub fn has_userinfo(url: &str) -> bool {
    authority(url).is_some_and(|(_, a)| a.contains('@'))
}

/// The CRD's spelling of [`has_userinfo`].
pub const USERINFO_PATTERN: &str = "^[^:/?#]*://[^/?#]*@";

/// The URL with its userinfo replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match authority(url) {
        Some((start, a)) => match a.rfind('@') {
            Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A list of URLs, redacted and comma-joined, as log fields show endpoints.
pub fn redact_all(urls: &[String]) -> String {
    urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
}

/// What `drctl validate` and the CLI say about a URL with credentials (it quotes the URL
/// redacted, so the message itself does not leak them).
pub fn userinfo_message(url: &str) -> String {
    format!(
        "{} carries credentials, which Git, kubectl output and logs would show; remove the user:password@ part and keep credentials in the field's Secret reference",
        redact(url)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_found_only_in_the_authority() {
        let cases = [
            ("https://10.0.0.1:2379", false),
            ("https://user:pw@10.0.0.1:2379", true),
            ("https://user@10.0.0.1:2379", true),
            ("https://@10.0.0.1:2379", true),
            ("https://host/path@x", false),
            ("https://host/?q=a@b", false),
            ("https://host#a@b", false),
            ("not a url @ all", false),
        ];
        for (url, want) in cases {
            assert_eq!(has_userinfo(url), want, "{url}");
        }
    }

    #[test]
    fn redaction_keeps_scheme_host_and_path() {
        assert_eq!(redact("https://root:s3cret@10.0.0.1:2379/x"), "https://***@10.0.0.1:2379/x");
        assert_eq!(redact("http://a:b@c@host"), "http://***@host");
        assert_eq!(redact("https://10.0.0.1:2379"), "https://10.0.0.1:2379");
        assert_eq!(redact_all(&["http://u:p@a".into(), "http://b".into()]), "http://***@a,http://b");
        assert!(!userinfo_message("https://root:s3cret@h").contains("s3cret"));
    }
}
