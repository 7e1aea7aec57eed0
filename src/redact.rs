//! Credentials never reach a terminal or a log. Every place that displays a URL or an error text
//! (errors, the run summary, `\d` in the shell, the backfill report, tracing output) passes it
//! through [`text`], which removes:
//!
//! - the userinfo of URLs (`s3://user:secret@host/…` -> `s3://***@host/…`), as in an
//!   `AWS_ENDPOINT` or a URI given by a user;
//! - the values of signed-URL and token query parameters (`?X-Amz-Security-Token=…`,
//!   `X-Amz-Signature`, `X-Goog-Signature`, Azure SAS `sig`, `token`, …);
//! - the values of the credential variables of the environment (`AWS_SECRET_ACCESS_KEY`,
//!   `AWS_SESSION_TOKEN`, …), and the userinfo of URLs in the environment (`AWS_ENDPOINT`), the
//!   command line and job files ([`remember`]), wherever a library might print them in another
//!   form (hyper's connection pool logs `("http", user:password@host)`).
//!
//! [`LogWriter`] applies it to every log line on stderr.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// What replaces a secret.
pub const MASK: &str = "***";

/// Query parameters whose values are credentials (compared case-insensitively).
const SECRET_PARAMS: [&str; 14] = [
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-credential",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
    "signature",
    "token",
    "access_token",
    "sas",
    "password",
    "secret",
    "api_key",
    "apikey",
];

/// Environment variables holding secrets that object stores read (object_store's `from_env`
/// names).
const SECRET_VARIABLES: [&str; 13] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
];

/// `s` with every credential removed (see the module documentation).
pub fn text(s: &str) -> Cow<'_, str> {
    let secrets = known_secrets();
    if !s.contains("://")
        && !s.contains('=')
        && !secrets.iter().any(|secret| s.contains(secret.as_str()))
    {
        return Cow::Borrowed(s);
    }
    let mut out = userinfo_removed(s);
    out = parameters_removed(&out);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out)
    }
}

/// Ends a parameter's value inside running text.
fn ends_token(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '/' | '?' | '#' | '"' | '\'' | '`' | ')' | '>' | ',' | ';'
        )
}

/// Where the userinfo of a URL whose text after `://` is `after` ends: at the last `@` before the
/// end of the URL (white space or a quote), when what precedes it is userinfo: no `/` in it
/// (the host part), or a `user:password` pair whose password holds a `/` a user did not encode.
/// A password may hold `, ; ) ? #` too, so only white space and quotes end the search.
fn userinfo_end(after: &str) -> Option<usize> {
    let url_end = after
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
        .unwrap_or(after.len());
    let at = after[..url_end].rfind('@')?;
    let userinfo = &after[..at];
    (!userinfo.is_empty() && (!userinfo.contains('/') || userinfo.contains(':'))).then_some(at)
}

/// `scheme://user:password@host` -> `scheme://***@host`, for every URL in `s`.
fn userinfo_removed(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        rest = match userinfo_end(after) {
            Some(end) => {
                out.push_str(MASK);
                &after[end..]
            }
            None => after,
        };
    }
    out.push_str(rest);
    out
}

/// `?name=value` / `&name=value` with a secret `name` -> `?name=***`.
fn parameters_removed(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(['?', '&']) {
        let (before, after) = rest.split_at(at + 1);
        out.push_str(before);
        rest = after;
        let Some(eq) = rest.find('=') else { continue };
        let name = &rest[..eq];
        if name.is_empty() || name.contains(|c: char| ends_token(c) || c == '&') {
            continue;
        }
        if !SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            continue;
        }
        let value = &rest[eq + 1..];
        let end = value
            .find(|c: char| ends_token(c) || c == '&')
            .unwrap_or(value.len());
        out.push_str(name);
        out.push('=');
        out.push_str(MASK);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Secrets shorter than this are not masked as literals: they would mask ordinary words.
const SHORTEST_SECRET: usize = 4;

/// The userinfo (`user:password`) of every URL in `s`, and the password alone.
fn userinfo_in(s: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        rest = &rest[at + 3..];
        if let Some(end) = userinfo_end(rest) {
            let userinfo = &rest[..end];
            found.push(userinfo.to_string());
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_string());
            }
            rest = &rest[end..];
        }
    }
    found.retain(|s| s.len() >= SHORTEST_SECRET);
    found
}

