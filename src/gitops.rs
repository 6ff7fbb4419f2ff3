//! The Git side of DR: `promote` prepares the pull request that flips `spec.primary`, `history`
//! reads the topology file's first-parent log back as the audit trail.
//!
//! The topology file is edited as text, one value on one line: re-serializing YAML would drop
//! comments and reorder keys, and reviewers must see a one-line diff.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{Commit, Delta, DiffFindOptions, ErrorCode, FileMode, ObjectType, Oid, Repository, StatusOptions};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::topology::KIND;
use crate::validate;

/// Where the topology lives in the repository Argo CD watches (see `gitops/`).
pub const DEFAULT_FILE: &str = "topology/drtopology.yaml";
/// Trailer keys `promote` writes and `history` reads.
pub const TRAILER_ACTION: &str = "DR-Action";
pub const TRAILER_FROM: &str = "DR-From";
pub const TRAILER_TO: &str = "DR-To";
pub const TRAILER_REASON: &str = "DR-Reason";

#[derive(Debug, thiserror::Error)]
pub enum GitopsError {
    #[error("cannot open git repository {}: {source}", path.display())]
    Open { path: PathBuf, source: git2::Error },
    #[error("{action}: {source}")]
    Git { action: String, source: git2::Error },
    #[error("{} is not in the repository at HEAD; pass --file with its path inside the repository", file.display())]
    FileMissing { file: PathBuf },
    #[error("{} is outside the repository {}; pass a path inside it", file.display(), repo.display())]
    FileOutside { file: PathBuf, repo: PathBuf },
    #[error("{}: {reason}", file.display())]
    PrimaryLine { file: PathBuf, reason: PrimaryLineError },
    #[error("{} is not a valid DRTopology now, so it cannot be promoted: {details}", file.display())]
    CurrentInvalid { file: PathBuf, details: String },
    #[error("unknown cluster {cluster:?}: {} lists {known}", file.display())]
    UnknownCluster { cluster: String, file: PathBuf, known: String },
    #[error("{cluster} is already the primary in {}; nothing to promote", file.display())]
    AlreadyPrimary { cluster: String, file: PathBuf },
    #[error("the worktree has uncommitted changes ({paths}); commit or stash them first so the pull request holds only the flip")]
    DirtyWorktree { paths: String },
    #[error("the promoted file would not validate, nothing was committed: {details}")]
    ResultInvalid { details: String },
    #[error("branch {0} already exists; pass --branch with another name")]
    BranchExists(String),
    #[error("{0:?} is not a valid branch name")]
    BadBranchName(String),
    #[error("the repository {} has no commits yet; commit the topology file first", path.display())]
    NoCommits { path: PathBuf },
    #[error("{} is a symbolic link to {target:?}, which {why}; point --file at the topology file itself", file.display())]
    Symlink { file: PathBuf, target: String, why: &'static str },
    #[error("--{flag} must be one line: it becomes {what}, and a line break would let it add trailer lines (DR-To, DR-Action) that history trusts; put longer text in the pull request")]
    MultiLine { flag: &'static str, what: &'static str },
    #[error("no remote {remote} in the repository (it has: {known}); --push takes a remote's name, not a URL: add one with `git remote add NAME URL`; nothing was committed")]
    NoRemote { remote: String, known: String },
    #[error("the URL of remote {remote} is not UTF-8; set it with `git remote set-url {remote} URL`")]
    RemoteUrl { remote: String },
    #[error("committed {commit} on branch {branch}, but pushing it to {remote} failed: {message}; push it with `git push {remote} {branch}`")]
    PushFailed { commit: String, branch: String, remote: String, message: String },
}

fn git(action: impl Into<String>) -> impl FnOnce(git2::Error) -> GitopsError {
    let action = action.into();
    move |source| GitopsError::Git { action, source }
}

// ---------------------------------------------------------------------------------------------
// The spec.primary line (pure).

/// Why the `spec.primary` value could not be located for a one-line edit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrimaryLineError {
    #[error("no `primary:` key directly under `spec:`; promote edits that one line")]
    NotFound,
    #[error("`primary:` appears {0} times under `spec:` (several documents?); keep one DRTopology per file")]
    Ambiguous(usize),
    #[error("line {0}: `spec` is written in flow style ({{...}}); write it as a block mapping so one line can change")]
    FlowStyle(usize),
    #[error("line {line}: the spec.primary value is not a plain or quoted cluster name ({why})")]
    Unsupported { line: usize, why: &'static str },
    #[error("line {line} says primary {found:?} but the YAML parses to {parsed:?}; refusing to edit a line that is not the value")]
    Mismatch { line: usize, found: String, parsed: String },
}

/// The byte range of the `spec.primary` value, quotes excluded, so an edit keeps the quote style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryValue {
    pub start: usize,
    pub end: usize,
    /// 1-based line number.
    pub line: usize,
    pub value: String,
}

