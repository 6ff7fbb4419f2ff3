//! `drctl promote --push --open-pr` against a real Gitea on loopback (built from its Go module by
//! hack/build-gitea.sh, SQLite, no install wizard): the pull request is opened through Gitea's
//! API with the right head and base and a diff that flips spec.primary, an open one is found
//! again, and a missing or rejected token is named, never shown.

use drctl_testsupport as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use drctl_testbed::procs::{self, Lifetime};
use serde_json::{json, Value};

const TOPOLOGY: &str = include_str!("../gitops/topology/drtopology.yaml");
const FILE: &str = "topology/drtopology.yaml";
const USER: &str = "drctl";
const REPO: &str = "dr";

/// A Gitea with one admin user, its API token, and an empty repository `drctl/dr`.
struct Gitea {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Gitea {
    async fn start() -> Gitea {
        let bin = procs::gitea_bin().unwrap_or_else(|e| panic!("gitea: {e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let port = support::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let ini = dir.path().join("app.ini");
        std::fs::write(&ini, app_ini(dir.path(), &bin, port)).expect("write app.ini");
        let mut web = gitea(&bin, &ini, dir.path());
        web.arg("web");
        let log = dir.path().join("gitea.log");
        let mut child = procs::spawn(web, &log, Lifetime::WithParent).unwrap_or_else(|e| panic!("{e}"));
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !procs::http_get(&addr, "/api/v1/version").is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200")) {
            procs::check_running(&mut child, "gitea", &log).unwrap_or_else(|e| panic!("{e}"));
            assert!(Instant::now() < deadline, "gitea not ready in 90 s: {}", procs::tail(&log));
            std::thread::sleep(Duration::from_millis(200));
        }
        // The web server has migrated the database; the admin commands write to it directly.
        let admin = |args: &[&str]| {
            let out = gitea(&bin, &ini, dir.path()).arg("admin").arg("user").args(args).output().expect("run gitea admin");
            assert!(out.status.success(), "gitea admin user {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        admin(&["create", "--username", USER, "--password", "drctl-test-pass-1", "--email", "drctl@example.com", "--admin", "--must-change-password=false"]);
        let token = admin(&["generate-access-token", "--username", USER, "--token-name", "drctl-test", "--scopes", "all", "--raw"]);
        let token = token.lines().last().unwrap_or_default().to_string();
        assert_eq!(token.len(), 40, "a Gitea token is 40 hex characters: {token:?}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let g = Gitea { child, dir, url, token, http };
        let (status, repo) = g.api(reqwest::Method::POST, "/user/repos", Some(json!({"name": REPO, "default_branch": "main"}))).await;
        assert_eq!(status, 201, "create repository: {repo}");
        g
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.api_text(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn api_text(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}/api/v1{path}", self.url)).header("Authorization", format!("token {}", self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("gitea API");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("gitea API body"))
    }

    fn remote(&self) -> String {
        format!("{}/{USER}/{REPO}.git", self.url)
    }

    /// A clone with the topology committed on main, pushed, and a git credential store that
    /// gives git and drctl's libgit2 push the user's token (as an operator's helper would).
    async fn gitops_repo(&self) -> PathBuf {
        let work = self.dir.path().join("work");
        std::fs::create_dir_all(work.join("topology")).expect("mkdir");
        let creds = self.dir.path().join("git-credentials");
        let authority = self.url.trim_start_matches("http://");
        std::fs::write(&creds, format!("http://{USER}:{}@{authority}\n", self.token)).expect("write credentials");
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["config", "user.name", "Alice"]);
        git(&work, &["config", "user.email", "alice@example.com"]);
        git(&work, &["config", "credential.helper", &format!("store --file={}", creds.display())]);
        git(&work, &["remote", "add", "origin", &self.remote()]);
        std::fs::write(work.join(FILE), TOPOLOGY).expect("write topology");
        git(&work, &["add", FILE]);
        git(&work, &["commit", "-q", "-m", "Add the DR topology"]);
        git(&work, &["push", "-q", "origin", "main"]);
        // Gitea marks a new repository non-empty in the background after its first push; until
        // then its API has no branches to open a pull request into.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, repo) = self.api(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}"), None).await;
            let (status, _) = self.api(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}/branches/main"), None).await;
            if repo["empty"] == json!(false) && status == 200 {
                return work;
            }
            assert!(Instant::now() < deadline, "Gitea still shows {USER}/{REPO} empty after the push of main: {repo}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pull requests of drctl/dr, open and closed.
    async fn pulls(&self) -> Vec<Value> {
        let (status, v) = self.api(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}/pulls?state=all"), None).await;
        assert_eq!(status, 200, "list pulls: {v}");
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Gitea {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gitea(bin: &Path, ini: &Path, work: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(ini).arg("--work-path").arg(work);
    cmd
}

/// Loopback only, SQLite, the install wizard locked, and everything a pull request does not
/// need switched off. Tests run as root (CI does), which Gitea refuses unless told.
fn app_ini(dir: &Path, bin: &Path, port: u16) -> String {
    let user = String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id -un").stdout).trim().to_string();
    let d = dir.display();
    let static_root = bin.parent().expect("gitea's directory").display();
    format!(
        "APP_NAME = drctl test forge\nRUN_MODE = prod\nRUN_USER = {user}\nWORK_PATH = {d}\nI_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true\n\n\
         [server]\nPROTOCOL = http\nHTTP_ADDR = 127.0.0.1\nHTTP_PORT = {port}\nROOT_URL = http://127.0.0.1:{port}/\n\
         DISABLE_SSH = true\nSTART_SSH_SERVER = false\nSTATIC_ROOT_PATH = {static_root}\nAPP_DATA_PATH = {d}/data\n\
         OFFLINE_MODE = true\nLFS_START_SERVER = false\n\n\
         [database]\nDB_TYPE = sqlite3\nPATH = {d}/data/gitea.db\n\n\
         [repository]\nROOT = {d}/repos\n\n\
         [security]\nINSTALL_LOCK = true\n\n\
         [service]\nDISABLE_REGISTRATION = true\n\n\
         [indexer]\nREPO_INDEXER_ENABLED = false\n\n\
         [cron]\nENABLED = false\n\n[mailer]\nENABLED = false\n\n[actions]\nENABLED = false\n\n\
         [log]\nMODE = console\nLEVEL = Warn\n"
    )
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn drctl(work: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = support::drctl();
    cmd.arg("promote").args(args).arg("--repo").arg(work).env_remove("DRCTL_FORGE_TOKEN");
    if let Some(t) = token {
        cmd.env("DRCTL_FORGE_TOKEN", t);
    }
    cmd.output().expect("run drctl")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The lines a diff removes and adds (not its file headers).
fn changed_lines(diff: &str) -> (Vec<&str>, Vec<&str>) {
    let removed = diff.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).collect();
    let added = diff.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).collect();
    (removed, added)
}

#[tokio::test]
async fn open_pr_creates_the_pull_request_on_gitea_and_finds_it_when_already_open() {
    let g = Gitea::start().await;
    let work = g.gitops_repo().await;

    let out = drctl(&work, Some(&g.token), &["global-b", "--reason", "DC1 power maintenance", "--push", "origin", "--forge", "gitea", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "promote --open-pr failed: {stdout}{stderr}");
    let branch = git(&work, &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert!(branch.starts_with("dr/promote-global-b-"), "{branch}");
    let pr_url = format!("{}/{USER}/{REPO}/pulls/1", g.url);
    assert!(stdout.contains(&format!("Opened pull request #1 from {branch} into main: {pr_url}\n")), "{stdout}");
    assert!(!stdout.contains(&g.token) && !stderr.contains(&g.token), "the token never shows");

    // What Gitea holds: head and base, the commit's subject and body, one line flipped.
    let (status, pr) = g.api(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}/pulls/1"), None).await;
    assert_eq!(status, 200, "{pr}");
    assert_eq!(pr["head"]["ref"], json!(branch));
    assert_eq!(pr["base"]["ref"], json!("main"));
    assert_eq!(pr["head"]["sha"], json!(git(&work, &["rev-parse", "HEAD"])));
    assert_eq!(pr["state"], json!("open"));
    assert_eq!(pr["title"], json!("DR: promote global-b to primary"));
    let body = pr["body"].as_str().unwrap_or_default();
    assert!(body.starts_with("spec.primary: global-a -> global-b") && body.contains("DR-To: global-b"), "{body}");
    assert!(body.contains("DR-Reason: DC1 power maintenance"), "{body}");
    assert_eq!(pr["html_url"], json!(pr_url));
    let (status, diff) = g.api_text(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}/pulls/1.diff"), None).await;
    assert_eq!(status, 200, "{diff}");
    assert!(diff.contains(&format!("+++ b/{FILE}")), "{diff}");
    assert_eq!(
        changed_lines(&diff),
        (
            vec!["-  primary: global-a   # the cluster the platform domain points at"],
            vec!["+  primary: global-b   # the cluster the platform domain points at"]
        ),
        "{diff}"
    );

    // Another promotion pushed onto the same branch: Gitea answers 409, drctl finds PR #1.
    git(&work, &["checkout", "-q", "--detach", &branch]);
    git(&work, &["branch", "-q", "-D", &branch]);
    let out = drctl(&work, Some(&g.token), &["global-a", "--branch", &branch, "--base", "main", "--push", "origin", "--forge", "gitea", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "second promote failed: {stdout}{stderr}");
    assert!(stdout.contains(&format!("Pull request #1 from {branch} into main was already open and now has this commit: {pr_url}\n")), "{stdout}");
    let pulls = g.pulls().await;
    assert_eq!(pulls.len(), 1, "no second pull request: {pulls:?}");
    let new_head = git(&work, &["rev-parse", "HEAD"]);
    // Gitea moves the pull request's head on the push in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, pr) = g.api(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}/pulls/1"), None).await;
        if pr["head"]["sha"] == json!(new_head) {
            break;
        }
        assert!(Instant::now() < deadline, "PR #1's head stayed {} after the push of {new_head}", pr["head"]["sha"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn token_errors_name_the_variable_and_the_fix_never_the_value() {
    let g = Gitea::start().await;
    let work = g.gitops_repo().await;

    // No token: refused before anything is committed.
    let out = drctl(&work, None, &["global-b", "--push", "origin", "--forge", "gitea", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("--open-pr needs an API token in $DRCTL_FORGE_TOKEN"), "{stderr}");
    assert_eq!(git(&work, &["branch", "--format=%(refname:short)"]), "main", "nothing committed");

    // A host drctl cannot place without --forge: refused before anything is committed.
    let out = drctl(&work, Some(&g.token), &["global-b", "--push", "origin", "--open-pr"]);
    let stderr = text(&out).1;
    assert!(stderr.contains("cannot tell which forge 127.0.0.1 runs from its name; pass --forge github|gitlab|gitea"), "{stderr}");
    assert_eq!(git(&work, &["branch", "--format=%(refname:short)"]), "main", "nothing committed");

    // A wrong token: the push (git's own credentials) succeeds, Gitea answers 401.
    let wrong = "0123456789abcdef0123456789abcdef01234567";
    let out = drctl(&work, Some(wrong), &["global-b", "--branch", "dr/b", "--push", "origin", "--forge", "gitea", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains(&format!("Gitea at {}/api/v1 rejected the token in $DRCTL_FORGE_TOKEN (401 Unauthorized)", g.url)), "{stderr}");
    assert!(stderr.contains("create a new token with pull-request write access"), "{stderr}");
    assert!(
        stderr.contains(&format!("dr/b is pushed, so the pull request can also be opened by hand: {}/{USER}/{REPO}/compare/main...dr/b", g.url)),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong) && !stdout.contains(wrong), "the token never shows: {stderr}");
    let (status, branch) = g.api(reqwest::Method::GET, &format!("/repos/{USER}/{REPO}/branches/dr%2Fb"), None).await;
    assert_eq!(status, 200, "the branch was pushed: {branch}");
    assert!(g.pulls().await.is_empty(), "no pull request was opened");

    // A --base the remote does not have: the error names --base; the branch is pushed.
    git(&work, &["checkout", "-q", "main"]);
    let out = drctl(&work, Some(&g.token), &["global-b", "--branch", "dr/c", "--base", "no-such-base", "--push", "origin", "--forge", "gitea", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("no-such-base") && stderr.contains("--base"), "{stderr}");
    assert!(stderr.contains("dr/c is pushed, so the pull request can also be opened by hand"), "{stderr}");
    assert!(!stderr.contains(&g.token), "{stderr}");
}

/// A loopback HTTP server that answers every request with `response` and keeps each request's
/// head (request line and headers), for a forge that misbehaves in ways Gitea does not.
struct Canned {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Canned {
    fn start(response: String) -> Canned {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        // Detached: it dies with the test process; each connection gets one answer.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let (mut head, mut length) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                seen.lock().expect("lock").push(head);
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Canned { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

fn http_response(status: &str, headers: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// A repository whose origin's URL is the canned forge's and whose pushes go to a local bare
/// repository (remote.origin.pushurl), so `--push origin` succeeds without a forge's git server.
fn repo_for(dir: &Path, forge_url: &str) -> PathBuf {
    let (work, bare) = (dir.join("work"), dir.join("pushed.git"));
    std::fs::create_dir_all(work.join("topology")).expect("mkdir");
    git(dir, &["init", "-q", "--bare", "pushed.git"]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["config", "user.name", "Alice"]);
    git(&work, &["config", "user.email", "alice@example.com"]);
    git(&work, &["remote", "add", "origin", &format!("{forge_url}/{USER}/{REPO}.git")]);
    git(&work, &["config", "remote.origin.pushurl", bare.to_str().expect("utf-8 path")]);
    std::fs::write(work.join(FILE), TOPOLOGY).expect("write topology");
    git(&work, &["add", FILE]);
    git(&work, &["commit", "-q", "-m", "Add the DR topology"]);
    work
}

const TOKEN: &str = "glpat-0123456789abcdefSECRET";

#[test]
fn a_redirecting_forge_is_not_followed_so_the_token_stays_with_the_remotes_host() {
    let elsewhere = Canned::start(http_response("201 Created", "", r#"{"web_url": "http://x/1", "iid": 1}"#));
    let forge = Canned::start(http_response("307 Temporary Redirect", &format!("Location: {}/api/v4/steal\r\n", elsewhere.url), ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let work = repo_for(dir.path(), &forge.url);
    let out = drctl(&work, Some(TOKEN), &["global-b", "--branch", "dr/b", "--push", "origin", "--forge", "gitlab", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "answered 307 to POST {}/api/v4/projects/{USER}%2F{REPO}/merge_requests, a redirect to {}/api/v4/steal, which drctl does not follow",
            forge.url, elsewhere.url
        )),
        "{stderr}"
    );
    assert!(stderr.contains("dr/b is pushed, so the pull request can also be opened by hand"), "{stderr}");
    assert_eq!(forge.requests().len(), 1);
    assert!(forge.requests()[0].to_ascii_lowercase().contains(&format!("private-token: {}", TOKEN.to_ascii_lowercase())), "the forge got the token");
    assert_eq!(elsewhere.requests(), Vec::<String>::new(), "the redirect's target got nothing");
    assert!(!stderr.contains(TOKEN) && !stdout.contains(TOKEN));
}

#[test]
fn a_forge_that_echoes_the_token_or_answers_html_never_shows_it() {
    let cases = [
        // Created, with the token in the link it returns (printed on stdout).
        (
            http_response("201 Created", "", &format!(r#"{{"html_url": "http://forge/drctl/dr/pulls/3?token={TOKEN}", "number": 3}}"#)),
            true,
            "Opened pull request #3 from dr/b into main: http://forge/drctl/dr/pulls/3?token=***",
        ),
        // An error naming the token.
        (http_response("500 Internal Server Error", "", &format!(r#"{{"message": "token {TOKEN} broke us"}}"#)), false, "answered 500 to POST"),
        // A proxy's HTML page, the token in it.
        (
            http_response("502 Bad Gateway", "Content-Type: text/html\r\n", &format!("<html><body>bad gateway for {TOKEN}</body></html>")),
            false,
            "an HTML page, not the API's JSON",
        ),
        // Created, but not JSON.
        (http_response("201 Created", "", "garbage"), false, "with JSON that has no URL"),
    ];
    for (response, ok, want) in cases {
        let forge = Canned::start(response);
        let dir = tempfile::tempdir().expect("tempdir");
        let work = repo_for(dir.path(), &forge.url);
        // Every log line too: trace is where an HTTP client would print headers.
        let out = support::drctl()
            .args(["promote", "global-b", "--branch", "dr/b", "--push", "origin", "--forge", "gitea", "--open-pr", "--repo"])
            .arg(&work)
            .env("DRCTL_FORGE_TOKEN", TOKEN)
            .env("DRCTL_LOG", "trace")
            .output()
            .expect("run drctl");
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.success(), ok, "{want}: {stdout}{stderr}");
        assert!(stdout.contains(want) || stderr.contains(want), "{want}: {stdout}{stderr}");
        assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN), "the token shows: {stdout}{stderr}");
        assert!(stderr.contains("TRACE"), "trace logs were on: {stderr}");
    }
}

#[test]
fn a_forge_that_never_answers_is_given_up_on_and_may_have_opened_it() {
    // Accepted by the kernel's backlog and never read: the request waits for drctl's timeout.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let forge_url = format!("http://{}", stalled.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("tempdir");
    let work = repo_for(dir.path(), &forge_url);
    let out = drctl(&work, Some(TOKEN), &["global-b", "--branch", "dr/b", "--push", "origin", "--forge", "gitea", "--open-pr"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains(&format!("Gitea did not answer POST {forge_url}/api/v1/repos/{USER}/{REPO}/pulls within 15s")), "{stderr}");
    assert!(stderr.contains("it may still have opened the pull request"), "{stderr}");
    assert!(stderr.contains("dr/b is pushed, so the pull request can also be opened by hand"), "{stderr}");
    drop(stalled);
}
