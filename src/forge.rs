//! The forge side of `drctl promote`: where to open the pull request, derived from the remote's
//! URL (pure), and opening it through the forge's API (GitHub, GitLab, Gitea).
//!
//! The API token comes from the environment only: a flag would put it in shell history and in
//! every process listing. It travels in a request header marked sensitive and is cut from any
//! text the forge sends back before that text reaches an error.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::{json, Value};

use crate::secret::Secret;

/// Where `--open-pr` reads the API token unless `--token-env` names another variable.
pub const DEFAULT_TOKEN_ENV: &str = "DRCTL_FORGE_TOKEN";

/// The forges whose pull-request URLs and APIs drctl knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    Github,
    Gitlab,
    Gitea,
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forge::Github => "GitHub",
            Forge::Gitlab => "GitLab",
            Forge::Gitea => "Gitea",
        })
    }
}

/// A 404 from the forge: everything the fix needs (boxed: it is the largest error).
#[derive(Debug, thiserror::Error)]
#[error("{forge} at {api} found no repository {path} with branches {head} and {base} that the token in ${var} can see (404 Not Found: {detail}); check the remote's URL (it points at {repo_url}), --forge and --base, and that the token's account can read the repository")]
pub struct RepoNotFound {
    forge: Forge,
    api: String,
    path: String,
    repo_url: String,
    var: String,
    head: String,
    base: String,
    detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("remote {remote} is {why}; a pull request needs a forge remote (https://HOST/OWNER/REPO.git, git@HOST:OWNER/REPO.git or ssh://git@HOST[:PORT]/OWNER/REPO.git)")]
    NotAForge { remote: String, why: &'static str },
    #[error("cannot tell which forge {host} runs from its name; pass --forge github|gitlab|gitea")]
    UnknownForge { host: String },
    #[error("{forge} repositories are OWNER/REPO, but remote {remote} names {path:?}; point the remote at the repository itself")]
    PathShape { forge: Forge, remote: String, path: String },
    #[error("--open-pr needs an API token in ${var} (one allowed to open pull requests); it is read from the environment so it stays out of shell history and process lists")]
    NoToken { var: String },
    #[error("the token in ${var} is not usable as an HTTP header value (a line break or a control character); set it to the token alone")]
    BadToken { var: String },
    #[error("{forge} at {api} rejected the token in ${var} (401 Unauthorized): it is wrong, expired or revoked; create a new token with pull-request write access and set ${var}")]
    Unauthorized { forge: Forge, api: String, var: String },
    #[error("{forge} at {api} refused to open a pull request in {path} with the token in ${var} (403 Forbidden: {detail}); give the token write access to pull requests (GitHub: pull_requests:write; GitLab: api; Gitea: write:repository)")]
    Forbidden { forge: Forge, api: String, path: String, var: String, detail: String },
    #[error("{0}")]
    RepoNotFound(Box<RepoNotFound>),
    #[error("{forge} refused the pull request from {head} into {base} ({status}: {detail}) and no open one from {head} into {base} was found; check that {base} exists on the remote (--base names the target branch)")]
    Rejected { forge: Forge, head: String, base: String, status: u16, detail: String },
    #[error("{forge} answered {status} to {method} {url}, a redirect to {location}, which drctl does not follow (it would send the token on, or turn the POST into a GET); if the repository moved, set the remote to its new URL (`git remote set-url`), else check --forge")]
    Redirected { forge: Forge, method: &'static str, url: String, status: u16, location: String },
    #[error("{forge} answered {status} to {method} {url}: {detail}")]
    Status { forge: Forge, method: &'static str, url: String, status: u16, detail: String },
    #[error("{forge} answered {method} {url} with JSON that has no {field}")]
    Response { forge: Forge, method: &'static str, url: String, field: &'static str },
    #[error("{forge} did not answer {method} {url} within {secs}s (down, overloaded, or a firewall drops the connection); it may still have opened the pull request: look at the repository's pull requests before running again")]
    Timeout { forge: Forge, method: &'static str, url: String, secs: u64 },
    #[error("{method} {url}: {source}")]
    Http { method: &'static str, url: String, source: reqwest::Error },
}

// ---------------------------------------------------------------------------------------------
// The remote's URL (pure).

/// A repository on a forge, from a remote URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRepo {
    /// The web root: `https://HOST[:PORT]`; an `http://` remote keeps its scheme (a forge on
    /// loopback), an SSH remote's port is the SSH server's, not the web's, so it is dropped.
    pub web: String,
    pub host: String,
    /// `OWNER/REPO` (GitLab: `GROUP/SUBGROUP/REPO`), without `.git`.
    pub path: String,
}

/// Parses the URL forms git accepts for a forge: https/http, `ssh://[user@]host[:port]/path`,
/// and scp-like `[user@]host:path`. Credentials in the URL are dropped.
pub fn parse_remote(remote: &str) -> Result<RemoteRepo, ForgeError> {
    let shown = crate::urls::redact(remote);
    let refuse = |why| ForgeError::NotAForge { remote: shown.clone(), why };
    if is_remote_helper(remote) {
        return Err(refuse("a remote helper's address (TRANSPORT::ADDRESS, e.g. ext::), not a forge's"));
    }
    let (web, host, path) = if remote.contains("://") {
        let url = Url::parse(remote).map_err(|_| refuse("not a URL git can use"))?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| refuse("a URL without a host"))?.to_string();
        let web = match url.scheme() {
            "https" | "http" => match url.port() {
                Some(p) => format!("{}://{host}:{p}", url.scheme()),
                None => format!("{}://{host}", url.scheme()),
            },
            "ssh" | "git+ssh" => format!("https://{host}"),
            "file" => return Err(refuse("a local repository")),
            _ => return Err(refuse("neither https nor ssh")),
        };
        // The URL's path is percent-encoded; the API's URLs encode it again, segment by segment.
        let path = percent_decoded(url.path()).ok_or_else(|| refuse("a URL whose path is not UTF-8"))?;
        (web, host, path)
    } else {
        // scp-like: the colon must come before any slash, else it is a local path; an IPv6
        // host is bracketed (`git@[::1]:o/r`), its colons inside the brackets.
        let (authority, path) = match scp_split(remote) {
            Some((a, p)) if !a.is_empty() && !a.contains('/') => (a, p),
            _ => return Err(refuse("a local repository")),
        };
        // Host names are case-insensitive; the URL form lowercases them, so this one does too.
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_ascii_lowercase();
        let web = format!("https://{host}");
        // The web root must itself parse: the API's URLs are built on it.
        if host.is_empty() || Url::parse(&web).is_err() {
            return Err(refuse("not a URL git can use"));
        }
        (web, host, path.to_string())
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/').to_string();
    // `..` or an empty segment would make the link and the API call name another repository.
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 2 || segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(refuse("not a path of the form OWNER/REPO"));
    }
    Ok(RemoteRepo { web, host, path })
}

/// `TRANSPORT::ADDRESS`: git hands it to `git-remote-TRANSPORT` (ext:: runs a command).
fn is_remote_helper(remote: &str) -> bool {
    remote.split_once("::").is_some_and(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.')))
}

/// An scp-like remote split at the colon after the host: `[user@]host:path` or
/// `[user@][v6addr]:path`.
fn scp_split(remote: &str) -> Option<(&str, &str)> {
    let host_at = remote.find('@').map_or(0, |i| i + 1);
    if remote[host_at..].starts_with('[') {
        let close = host_at + remote[host_at..].find("]:")?;
        return Some((&remote[..=close], &remote[close + 2..]));
    }
    remote.split_once(':')
}

/// `%XX` sequences decoded; None when the result is not UTF-8 or a `%` is not followed by two
/// hex digits.
fn percent_decoded(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The forge a host runs, from its name: github.com (and github.* Enterprise hosts), hosts
/// named gitlab, hosts named gitea and codeberg.org (Forgejo speaks Gitea's API).
pub fn forge_of_host(host: &str) -> Option<Forge> {
    let h = host.to_ascii_lowercase();
    if h == "github.com" || h.starts_with("github.") {
        Some(Forge::Github)
    } else if h.contains("gitlab") {
        Some(Forge::Gitlab)
    } else if h.contains("gitea") || h == "codeberg.org" {
        Some(Forge::Gitea)
    } else {
        None
    }
}

/// A remote resolved to a forge: what the pull-request URL and the API calls are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub forge: Forge,
    pub repo: RemoteRepo,
}

/// The remote's forge: `explicit` (`--forge`) when given, else from the host's name. GitHub
/// and Gitea repositories are exactly OWNER/REPO; GitLab allows subgroups.
pub fn target(remote: &str, explicit: Option<Forge>) -> Result<Target, ForgeError> {
    let repo = parse_remote(remote)?;
    let forge = explicit.or_else(|| forge_of_host(&repo.host)).ok_or_else(|| ForgeError::UnknownForge { host: repo.host.clone() })?;
    if forge != Forge::Gitlab && repo.path.split('/').count() != 2 {
        return Err(ForgeError::PathShape { forge, remote: crate::urls::redact(remote), path: repo.path });
    }
    Ok(Target { forge, repo })
}

/// A branch name as one part of a URL's path or query value: every byte but unreserved
/// characters and `/` percent-encoded (`#`, `?`, `&` would end or split it; `"`, `<`, `>`,
/// spaces end a link in a terminal).
fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(char::from(b)),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Target {
    /// The page that opens a pull request from `branch` into `base`, prefilled.
    pub fn compare_url(&self, base: &str, branch: &str) -> String {
        let (web, path, base, branch) = (&self.repo.web, url_part(&self.repo.path), url_part(base), url_part(branch));
        match self.forge {
            Forge::Github => format!("{web}/{path}/compare/{base}...{branch}?expand=1"),
            Forge::Gitlab => format!("{web}/{path}/-/merge_requests/new?merge_request[source_branch]={branch}&merge_request[target_branch]={base}"),
            Forge::Gitea => format!("{web}/{path}/compare/{base}...{branch}"),
        }
    }

    /// The REST API's root: api.github.com for github.com, `/api/v3` on GitHub Enterprise.
    pub fn api_root(&self) -> String {
        match self.forge {
            Forge::Github if self.repo.host.eq_ignore_ascii_case("github.com") => "https://api.github.com".into(),
            Forge::Github => format!("{}/api/v3", self.repo.web),
            Forge::Gitlab => format!("{}/api/v4", self.repo.web),
            Forge::Gitea => format!("{}/api/v1", self.repo.web),
        }
    }

    /// `api_root` plus path segments, each percent-encoded as one segment (GitLab's project id
    /// is the whole `GROUP/REPO` in one segment).
    fn api_url(&self, segments: &[&str]) -> Url {
        // parse_remote checked that the web root parses, and api_root only appends to it.
        let mut url = Url::parse(&self.api_root()).expect("the web root parses");
        url.path_segments_mut().expect("an http(s) URL has path segments").pop_if_empty().extend(segments);
        url
    }

    fn repo_segments(&self) -> Vec<&str> {
        match self.forge {
            Forge::Gitlab => vec!["projects", self.repo.path.as_str()],
            Forge::Github | Forge::Gitea => {
                let mut s = vec!["repos"];
                s.extend(self.repo.path.split('/'));
                s
            }
        }
    }

    /// POST: create the pull (merge) request.
    pub fn create_call(&self, pr: &PullRequest) -> (Url, Value) {
        let mut segments = self.repo_segments();
        let url = match self.forge {
            Forge::Gitlab => {
                segments.push("merge_requests");
                self.api_url(&segments)
            }
            Forge::Github | Forge::Gitea => {
                segments.push("pulls");
                self.api_url(&segments)
            }
        };
        let body = match self.forge {
            Forge::Gitlab => json!({
                "source_branch": pr.head, "target_branch": pr.base, "title": pr.title, "description": pr.body,
            }),
            Forge::Github | Forge::Gitea => json!({ "head": pr.head, "base": pr.base, "title": pr.title, "body": pr.body }),
        };
        (url, body)
    }

    /// GET: the open pull request from `pr.head` into `pr.base`, after a create said one exists.
    pub fn find_call(&self, pr: &PullRequest) -> Url {
        let mut segments = self.repo_segments();
        match self.forge {
            Forge::Github => {
                segments.push("pulls");
                let mut url = self.api_url(&segments);
                let owner = self.repo.path.split('/').next().unwrap_or_default();
                url.query_pairs_mut().append_pair("head", &format!("{owner}:{}", pr.head)).append_pair("base", &pr.base).append_pair("state", "open");
                url
            }
            Forge::Gitlab => {
                segments.push("merge_requests");
                let mut url = self.api_url(&segments);
                url.query_pairs_mut().append_pair("source_branch", &pr.head).append_pair("target_branch", &pr.base).append_pair("state", "opened");
                url
            }
            // GET /repos/O/R/pulls/{base}/{head...}: the head may hold slashes, the base is one segment.
            Forge::Gitea => {
                segments.extend(["pulls", pr.base.as_str()]);
                segments.extend(pr.head.split('/'));
                self.api_url(&segments)
            }
        }
    }

    /// The header each forge reads a personal access token from.
    fn auth_header(&self, token: &str) -> Option<(HeaderName, HeaderValue)> {
        let (name, value) = match self.forge {
            Forge::Github => (AUTHORIZATION, format!("Bearer {token}")),
            Forge::Gitlab => (HeaderName::from_static("private-token"), token.to_string()),
            Forge::Gitea => (AUTHORIZATION, format!("token {token}")),
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        // Sensitive values print as `Sensitive` in any Debug output of the request.
        value.set_sensitive(true);
        Some((name, value))
    }
}

/// What the pull request says and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
}

impl PullRequest {
    /// Title and body from a commit message: the subject line, and the rest after the blank
    /// line (spec.primary's change and the DR trailers, so reviewers see what history records).
    pub fn from_commit(head: &str, base: &str, message: &str) -> PullRequest {
        let (title, body) = message.split_once('\n').unwrap_or((message, ""));
        PullRequest { head: head.into(), base: base.into(), title: title.trim().into(), body: body.trim().into() }
    }
}

/// An opened (or already open) pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenedPr {
    pub url: String,
    /// GitHub's and Gitea's `number`, GitLab's `iid`: what people call it by.
    pub number: Option<u64>,
    /// False when it was already open and this is the existing one.
    pub created: bool,
}

/// The pull request in a create's answer or in a lookup's (a list on GitHub and GitLab), its
/// URL with the token cut out should the forge put it there (it is printed).
fn opened_from(forge: Forge, answer: &Value, created: bool, token: &str) -> Option<OpenedPr> {
    let pr = match answer {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let (url, number) = match forge {
        Forge::Gitlab => ("web_url", "iid"),
        Forge::Github | Forge::Gitea => ("html_url", "number"),
    };
    let url = pr.get(url)?.as_str()?;
    let url = if token.is_empty() { url.to_string() } else { url.replace(token, "***") };
    Some(OpenedPr { url, number: pr.get(number).and_then(Value::as_u64), created })
}

/// What a create's status means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateAnswer {
    Created,
    BadToken,
    NoPermission,
    NoRepo,
    /// 409 (Gitea, GitLab) or 422 (GitHub, and Gitea for "no changes"): maybe one is open.
    MaybeExists,
    Redirect,
    Other,
}

fn classify(status: StatusCode) -> CreateAnswer {
    match status.as_u16() {
        200 | 201 => CreateAnswer::Created,
        401 => CreateAnswer::BadToken,
        403 => CreateAnswer::NoPermission,
        404 => CreateAnswer::NoRepo,
        409 | 422 => CreateAnswer::MaybeExists,
        300..=399 => CreateAnswer::Redirect,
        _ => CreateAnswer::Other,
    }
}

/// The forge's own words from an error answer (its `message`, GitLab's may be a list), at most
/// 300 characters, with the token cut out should the forge ever echo it.
fn detail(text: &str, token: &str) -> String {
    let said = match serde_json::from_str::<Value>(text) {
        Ok(v) => match v.get("message").or_else(|| v.get("error")) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => v.to_string(),
        },
        // A login page, a proxy's or another server's error page: its markup says nothing.
        Err(_) if text.trim_start().starts_with('<') => {
            "an HTML page, not the API's JSON (a proxy or a login page in the way, or not this forge: check --forge)".into()
        }
        Err(_) => text.trim().to_string(),
    };
    let said = if token.is_empty() { said } else { said.replace(token, "***") };
    let cut: String = said.chars().take(300).collect();
    if cut.is_empty() {
        "no message".into()
    } else {
        cut
    }
}

/// `--open-pr` failed after the branch was pushed: the error, and the page that opens the pull
/// request by hand.
#[derive(Debug, thiserror::Error)]
#[error("{source}. {branch} is pushed, so the pull request can also be opened by hand: {by_hand}")]
pub struct NotOpened {
    pub branch: String,
    pub by_hand: String,
    pub source: ForgeError,
}

/// The pull request line of `drctl promote`'s next steps: the one `--open-pr` opened, else the
/// page that opens it, else (no forge link) what to open.
pub fn pull_request_line(branch: &str, base: Option<&str>, target: Option<&Result<Target, ForgeError>>, opened: Option<&OpenedPr>) -> String {
    let Some(base) = base else {
        // Without a branch the pull request's target is unknown; guessing "main" could be wrong.
        return format!(
            "HEAD was detached, so the target branch is unknown: open a pull request from {branch} into the branch Argo CD watches (--base names it).\n"
        );
    };
    let number = |o: &OpenedPr| o.number.map(|n| format!(" #{n}")).unwrap_or_default();
    match (opened, target) {
        (Some(o), _) if o.created => format!("Opened pull request{} from {branch} into {base}: {}\n", number(o), o.url),
        (Some(o), _) => format!("Pull request{} from {branch} into {base} was already open and now has this commit: {}\n", number(o), o.url),
        (None, Some(Ok(t))) => format!("Open the pull request into {base}: {}\n", t.compare_url(base, branch)),
        (None, Some(Err(ForgeError::UnknownForge { .. }))) => {
            format!("Open a pull request from {branch} into {base} (pass --forge github|gitlab|gitea for its link).\n")
        }
        (None, _) => format!("Open a pull request from {branch} into {base}.\n"),
    }
}

// ---------------------------------------------------------------------------------------------
// The API (executor).

/// The token from `$var`, or why not.
pub fn token_from_env(var: &str) -> Result<Secret, ForgeError> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Ok(Secret::new(v.into_encoded_bytes())),
        _ => Err(ForgeError::NoToken { var: var.into() }),
    }
}