/// Finds the value of the `primary:` key that is a direct child of the top-level `spec:`.
pub fn find_primary(text: &str) -> Result<PrimaryValue, PrimaryLineError> {
    let mut found = Vec::new();
    let mut in_spec = false;
    let mut child_indent: Option<usize> = None;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        if line == "---" || line.starts_with("--- ") || line == "..." {
            in_spec = false;
            child_indent = None;
            continue;
        }
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent == 0 {
            in_spec = false;
            child_indent = None;
            if let Some(rest) = body.strip_prefix("spec:") {
                let rest = rest.trim_start();
                if rest.starts_with('{') {
                    return Err(PrimaryLineError::FlowStyle(line_no));
                }
                in_spec = rest.is_empty() || rest.starts_with('#');
            }
            continue;
        }
        if !in_spec {
            continue;
        }
        let want = *child_indent.get_or_insert(indent);
        if indent != want {
            continue;
        }
        // A quoted key is the same key to YAML: `"primary": a` and `'primary': a`.
        if let Some(key) = ["primary:", "\"primary\":", "'primary':"].into_iter().find(|k| body.starts_with(k)) {
            let value_at = line_start + indent + key.len();
            found.push(parse_scalar(&body[key.len()..], value_at, line_no)?);
        }
    }
    match found.len() {
        0 => Err(PrimaryLineError::NotFound),
        1 => Ok(found.remove(0)),
        n => Err(PrimaryLineError::Ambiguous(n)),
    }
}

/// Parses `after` (the text following `primary:`) as a plain, single- or double-quoted scalar
/// optionally followed by a comment. `at` is the byte offset of `after` in the file.
fn parse_scalar(after: &str, at: usize, line: usize) -> Result<PrimaryValue, PrimaryLineError> {
    let unsupported = |why| PrimaryLineError::Unsupported { line, why };
    let trimmed = after.trim_start_matches([' ', '\t']);
    if trimmed.len() == after.len() && !after.is_empty() {
        return Err(unsupported("no space after the colon"));
    }
    let lead = after.len() - trimmed.len();
    let (start, end, rest) = match trimmed.chars().next() {
        None | Some('#') => return Err(unsupported("the value is empty")),
        Some(q @ ('"' | '\'')) => {
            let inner = &trimmed[1..];
            let close = inner.find(q).ok_or_else(|| unsupported("the quote is not closed on this line"))?;
            if inner[..close].contains('\\') {
                return Err(unsupported("escapes in the quoted value"));
            }
            (lead + 1, lead + 1 + close, &inner[close + 1..])
        }
        Some('|' | '>' | '&' | '*' | '!' | '[' | '{') => return Err(unsupported("block scalars, anchors, aliases, tags and collections")),
        Some(_) => {
            let comment = [" #", "\t#"].iter().filter_map(|c| trimmed.find(c)).min().unwrap_or(trimmed.len());
            let value = trimmed[..comment].trim_end_matches([' ', '\t']);
            (lead, lead + value.len(), &trimmed[value.len()..])
        }
    };
    let rest = rest.trim_start_matches([' ', '\t']);
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(unsupported("text after the closing quote"));
    }
    let value = after[start..end].to_string();
    if value.is_empty() {
        return Err(unsupported("the value is empty"));
    }
    Ok(PrimaryValue { start: at + start, end: at + end, line, value })
}

/// The topology text with only the `spec.primary` value replaced.
pub fn set_primary(text: &str, at: &PrimaryValue, to: &str) -> String {
    let mut out = String::with_capacity(text.len() + to.len());
    out.push_str(&text[..at.start]);
    out.push_str(to);
    out.push_str(&text[at.end..]);
    out
}