/// Secrets found in the command line and job files, masked wherever they appear.
fn remembered() -> &'static Mutex<Vec<String>> {
    static REMEMBERED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    REMEMBERED.get_or_init(Mutex::default)
}

/// Remembers the URL userinfo in `s` (an argument, a job file) as secrets to mask everywhere.
pub fn remember(s: &str) {
    let found = userinfo_in(s);
    if found.is_empty() {
        return;
    }
    let mut known = remembered().lock().unwrap_or_else(|e| e.into_inner());
    for secret in found {
        if !known.contains(&secret) {
            known.push(secret);
        }
    }
}

/// The values of [`SECRET_VARIABLES`] and the URL userinfo of every variable of the environment
/// (read once), and what [`remember`] was given.
fn known_secrets() -> Vec<String> {
    static ENVIRONMENT: OnceLock<Vec<String>> = OnceLock::new();
    let environment = ENVIRONMENT.get_or_init(|| {
        let mut secrets: Vec<String> = SECRET_VARIABLES
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .filter(|value| value.len() >= 8)
            .collect();
        for (_, value) in std::env::vars_os() {
            secrets.extend(userinfo_in(&value.to_string_lossy()));
        }
        secrets
    });
    let remembered = remembered().lock().unwrap_or_else(|e| e.into_inner());
    let mut all = environment.clone();
    all.extend(remembered.iter().cloned());
    // longest first: a password inside its own userinfo is masked with it
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all
}

/// A `tracing_subscriber` writer for stderr that redacts each log line (see [`text`]). The
/// subscriber makes one writer per event and writes the whole event into it, so a line is
/// redacted as a whole, then written at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::new())
    }
}

/// One log event on its way to stderr.
pub struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().write_all(text(&line).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_from_every_url() {
        assert_eq!(
            text("bad input 'engagement' (s3://AKIA:s3cr3t@bucket/e/): no files"),
            "bad input 'engagement' (s3://***@bucket/e/): no files"
        );
        assert_eq!(
            text("Error after 3 retries: http://user:pw@127.0.0.1:9000/b/x and https://h/y"),
            "Error after 3 retries: http://***@127.0.0.1:9000/b/x and https://h/y"
        );
        assert_eq!(text("s3://bucket/key@v1"), "s3://bucket/key@v1");
        assert_eq!(text("plain text"), "plain text");
        // passwords with sub-delimiters, or a `/` nobody encoded
        assert_eq!(
            text("'s3://AKIA:se,cr;e)t?#@b/x.parquet' failed"),
            "'s3://***@b/x.parquet' failed"
        );
        assert_eq!(
            text("s3://AKIA:wJal/rXUt+nFEMI@bucket/e/ and http://h/a@b"),
            "s3://***@bucket/e/ and http://h/a@b"
        );
    }

    #[test]
    fn remembered_userinfo_is_masked_in_any_form() {
        remember("--output=s3://k3yid:pa55w0rd@bucket/x.parquet");
        assert_eq!(
            text("checkout dropped for (\"http\", k3yid:pa55w0rd@127.0.0.1:9)"),
            "checkout dropped for (\"http\", ***@127.0.0.1:9)"
        );
        assert_eq!(text("password pa55w0rd alone"), "password *** alone");
    }

    #[test]
    fn signed_parameters_lose_their_values() {
        assert_eq!(
            text(
                "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=abc%2Fdef&X-Amz-Date=2026 failed"
            ),
            "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=***&X-Amz-Date=2026 failed"
        );
        assert_eq!(
            text("az://c/x?sv=2022&sig=Zm9v%3D&se=1"),
            "az://c/x?sv=2022&sig=***&se=1"
        );
        assert_eq!(
            text("a=b&token=t0k3n'"),
            "a=b&token=***'",
            "outside a URL too"
        );
        assert_eq!(text("x?size=3&sort=1"), "x?size=3&sort=1");
    }
}