/// Opens the pull request; when the forge says one from the same head into the same base is
/// already open, returns that one instead (`created: false`).
#[tracing::instrument(skip_all, fields(forge = %target.forge, repo = %target.repo.path, head = %pr.head, base = %pr.base))]
pub async fn open_pull_request(target: &Target, token: &Secret, token_var: &str, pr: &PullRequest) -> Result<OpenedPr, ForgeError> {
    let forge = target.forge;
    let bad_token = || ForgeError::BadToken { var: token_var.into() };
    let token = token.expose_trimmed_str().ok_or_else(bad_token)?;
    let auth = target.auth_header(token).ok_or_else(bad_token)?;
    let (url, body) = target.create_call(pr);
    let shown = url.to_string();
    let http = |method, url: &str| {
        let url = url.to_string();
        move |source: reqwest::Error| {
            if source.is_timeout() {
                ForgeError::Timeout { forge, method, url, secs: crate::dns::HTTP_TIMEOUT.as_secs() }
            } else {
                ForgeError::Http { method, url, source: source.without_url() }
            }
        }
    };
    // A redirect is not followed: reqwest drops only Authorization on another host, not GitLab's
    // PRIVATE-TOKEN, and a 301/302 turns the POST into a GET.
    let client = crate::dns::http_client_builder().redirect(reqwest::redirect::Policy::none()).build().map_err(http("POST", &shown))?;
    let request = |req: reqwest::RequestBuilder| {
        req.header(auth.0.clone(), auth.1.clone()).header(ACCEPT, "application/json").header(USER_AGENT, concat!("drctl/", env!("CARGO_PKG_VERSION")))
    };

    let resp = request(client.post(url).json(&body)).send().await.map_err(http("POST", &shown))?;
    let status = resp.status();
    let location = resp.headers().get(reqwest::header::LOCATION).map(|l| crate::urls::redact(&String::from_utf8_lossy(l.as_bytes())));
    let text = resp.text().await.map_err(http("POST", &shown))?;
    let api = target.api_root();
    match classify(status) {
        CreateAnswer::Created => {
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            opened_from(forge, &answer, true, token).ok_or(ForgeError::Response { forge, method: "POST", url: shown, field: "URL" })
        }
        CreateAnswer::BadToken => Err(ForgeError::Unauthorized { forge, api, var: token_var.into() }),
        CreateAnswer::NoPermission => {
            Err(ForgeError::Forbidden { forge, api, path: target.repo.path.clone(), var: token_var.into(), detail: detail(&text, token) })
        }
        CreateAnswer::NoRepo => Err(ForgeError::RepoNotFound(Box::new(RepoNotFound {
            forge,
            api,
            path: target.repo.path.clone(),
            repo_url: format!("{}/{}", target.repo.web, target.repo.path),
            var: token_var.into(),
            head: pr.head.clone(),
            base: pr.base.clone(),
            detail: detail(&text, token),
        }))),
        CreateAnswer::MaybeExists => {
            let find = target.find_call(pr);
            let find_shown = find.to_string();
            let resp = request(client.get(find)).send().await.map_err(http("GET", &find_shown))?;
            let found = if resp.status().is_success() {
                let answer: Value = resp.json().await.map_err(http("GET", &find_shown))?;
                opened_from(forge, &answer, false, token)
            } else {
                None
            };
            found.ok_or_else(|| ForgeError::Rejected {
                forge,
                head: pr.head.clone(),
                base: pr.base.clone(),
                status: status.as_u16(),
                detail: detail(&text, token),
            })
        }
        CreateAnswer::Redirect => Err(ForgeError::Redirected {
            forge,
            method: "POST",
            url: shown,
            status: status.as_u16(),
            location: location.map(|l| l.replace(token, "***")).unwrap_or_else(|| "nowhere (no Location)".into()),
        }),
        CreateAnswer::Other => Err(ForgeError::Status { forge, method: "POST", url: shown, status: status.as_u16(), detail: detail(&text, token) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_of_every_form_name_host_web_root_and_path() {
        let cases = [
            ("git@github.com:acme/dr.git", "https://github.com", "github.com", "acme/dr"),
            ("git@github.com:acme/dr", "https://github.com", "github.com", "acme/dr"),
            ("ssh://git@gitea.example:2222/ops/dr.git", "https://gitea.example", "gitea.example", "ops/dr"),
            ("ssh://gitlab.example/g/sub/dr.git", "https://gitlab.example", "gitlab.example", "g/sub/dr"),
            ("https://github.com/acme/dr.git", "https://github.com", "github.com", "acme/dr"),
            ("https://github.com/acme/dr/", "https://github.com", "github.com", "acme/dr"),
            ("https://bot:s3cret@gitlab.example/g/dr.git", "https://gitlab.example", "gitlab.example", "g/dr"),
            ("http://127.0.0.1:3000/drctl/dr.git", "http://127.0.0.1:3000", "127.0.0.1", "drctl/dr"),
            ("https://git.corp:8443/ops/dr.git", "https://git.corp:8443", "git.corp", "ops/dr"),
            // IPv6 hosts, bracketed in both forms.
            ("http://[::1]:3000/ops/dr.git", "http://[::1]:3000", "[::1]", "ops/dr"),
            ("git@[::1]:ops/dr.git", "https://[::1]", "[::1]", "ops/dr"),
            ("[fd00::7]:ops/dr", "https://[fd00::7]", "[fd00::7]", "ops/dr"),
            // Host names are case-insensitive: both forms lowercase them.
            ("git@GitHub.COM:Acme/DR.git", "https://github.com", "github.com", "Acme/DR"),
            ("https://GitHub.COM/Acme/DR.git", "https://github.com", "github.com", "Acme/DR"),
            // The query and fragment are not the repository; default ports drop.
            ("https://gitea.example:443/o/r.git?ref=x#top", "https://gitea.example", "gitea.example", "o/r"),
            // A URL's path is percent-decoded once (the API's URLs encode it again).
            ("https://gitea.example/%C3%B6ps/dr", "https://gitea.example", "gitea.example", "öps/dr"),
            ("https://gitea.example/öps/dr.git", "https://gitea.example", "gitea.example", "öps/dr"),
        ];
        for (remote, web, host, path) in cases {
            let want = RemoteRepo { web: web.into(), host: host.into(), path: path.into() };
            assert_eq!(parse_remote(remote).expect(remote), want, "for {remote}");
        }
    }

    #[test]
    fn local_and_pathless_remotes_are_not_forges() {
        for remote in [
            "/tmp/remote.git",
            "../remote.git",
            "file:///srv/dr.git",
            "./a:b/c",
            "https://github.com/acme",
            "git@host:dr.git",
            "ftp://h/o/r",
            "git@ho st:o/r",
            // Remote helpers: ext:: would run a command, and "ext" is no host.
            "ext::sh -c touch% /tmp/x o/r",
            "ext::x/y",
            "fd::3/o/r",
            // `..`, `.` and empty segments would name another repository than the remote does.
            "git@github.com:../r",
            "git@gitea.example:o/./r",
            "git@gitea.example:o//r",
            "https://gitea.example/o/%2e%2e",
        ] {
            assert!(matches!(parse_remote(remote), Err(ForgeError::NotAForge { .. })), "{remote}");
        }
    }

    #[test]
    fn credentials_in_a_remote_never_reach_the_error() {
        let e = parse_remote("https://bot:s3cret@host.example/only").expect_err("one segment");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn the_host_names_the_forge_and_an_explicit_forge_wins() {
        let cases = [
            ("git@github.com:a/r.git", None, Some(Forge::Github)),
            ("https://github.corp.example/a/r", None, Some(Forge::Github)),
            ("https://gitlab.example/g/r", None, Some(Forge::Gitlab)),
            ("https://gitea.example/o/r", None, Some(Forge::Gitea)),
            ("https://codeberg.org/o/r", None, Some(Forge::Gitea)),
            ("https://git.corp/o/r", None, None),
            ("https://git.corp/o/r", Some(Forge::Gitlab), Some(Forge::Gitlab)),
            ("https://gitlab.example/o/r", Some(Forge::Gitea), Some(Forge::Gitea)),
        ];
        for (remote, explicit, want) in cases {
            let got = target(remote, explicit);
            match want {
                Some(f) => assert_eq!(got.expect(remote).forge, f, "{remote}"),
                None => assert!(matches!(got, Err(ForgeError::UnknownForge { .. })), "{remote}"),
            }
        }
    }

    #[test]
    fn github_and_gitea_repositories_are_owner_slash_repo_gitlab_allows_subgroups() {
        assert!(matches!(target("https://github.com/a/b/c", None), Err(ForgeError::PathShape { .. })));
        assert!(matches!(target("https://gitea.example/a/b/c", None), Err(ForgeError::PathShape { .. })));
        assert_eq!(target("https://gitlab.example/a/b/c", None).expect("subgroup").repo.path, "a/b/c");
    }

    #[test]
    fn compare_urls_per_forge() {
        let cases = [
            ("git@github.com:acme/dr.git", None, "https://github.com/acme/dr/compare/main...dr/promote-b?expand=1"),
            (
                "ssh://git@gitlab.example:2222/grp/dr.git",
                None,
                "https://gitlab.example/grp/dr/-/merge_requests/new?merge_request[source_branch]=dr/promote-b&merge_request[target_branch]=main",
            ),
            ("https://gitea.example/ops/dr.git", None, "https://gitea.example/ops/dr/compare/main...dr/promote-b"),
            ("http://127.0.0.1:3000/drctl/dr.git", Some(Forge::Gitea), "http://127.0.0.1:3000/drctl/dr/compare/main...dr/promote-b"),
        ];
        for (remote, forge, want) in cases {
            assert_eq!(target(remote, forge).expect(remote).compare_url("main", "dr/promote-b"), want);
        }
    }

    #[test]
    fn branch_characters_that_would_split_a_url_are_encoded() {
        let t = target("https://gitea.example/o/r", None).expect("gitea");
        assert_eq!(t.compare_url("main", "dr/a#1&b"), "https://gitea.example/o/r/compare/main...dr/a%231%26b");
        // Valid in a branch name, and each would end a link in a terminal or a browser.
        assert_eq!(t.compare_url("main", "dr/\"<>`{}|'!$"), "https://gitea.example/o/r/compare/main...dr/%22%3C%3E%60%7B%7D%7C%27%21%24");
        assert_eq!(t.compare_url("main", "dr/ö"), "https://gitea.example/o/r/compare/main...dr/%C3%B6");
        let unicode = target("https://gitea.example/öps/dr", None).expect("gitea");
        assert_eq!(unicode.compare_url("main", "b"), "https://gitea.example/%C3%B6ps/dr/compare/main...b");
        assert_eq!(unicode.create_call(&pr()).0.as_str(), "https://gitea.example/api/v1/repos/%C3%B6ps/dr/pulls", "encoded once");
    }

    fn pr() -> PullRequest {
        PullRequest::from_commit("dr/promote-b", "main", "DR: promote b to primary\n\nspec.primary: a -> b\n\nDR-Action: promote\n")
    }

    #[test]
    fn title_and_body_come_from_the_commit() {
        let p = pr();
        assert_eq!(p.title, "DR: promote b to primary");
        assert_eq!(p.body, "spec.primary: a -> b\n\nDR-Action: promote");
        assert_eq!(PullRequest::from_commit("h", "m", "subject only").body, "");
    }

    #[test]
    fn api_calls_per_forge() {
        let cases = [
            (
                "git@github.com:acme/dr.git",
                "https://api.github.com/repos/acme/dr/pulls",
                "https://api.github.com/repos/acme/dr/pulls?head=acme%3Adr%2Fpromote-b&base=main&state=open",
            ),
            (
                "https://github.corp.example/acme/dr",
                "https://github.corp.example/api/v3/repos/acme/dr/pulls",
                "https://github.corp.example/api/v3/repos/acme/dr/pulls?head=acme%3Adr%2Fpromote-b&base=main&state=open",
            ),
            (
                "git@gitlab.example:grp/sub/dr.git",
                "https://gitlab.example/api/v4/projects/grp%2Fsub%2Fdr/merge_requests",
                "https://gitlab.example/api/v4/projects/grp%2Fsub%2Fdr/merge_requests?source_branch=dr%2Fpromote-b&target_branch=main&state=opened",
            ),
            (
                "http://127.0.0.1:3000/ops/dr.git",
                "http://127.0.0.1:3000/api/v1/repos/ops/dr/pulls",
                "http://127.0.0.1:3000/api/v1/repos/ops/dr/pulls/main/dr/promote-b",
            ),
        ];
        for (remote, create, find) in cases {
            let forge = if remote.contains("127.0.0.1") { Some(Forge::Gitea) } else { None };
            let t = target(remote, forge).expect(remote);
            assert_eq!(t.create_call(&pr()).0.as_str(), create, "{remote}");
            assert_eq!(t.find_call(&pr()).as_str(), find, "{remote}");
        }
    }

    #[test]
    fn create_bodies_use_each_forges_field_names() {
        let gh = target("git@github.com:a/r.git", None).expect("github").create_call(&pr()).1;
        assert_eq!(gh, json!({"head": "dr/promote-b", "base": "main", "title": "DR: promote b to primary", "body": pr().body}));
        let gl = target("git@gitlab.example:a/r.git", None).expect("gitlab").create_call(&pr()).1;
        assert_eq!(gl, json!({"source_branch": "dr/promote-b", "target_branch": "main", "title": "DR: promote b to primary", "description": pr().body}));
    }

    #[test]
    fn each_forge_reads_the_token_from_its_own_header() {
        let header = |remote| {
            let (name, value) = target(remote, None).expect(remote).auth_header("T0K").expect("header");
            assert!(value.is_sensitive());
            (name.to_string(), value.to_str().expect("ascii").to_string())
        };
        assert_eq!(header("git@github.com:a/r.git"), ("authorization".into(), "Bearer T0K".into()));
        assert_eq!(header("git@gitlab.example:a/r.git"), ("private-token".into(), "T0K".into()));
        assert_eq!(header("git@gitea.example:a/r.git"), ("authorization".into(), "token T0K".into()));
        assert!(target("git@gitea.example:a/r.git", None).expect("gitea").auth_header("a\nb").is_none());
    }

    #[test]
    fn status_codes_name_what_failed() {
        let cases = [
            (201, CreateAnswer::Created),
            (401, CreateAnswer::BadToken),
            (403, CreateAnswer::NoPermission),
            (404, CreateAnswer::NoRepo),
            (409, CreateAnswer::MaybeExists),
            (422, CreateAnswer::MaybeExists),
            (301, CreateAnswer::Redirect),
            (307, CreateAnswer::Redirect),
            (500, CreateAnswer::Other),
        ];
        for (code, want) in cases {
            assert_eq!(classify(StatusCode::from_u16(code).expect("status")), want, "{code}");
        }
    }

    #[test]
    fn created_and_found_pull_requests_are_read_per_forge() {
        let gh = json!({"html_url": "https://github.com/a/r/pull/7", "number": 7});
        assert_eq!(
            opened_from(Forge::Github, &gh, true, "T0K"),
            Some(OpenedPr { url: "https://github.com/a/r/pull/7".into(), number: Some(7), created: true })
        );
        let gl = json!([{"web_url": "https://gitlab.example/a/r/-/merge_requests/3", "iid": 3, "id": 991}]);
        assert_eq!(
            opened_from(Forge::Gitlab, &gl, false, "T0K").map(|p| (p.url, p.number)),
            Some(("https://gitlab.example/a/r/-/merge_requests/3".into(), Some(3)))
        );
        assert_eq!(opened_from(Forge::Github, &json!([]), false, "T0K"), None);
        let echoed = json!({"html_url": "https://gitea.example/o/r/pulls/1?t=T0K", "number": 1});
        assert_eq!(
            opened_from(Forge::Gitea, &echoed, true, "T0K").map(|p| p.url),
            Some("https://gitea.example/o/r/pulls/1?t=***".into()),
            "the URL is printed"
        );
    }

    #[test]
    fn the_pull_request_line_prefers_the_opened_one_then_the_link() {
        let gitea = Ok(target("https://gitea.example/o/r", None).expect("gitea"));
        let unknown = target("https://git.corp/o/r", None);
        let local = target("/srv/r.git", None);
        let made = OpenedPr { url: "https://gitea.example/o/r/pulls/4".into(), number: Some(4), created: true };
        let open = OpenedPr { created: false, ..made.clone() };
        type Case<'a> = (Option<&'a str>, Option<&'a Result<Target, ForgeError>>, Option<&'a OpenedPr>, &'a str);
        let cases: [Case; 6] = [
            (Some("main"), Some(&gitea), Some(&made), "Opened pull request #4 from b into main: https://gitea.example/o/r/pulls/4\n"),
            (
                Some("main"),
                Some(&gitea),
                Some(&open),
                "Pull request #4 from b into main was already open and now has this commit: https://gitea.example/o/r/pulls/4\n",
            ),
            (Some("main"), Some(&gitea), None, "Open the pull request into main: https://gitea.example/o/r/compare/main...b\n"),
            (Some("main"), Some(&unknown), None, "Open a pull request from b into main (pass --forge github|gitlab|gitea for its link).\n"),
            (Some("main"), Some(&local), None, "Open a pull request from b into main.\n"),
            (
                None,
                Some(&gitea),
                None,
                "HEAD was detached, so the target branch is unknown: open a pull request from b into the branch Argo CD watches (--base names it).\n",
            ),
        ];
        for (base, t, opened, want) in cases {
            assert_eq!(pull_request_line("b", base, t, opened), want);
        }
    }

    #[test]
    fn forge_messages_are_short_and_never_carry_the_token() {
        assert_eq!(detail(r#"{"message":"pull request already exists"}"#, "T0K"), "pull request already exists");
        assert_eq!(detail(r#"{"message":["Another open merge request"]}"#, "T0K"), r#"["Another open merge request"]"#);
        assert_eq!(detail("bad token T0K here", "T0K"), "bad token *** here");
        assert_eq!(detail(&"x".repeat(1000), "T0K").len(), 300);
        assert_eq!(detail("", "T0K"), "no message");
        assert!(detail("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "T0K").starts_with("an HTML page, not the API's JSON"));
    }
}