/// `spec.primary` of the first DRTopology document of a YAML text, if it parses that far.
fn parsed_primary(text: &str) -> Option<String> {
    let docs = validate::parse_documents(text).ok()?;
    docs.iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(KIND))
        .and_then(|d| d.pointer("/spec/primary"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn validated_topology(text: &str) -> Result<Option<crate::topology::DRTopology>, String> {
    let reports = validate::validate_text(text).map_err(|e| format!("not valid YAML at {e}"))?;
    if reports.len() != 1 {
        return Err(format!("{} documents; a topology file holds exactly one DRTopology", reports.len()));
    }
    let errors: Vec<String> = reports.iter().flat_map(|r| r.errors.iter().map(|e| e.to_string())).collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(reports.into_iter().next().and_then(|r| r.topology))
}

// ---------------------------------------------------------------------------------------------
// promote

#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub repo: PathBuf,
    /// Path of the topology file inside the repository.
    pub file: PathBuf,
    pub cluster: String,
    pub branch: Option<String>,
    /// Commit subject; default `DR: promote <cluster> to primary`.
    pub message: Option<String>,
    /// The `DR-Reason` trailer; default the subject.
    pub reason: Option<String>,
    /// Remote to push the new branch to.
    pub push: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromoteOutcome {
    pub branch: String,
    pub commit: String,
    /// The branch HEAD was on, the pull request's target.
    pub base: Option<String>,
    pub from: String,
    pub to: String,
    pub pushed_to: Option<String>,
    /// URL of the remote the branch went to, for the pull request link.
    pub remote_url: Option<String>,
    /// The commit message: the pull request's title and body.
    pub message: String,
}

/// Commits the flip of `spec.primary` on a new branch, checks it out, and pushes when asked.
#[tracing::instrument(skip_all, fields(cluster = %req.cluster, repo = %req.repo.display()))]
pub fn promote(req: &PromoteRequest) -> Result<PromoteOutcome, GitopsError> {
    let repo = Repository::open(&req.repo).map_err(|source| GitopsError::Open { path: req.repo.clone(), source })?;
    let file = repo_relative(&repo, &req.file)?;
    if !repo.is_bare() {
        refuse_dirty(&repo)?;
    }
    refuse_multi_line(req)?;
    if let Some(remote) = &req.push {
        // Before the commit: a push that cannot even start must not leave a branch behind.
        find_remote(&repo, remote)?;
    }
    let head = head_of(&repo, &req.repo)?;
    let base = branch_name(&head);
    let parent = head.peel_to_commit().map_err(git("resolve HEAD to a commit"))?;
    let tree = parent.tree().map_err(git("read HEAD's tree"))?;
    let file = follow_symlinks(&repo, &tree, file)?;
    let entry = tree.get_path(&file).map_err(|_| GitopsError::FileMissing { file: file.clone() })?;
    let blob = repo.find_blob(entry.id()).map_err(git(format!("read {}", file.display())))?;
    let text = std::str::from_utf8(blob.content()).map_err(|_| GitopsError::CurrentInvalid { file: file.clone(), details: "not UTF-8".into() })?;

    let current = validated_topology(text)
        .map_err(|details| GitopsError::CurrentInvalid { file: file.clone(), details })?
        .ok_or_else(|| GitopsError::CurrentInvalid { file: file.clone(), details: "not a DRTopology".into() })?;
    let at = find_primary(text).map_err(|reason| GitopsError::PrimaryLine { file: file.clone(), reason })?;
    if at.value != current.spec.primary {
        let reason = PrimaryLineError::Mismatch { line: at.line, found: at.value, parsed: current.spec.primary };
        return Err(GitopsError::PrimaryLine { file, reason });
    }
    let from = at.value.clone();
    let to = req.cluster.clone();
    if current.spec.cluster(&to).is_none() {
        let known = current.spec.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(GitopsError::UnknownCluster { cluster: to, file, known });
    }
    if from == to {
        return Err(GitopsError::AlreadyPrimary { cluster: to, file });
    }

    let new_text = set_primary(text, &at, &to);
    validated_topology(&new_text).map_err(|details| GitopsError::ResultInvalid { details })?;
    if parsed_primary(&new_text).as_deref() != Some(to.as_str()) {
        return Err(GitopsError::ResultInvalid { details: format!("spec.primary does not read back as {to}") });
    }

    let branch = match &req.branch {
        Some(b) => b.clone(),
        None => format!("dr/promote-{to}-{}", Timestamp::now().strftime("%Y%m%d-%H%M%S")),
    };
    if !git2::Branch::name_is_valid(&branch).unwrap_or(false) {
        return Err(GitopsError::BadBranchName(branch));
    }
    if repo.find_branch(&branch, git2::BranchType::Local).is_ok() {
        return Err(GitopsError::BranchExists(branch));
    }

    let blob_id = repo.blob(new_text.as_bytes()).map_err(git("write the new file"))?;
    let mode = if entry.filemode() == i32::from(FileMode::BlobExecutable) { FileMode::BlobExecutable } else { FileMode::Blob };
    let tree_id = git2::build::TreeUpdateBuilder::new()
        .upsert(file.to_string_lossy().as_ref(), blob_id, mode)
        .create_updated(&repo, &tree)
        .map_err(git("build the new tree"))?;
    let new_tree = repo.find_tree(tree_id).map_err(git("read the new tree"))?;
    let sig = repo.signature().map_err(git("find the committer (set git config user.name and user.email)"))?;
    let message = commit_message(req, &from, &to);
    let commit_id = repo.commit(None, &sig, &sig, &message, &new_tree, &[&parent]).map_err(git("commit"))?;
    let commit = repo.find_commit(commit_id).map_err(git("read the new commit"))?;
    repo.branch(&branch, &commit, false).map_err(git(format!("create branch {branch}")))?;
    if !repo.is_bare() {
        let mut co = git2::build::CheckoutBuilder::new();
        co.safe();
        repo.checkout_tree(commit.as_object(), Some(&mut co)).map_err(git(format!("check out {branch}")))?;
        repo.set_head(&format!("refs/heads/{branch}")).map_err(git(format!("switch to {branch}")))?;
    }
    tracing::info!(%branch, commit = %commit_id, %from, %to, "promotion committed");

    let mut outcome = PromoteOutcome { branch, commit: commit_id.to_string(), base, from, to, pushed_to: None, remote_url: None, message };
    if let Some(remote) = &req.push {
        // The branch exists locally whatever happens here; say so rather than just failing.
        outcome.remote_url = push(&repo, remote, &outcome.branch).map_err(|message| GitopsError::PushFailed {
            commit: outcome.commit.clone(),
            branch: outcome.branch.clone(),
            remote: remote.clone(),
            message,
        })?;
        outcome.pushed_to = Some(remote.clone());
    } else if let Ok(r) = repo.find_remote("origin") {
        outcome.remote_url = r.url().ok().map(str::to_string);
    }
    Ok(outcome)
}

/// The branch HEAD is on, None when detached.
fn branch_name(head: &git2::Reference<'_>) -> Option<String> {
    head.shorthand().ok().filter(|_| head.is_branch()).map(str::to_string)
}

/// The branch HEAD of `repo_path` is on (None when detached) and the URL of `remote`: what
/// `--open-pr` checks before anything is committed.
pub fn head_and_remote(repo_path: &Path, remote: &str) -> Result<(Option<String>, String), GitopsError> {
    let repo = Repository::open(repo_path).map_err(|source| GitopsError::Open { path: repo_path.to_path_buf(), source })?;
    let head = head_of(&repo, repo_path)?;
    let r = find_remote(&repo, remote)?;
    let url = r.url().map_err(|_| GitopsError::RemoteUrl { remote: remote.into() })?.to_string();
    Ok((branch_name(&head), url))
}

/// The remote named `name`. A URL given instead is quoted redacted: it may carry credentials.
fn find_remote<'r>(repo: &'r Repository, name: &str) -> Result<git2::Remote<'r>, GitopsError> {
    repo.find_remote(name).map_err(|_| {
        let names = repo.remotes().map(|r| (0..r.len()).filter_map(|i| r.get(i).ok().flatten().map(String::from)).collect::<Vec<_>>()).unwrap_or_default();
        let known = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        GitopsError::NoRemote { remote: crate::urls::redact(name), known }
    })
}

/// A line break in the subject or the reason could end the trailer block and start a forged
/// one; refusing (rather than folding) keeps what the user typed and what history shows equal.
fn refuse_multi_line(req: &PromoteRequest) -> Result<(), GitopsError> {
    let multi = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains(['\n', '\r']));
    if multi(&req.message) {
        return Err(GitopsError::MultiLine { flag: "message", what: "the commit subject" });
    }
    if multi(&req.reason) {
        return Err(GitopsError::MultiLine { flag: "reason", what: "the DR-Reason trailer" });
    }
    Ok(())
}

/// HEAD, or a clear error for a repository without commits (libgit2 says "reference
/// 'refs/heads/main' not found").
fn head_of<'r>(repo: &'r Repository, path: &Path) -> Result<git2::Reference<'r>, GitopsError> {
    match repo.head() {
        Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => Err(GitopsError::NoCommits { path: path.to_path_buf() }),
        other => other.map_err(git("read HEAD")),
    }
}

/// The path a symlinked topology file points to, inside the repository; promote edits the
/// target (the file Argo CD renders), not the link.
fn follow_symlinks(repo: &Repository, tree: &git2::Tree<'_>, file: PathBuf) -> Result<PathBuf, GitopsError> {
    let mut path = file.clone();
    for _ in 0..8 {
        let Ok(entry) = tree.get_path(&path) else { return Ok(path) };
        if entry.filemode() != i32::from(FileMode::Link) {
            return Ok(path);
        }
        let blob = repo.find_blob(entry.id()).map_err(git(format!("read the link {}", path.display())))?;
        let target = String::from_utf8_lossy(blob.content()).into_owned();
        let refuse = |why| GitopsError::Symlink { file: file.clone(), target: target.clone(), why };
        if target.starts_with('/') {
            return Err(refuse("is an absolute path, outside the repository's history"));
        }
        let mut next = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for part in Path::new(&target).components() {
            match part {
                // `..` climbs one level (the pop in the guard); with none left it leaves the repository.
                std::path::Component::ParentDir if !next.pop() => return Err(refuse("leaves the repository")),
                std::path::Component::Normal(p) => next.push(p),
                _ => {}
            }
        }
        path = next;
    }
    Err(GitopsError::Symlink { file: file.clone(), target: path.display().to_string(), why: "is a chain of more than 8 links" })
}

fn commit_message(req: &PromoteRequest, from: &str, to: &str) -> String {
    let subject = req.message.clone().unwrap_or_else(|| format!("DR: promote {to} to primary"));
    let reason = req.reason.clone().unwrap_or_else(|| subject.clone());
    format!("{subject}\n\nspec.primary: {from} -> {to}\n\n{TRAILER_ACTION}: promote\n{TRAILER_FROM}: {from}\n{TRAILER_TO}: {to}\n{TRAILER_REASON}: {reason}\n")
}

/// `file` relative to the repository root; absolute paths must lie inside the worktree.
fn repo_relative(repo: &Repository, file: &Path) -> Result<PathBuf, GitopsError> {
    if file.is_relative() {
        return Ok(file.to_path_buf());
    }
    let outside = || GitopsError::FileOutside { file: file.to_path_buf(), repo: repo.path().to_path_buf() };
    let root = repo.workdir().ok_or_else(outside)?;
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let abs = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    abs.strip_prefix(&root).map(Path::to_path_buf).map_err(|_| outside())
}

fn refuse_dirty(repo: &Repository) -> Result<(), GitopsError> {
    let mut opts = StatusOptions::new();
    opts.include_untracked(false).include_ignored(false);
    let statuses = repo.statuses(Some(&mut opts)).map_err(git("read the worktree status"))?;
    let paths: Vec<String> = statuses.iter().filter(|s| !s.status().is_empty()).map(|s| s.path().unwrap_or("?").to_string()).collect();
    if paths.is_empty() {
        Ok(())
    } else {
        Err(GitopsError::DirtyWorktree { paths: paths.join(", ") })
    }
}

/// Pushes `branch` to `remote`, returning the remote's URL. Credentials as git finds them
/// ([`credentials`]); SSH host keys are checked against `~/.ssh/known_hosts`.
fn push(repo: &Repository, remote: &str, branch: &str) -> Result<Option<String>, String> {
    let named = repo.find_remote(remote).map_err(|e| format!("no remote {remote}: {}", e.message()))?;
    let url = named.url().ok().map(str::to_string);
    let push_url = named.pushurl().ok().flatten().map(str::to_string);
    // libgit2 picks the transport by remote.NAME.pushurl but connects to remote.NAME.url, so a
    // push URL of another kind (a local path under an https url) fails: push to it directly.
    let mut r = match &push_url {
        Some(p) => repo.remote_anonymous(p).map_err(|e| format!("remote {remote}'s pushurl: {}", e.message()))?,
        None => named,
    };
    // libgit2 quotes the URL in some errors; one with credentials must not reach ours.
    let redacted = |msg: &str| [&url, &push_url].into_iter().flatten().fold(msg.to_string(), |m, u| m.replace(u.as_str(), &crate::urls::redact(u)));
    let config = repo.config().map_err(|e| format!("read git config: {}", e.message()))?;
    let mut rejected = None;
    {
        let mut cb = git2::RemoteCallbacks::new();
        cb.credentials(credentials(config, home_dir()));
        cb.push_update_reference(|_refname, status| {
            if let Some(msg) = status {
                rejected = Some(msg.to_string());
            }
            Ok(())
        });
        let mut opts = git2::PushOptions::new();
        opts.remote_callbacks(cb);
        let spec = format!("refs/heads/{branch}:refs/heads/{branch}");
        r.push(&[spec.as_str()], Some(&mut opts)).map_err(|e| redacted(e.message()))?;
    }
    match rejected {
        Some(message) => Err(format!("rejected: {}", redacted(&message))),
        None => Ok(url),
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The key files `ssh` itself tries, in its order.
const SSH_KEY_FILES: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];

/// Credentials in the order git's own tools find them: for SSH the ssh-agent, then the key
/// files in `~/.ssh`; for HTTPS git's credential helpers. libgit2 calls back after each
/// refusal, so each source is offered once and then the push fails naming what was tried.
fn credentials(config: git2::Config, home: Option<PathBuf>) -> impl FnMut(&str, Option<&str>, git2::CredentialType) -> Result<git2::Cred, git2::Error> {
    use git2::{Cred, CredentialType};
    let mut agent_tried = std::env::var_os("SSH_AUTH_SOCK").is_none();
    let mut keys: Vec<PathBuf> = home.map(|h| SSH_KEY_FILES.iter().map(|k| h.join(".ssh").join(k)).filter(|p| p.exists()).collect()).unwrap_or_default();
    keys.reverse();
    let mut helper_tried = false;
    move |url, username, allowed| {
        let user = username.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if !agent_tried {
                agent_tried = true;
                return Cred::ssh_key_from_agent(user);
            }
            if let Some(key) = keys.pop() {
                return Cred::ssh_key(user, None, &key, None);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) && !helper_tried {
            helper_tried = true;
            return Cred::credential_helper(&config, url, username);
        }
        Err(git2::Error::from_str(
            "no credentials left to try (ssh-agent via SSH_AUTH_SOCK, ~/.ssh/id_ed25519, id_ecdsa or id_rsa without a passphrase, a git credential helper for https)",
        ))
    }
}

/// What to do next, for people: push (if not done), then `pull_request` (the line
/// [`crate::forge::pull_request_line`] writes).
pub fn next_steps(o: &PromoteOutcome, pull_request: &str) -> String {
    let mut s = format!("Committed {} on branch {}: spec.primary {} -> {}.\n", &o.commit[..o.commit.len().min(12)], o.branch, o.from, o.to);
    match &o.pushed_to {
        Some(remote) => s.push_str(&format!("Pushed {} to {remote}.\n", o.branch)),
        None => s.push_str(&format!("Push it:   git push origin {}\n", o.branch)),
    }
    s.push_str(pull_request);
    s.push_str("When it merges, Argo CD applies the flip to both globals and the new primary runs the failover.\n");
    s
}

// ---------------------------------------------------------------------------------------------
// history

/// One change of `spec.primary` on the first-parent line: the DR audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// The commit on the first-parent line that changed the primary (a merge for a merged PR).
    pub commit: String,
    /// When it landed: committer time, RFC 3339 UTC.
    pub time: String,
    /// Author of that commit, `Name <email>`.
    pub author: String,
    /// The primary before; None when this commit created the file (or, with `shallow`, when
    /// the commit before it was not fetched).
    pub from: Option<String>,
    /// This is the oldest commit of a shallow clone: what came before is unknown, so it is not
    /// shown as the topology's creation. `git fetch --unshallow` gives the whole trail.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shallow: bool,
    pub to: String,
    /// The `DR-Reason` trailer, else the subject of the commit.
    pub reason: String,
    /// The file's path at that commit (it may have been renamed since).
    pub path: String,
    /// For a merge: the `DR-Action: promote` commit it brought in, and who proposed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposed_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposed_by: Option<String>,
    /// What the clusters recorded of the failover this change started (`history --kubeconfig`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<Completion>,
}

/// A failover record read from a cluster's DRTopology status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Completion {
    /// The cluster whose status holds the record (the new primary).
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Started by a flip made in the cluster (Git or the forge down): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// Its Demote step passed on the operator's override, not the old primary's acknowledgement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demote_overridden: Option<crate::topology::DemoteOverridden>,
}

/// Joins failover records from the clusters' status onto the history. A record names the commit
/// that started it when the controller reads the repo; otherwise it belongs to the newest change
/// to its target (a status holds only the latest failover, so older entries stay unmatched).
pub fn attach_failovers(entries: &mut [HistoryEntry], records: &[crate::topology::FailoverStatus]) {
    for r in records {
        let by_commit = r.commit.as_ref().and_then(|c| entries.iter().position(|e| &e.commit == c));
        let at = by_commit.or_else(|| entries.iter().position(|e| e.to == r.to));
        if let Some(i) = at {
            entries[i].failover = Some(Completion {
                cluster: r.to.clone(),
                started_at: r.started_at.clone(),
                completed_at: r.completed_at.clone(),
                aborted: r.aborted.clone(),
                break_glass: r.break_glass.clone(),
                demote_overridden: r.demote_overridden.clone(),
            });
        }
    }
}

/// Every change of `spec.primary` in `file` on HEAD's first-parent line, newest first.
///
/// A commit whose file does not parse changes nothing: the change is attributed to the commit
/// where a new value first reads back, measured from the last value that did.
#[tracing::instrument(skip_all, fields(repo = %repo_path.display(), file = %file.display()))]
pub fn history(repo_path: &Path, file: &Path) -> Result<Vec<HistoryEntry>, GitopsError> {
    let repo = Repository::open(repo_path).map_err(|source| GitopsError::Open { path: repo_path.to_path_buf(), source })?;
    head_of(&repo, repo_path)?;
    let versions = file_versions(&repo, &repo_relative(&repo, file)?)?;
    let boundary = shallow_boundary(&repo);
    let mut entries = Vec::new();
    let mut last: Option<String> = None;
    let mut last_blob = None;
    for v in versions.iter().rev() {
        if last_blob == Some(v.blob) {
            continue;
        }
        last_blob = Some(v.blob);
        let Some(primary) = primary_of(&repo, v.blob)? else { continue };
        if last.as_deref() != Some(primary.as_str()) {
            let commit = repo.find_commit(v.commit).map_err(git(format!("read commit {}", v.commit)))?;
            let mut e = entry(&repo, &commit, &v.path, last.clone(), primary.clone())?;
            e.shallow = last.is_none() && boundary.contains(&v.commit);
            entries.push(e);
            last = Some(primary);
        }
    }
    entries.reverse();
    Ok(entries)
}

/// The commits whose parents a shallow clone did not fetch (`.git/shallow`); empty otherwise.
fn shallow_boundary(repo: &Repository) -> Vec<Oid> {
    if !repo.is_shallow() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(repo.path().join("shallow")).unwrap_or_default();
    text.lines().filter_map(|l| Oid::from_str(l.trim()).ok()).collect()
}

/// The file as of one commit on the first-parent line.
struct FileVersion {
    commit: Oid,
    path: PathBuf,
    blob: Oid,
}

/// The file at HEAD and at each first-parent ancestor back to where it appeared, newest first,
/// following renames.
fn file_versions(repo: &Repository, file: &Path) -> Result<Vec<FileVersion>, GitopsError> {
    let mut commit = repo.head().and_then(|h| h.peel_to_commit()).map_err(git("resolve HEAD to a commit"))?;
    let mut path = file.to_path_buf();
    let mut blob = blob_at(&commit, &path)?.ok_or_else(|| GitopsError::FileMissing { file: path.clone() })?;
    let mut versions = Vec::new();
    loop {
        versions.push(FileVersion { commit: commit.id(), path: path.clone(), blob });
        let parent = match commit.parent(0) {
            Ok(p) => p,
            Err(e) if e.code() == ErrorCode::NotFound => break,
            Err(e) => return Err(git(format!("read the parent of {}", commit.id()))(e)),
        };
        let older = match blob_at(&parent, &path)? {
            Some(b) => Some((path.clone(), b)),
            None => match renamed_from(repo, &parent, &commit, &path)? {
                Some(old) => blob_at(&parent, &old)?.map(|b| (old, b)),
                None => None,
            },
        };
        let Some((p, b)) = older else { break };
        (commit, path, blob) = (parent, p, b);
    }
    Ok(versions)
}

fn blob_at(commit: &Commit<'_>, path: &Path) -> Result<Option<Oid>, GitopsError> {
    let tree = commit.tree().map_err(git(format!("read the tree of {}", commit.id())))?;
    Ok(tree.get_path(path).ok().filter(|e| e.kind() == Some(ObjectType::Blob)).map(|e| e.id()))
}

/// The path `path` had in `parent` when `child` renamed it.
fn renamed_from(repo: &Repository, parent: &Commit<'_>, child: &Commit<'_>, path: &Path) -> Result<Option<PathBuf>, GitopsError> {
    let action = || format!("diff {}..{}", parent.id(), child.id());
    let (pt, ct) = (parent.tree().map_err(git(action()))?, child.tree().map_err(git(action()))?);
    let mut diff = repo.diff_tree_to_tree(Some(&pt), Some(&ct), None).map_err(git(action()))?;
    diff.find_similar(Some(DiffFindOptions::new().renames(true))).map_err(git(action()))?;
    Ok(diff.deltas().find(|d| d.status() == Delta::Renamed && d.new_file().path() == Some(path)).and_then(|d| d.old_file().path().map(Path::to_path_buf)))
}

fn primary_of(repo: &Repository, blob: Oid) -> Result<Option<String>, GitopsError> {
    let b = repo.find_blob(blob).map_err(git(format!("read blob {blob}")))?;
    Ok(std::str::from_utf8(b.content()).ok().and_then(parsed_primary))
}

fn entry(repo: &Repository, c: &Commit<'_>, path: &Path, from: Option<String>, to: String) -> Result<HistoryEntry, GitopsError> {
    let own = trailers(c.message().unwrap_or(""));
    // A merged pull request: the merge carries no trailers, the promote commit it brought in does.
    let proposal = if own.reason.is_none() && c.parent_count() > 1 { merged_promotion(repo, c, &to)? } else { None };
    let reason = own
        .reason
        .or_else(|| proposal.as_ref().and_then(|p| trailers(p.message().unwrap_or("")).reason))
        .unwrap_or_else(|| c.summary().ok().flatten().unwrap_or("").to_string());
    Ok(HistoryEntry {
        commit: c.id().to_string(),
        time: git_time(c.committer().when()),
        author: Person(&c.author()).to_string(),
        from,
        to,
        reason,
        path: path.to_string_lossy().into_owned(),
        proposed_in: proposal.as_ref().map(|p| p.id().to_string()),
        proposed_by: proposal.as_ref().map(|p| Person(&p.author()).to_string()),
        shallow: false,
        failover: None,
    })
}

/// The newest `DR-Action: promote` commit to `to` among those a merge brought in.
fn merged_promotion<'r>(repo: &'r Repository, merge: &Commit<'r>, to: &str) -> Result<Option<Commit<'r>>, GitopsError> {
    let action = || format!("walk the commits merged by {}", merge.id());
    let mut walk = repo.revwalk().map_err(git(action()))?;
    for p in merge.parent_ids().skip(1) {
        walk.push(p).map_err(git(action()))?;
    }
    walk.hide(merge.parent_id(0).map_err(git(action()))?).map_err(git(action()))?;
    for id in walk {
        let c = repo.find_commit(id.map_err(git(action()))?).map_err(git(action()))?;
        let t = trailers(c.message().unwrap_or(""));
        if t.action.as_deref() == Some("promote") && t.to.as_deref() == Some(to) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

#[derive(Default)]
struct DrTrailers {
    action: Option<String>,
    to: Option<String>,
    reason: Option<String>,
}

fn trailers(message: &str) -> DrTrailers {
    let mut t = DrTrailers::default();
    if let Ok(all) = git2::message_trailers_strs(message) {
        for (k, v) in all.iter() {
            let v = Some(v.trim().to_string());
            match k {
                TRAILER_ACTION => t.action = v,
                TRAILER_TO => t.to = v,
                TRAILER_REASON => t.reason = v,
                _ => {}
            }
        }
    }
    t
}

struct Person<'a>(&'a git2::Signature<'a>);

impl fmt::Display for Person<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <{}>", self.0.name().unwrap_or("?"), self.0.email().unwrap_or("?"))
    }
}

fn git_time(t: git2::Time) -> String {
    Timestamp::from_second(t.seconds()).map(|ts| ts.to_string()).unwrap_or_else(|_| t.seconds().to_string())
}

/// The audit trail as text, one change per line.
pub fn format_history(entries: &[HistoryEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        let from = match (&e.from, e.shallow) {
            (Some(f), _) => f.as_str(),
            (None, true) => "(shallow clone: earlier history not fetched)",
            (None, false) => "(created)",
        };
        s.push_str(&format!("{}  {}  {} -> {}  {}  {}", e.time, &e.commit[..e.commit.len().min(12)], from, e.to, e.author, e.reason));
        if let (Some(c), Some(by)) = (&e.proposed_in, &e.proposed_by) {
            s.push_str(&format!("  (proposed in {} by {by})", &c[..c.len().min(12)]));
        }
        if let Some(f) = &e.failover {
            match (&f.completed_at, &f.aborted) {
                (_, Some(why)) => s.push_str(&format!("  [failover on {} aborted: {why}]", f.cluster)),
                (Some(at), None) => s.push_str(&format!("  [failover done on {} at {at}]", f.cluster)),
                (None, None) => s.push_str(&format!("  [failover on {} in progress]", f.cluster)),
            }
            if let Some(why) = &f.break_glass {
                s.push_str(&format!("  [break-glass: flipped in the cluster, not by this commit: {why}]"));
            }
            if let Some(o) = &f.demote_overridden {
                s.push_str(&format!(
                    "  [Demote overridden at {} by annotation drctl.io/override-demotion={}: caught up to revision {}]",
                    o.accepted_at, o.annotation, o.final_revision
                ));
            }
        }
        s.push('\n');
    }
    if entries.is_empty() {
        s.push_str("spec.primary never changed on this branch's first-parent line\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip(text: &str, to: &str) -> String {
        let at = find_primary(text).expect("find primary");
        set_primary(text, &at, to)
    }

    #[test]
    fn plain_quoted_and_commented_values() {
        let cases = [
            ("spec:\n  primary: a\n", "spec:\n  primary: b\n"),
            ("spec:\n  primary: \"a\"\n", "spec:\n  primary: \"b\"\n"),
            ("spec:\n  primary: 'a'  # why\n", "spec:\n  primary: 'b'  # why\n"),
            ("spec:\n  primary:   a   # flip me\r\n", "spec:\n  primary:   b   # flip me\r\n"),
            ("spec:  # the spec\n    x: 1\n    primary: a\n", "spec:  # the spec\n    x: 1\n    primary: b\n"),
        ];
        for (before, after) in cases {
            assert_eq!(flip(before, "b"), after, "for {before:?}");
        }
    }

    #[test]
    fn only_the_spec_child_is_edited() {
        let text = "metadata:\n  primary: no\nspec:\n  sync:\n    primary: nested\n  primary: yes-this # c\nstatus:\n  primary: no\n";
        assert_eq!(flip(text, "other"), "metadata:\n  primary: no\nspec:\n  sync:\n    primary: nested\n  primary: other # c\nstatus:\n  primary: no\n");
    }

    #[test]
    fn refusals() {
        assert_eq!(find_primary("spec:\n  x: 1\n"), Err(PrimaryLineError::NotFound));
        assert_eq!(find_primary("spec: {primary: a}\n"), Err(PrimaryLineError::FlowStyle(1)));
        assert_eq!(find_primary("spec:\n  primary: a\n---\nspec:\n  primary: a\n"), Err(PrimaryLineError::Ambiguous(2)));
        for bad in ["spec:\n  primary: |\n    a\n", "spec:\n  primary: \"a\n", "spec:\n  primary:\n", "spec:\n  primary: *x\n"] {
            assert!(matches!(find_primary(bad), Err(PrimaryLineError::Unsupported { line: 2, .. })), "{bad:?}");
        }
    }
}
