//! `drctl promote` and `drctl history` on real Git repositories made by the test with the git CLI:
//! a bare remote for `--push`, merge commits from pull request branches, a rename of the file.

use drctl_testsupport as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const TOPOLOGY: &str = include_str!("../gitops/topology/drtopology.yaml");
const FILE: &str = "topology/drtopology.yaml";

/// A repository in a temp dir with `main` checked out and a bare `origin` next to it.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let r = Repo { dir: tempfile::tempdir().expect("tempdir") };
        std::fs::create_dir(r.work()).expect("mkdir work");
        r.git(&["init", "-q", "-b", "main"]);
        r.as_user("Alice", "alice@example.com");
        run(Command::new("git").args(["init", "-q", "--bare"]).arg(r.remote()));
        r.git(&["remote", "add", "origin", r.remote().to_str().expect("utf-8 path")]);
        r
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    fn as_user(&self, name: &str, email: &str) {
        self.git(&["config", "user.name", name]);
        self.git(&["config", "user.email", email]);
    }

    fn git(&self, args: &[&str]) -> String {
        let out = run(Command::new("git").arg("-C").arg(self.work()).args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.work().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write file");
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.work().join(path)).expect("read file")
    }

    fn commit_file(&self, path: &str, text: &str, message: &str) -> String {
        self.write(path, text);
        self.git(&["add", path]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn branches(&self) -> String {
        self.git(&["branch", "--format=%(refname:short)"])
    }

    fn drctl(&self, args: &[&str]) -> Output {
        support::drctl().args(args).arg("--repo").arg(self.work()).output().expect("run drctl")
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn trailer(repo: &Repo, rev: &str, key: &str) -> String {
    repo.git(&["log", "-1", &format!("--format=%(trailers:key={key},valueonly)"), rev])
}

#[test]
fn promote_changes_one_line_commits_trailers_and_pushes() {
    let repo = Repo::new();
    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    repo.git(&["push", "-q", "origin", "main"]);
    let base = repo.git(&["rev-parse", "HEAD"]);

    let out = repo.drctl(&["promote", "global-b", "--reason", "DC1 power maintenance", "--push", "origin"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "promote failed: {stdout}{stderr}");

    // The default branch name carries the cluster and a UTC timestamp, and is checked out.
    let branch = repo.git(&["rev-parse", "--abbrev-ref", "HEAD"]);
    let stamp = branch.strip_prefix("dr/promote-global-b-").unwrap_or_else(|| panic!("branch {branch}"));
    assert_eq!(stamp.len(), "YYYYMMDD-HHMMSS".len(), "{branch}");
    assert!(stamp.chars().all(|c| c.is_ascii_digit() || c == '-') && &stamp[8..9] == "-", "{branch}");
    assert!(stdout.contains(&branch) && stdout.contains("Pushed"), "{stdout}");
    assert!(stdout.contains("pull request from") && stdout.contains("into main"), "{stdout}");

    // Byte for byte: the comment on the line, the annotations, the flow mappings all stay.
    let want = TOPOLOGY
        .replace("  primary: global-a   # the cluster the platform domain points at\n", "  primary: global-b   # the cluster the platform domain points at\n");
    assert_ne!(want, TOPOLOGY);
    assert_eq!(repo.git(&["show", &format!("{branch}:{FILE}")]) + "\n", want);
    assert_eq!(repo.read(FILE), want, "the worktree shows the promoted file");
    assert_eq!(repo.git(&["diff", "--numstat", &base, &branch]), format!("1\t1\t{FILE}"));
    assert_eq!(repo.git(&["rev-parse", &format!("{branch}~1")]), base, "one commit on top of main");

    assert_eq!(trailer(&repo, &branch, "DR-Action"), "promote");
    assert_eq!(trailer(&repo, &branch, "DR-From"), "global-a");
    assert_eq!(trailer(&repo, &branch, "DR-To"), "global-b");
    assert_eq!(trailer(&repo, &branch, "DR-Reason"), "DC1 power maintenance");
    assert_eq!(repo.git(&["log", "-1", "--format=%s", &branch]), "DR: promote global-b to primary");
    assert_eq!(repo.git(&["log", "-1", "--format=%an <%ae>", &branch]), "Alice <alice@example.com>");

    // The bare remote received exactly that commit.
    let pushed = run(Command::new("git").arg("--git-dir").arg(repo.remote()).args(["rev-parse", &format!("refs/heads/{branch}")]));
    assert_eq!(String::from_utf8_lossy(&pushed.stdout).trim(), repo.git(&["rev-parse", "HEAD"]));

    // The PR check accepts the result.
    let v = support::drctl().arg("validate").arg(repo.work().join(FILE)).output().expect("run validate");
    assert!(v.status.success(), "{:?}", text(&v));
}

#[test]
fn promote_keeps_quote_style_and_honours_branch_and_message() {
    let repo = Repo::new();
    let quoted = TOPOLOGY.replace("  primary: global-a   #", "  primary: 'global-a' #");
    repo.commit_file("clusters/dr.yaml", &quoted, "Add the DR topology");
    let out = repo.drctl(&["promote", "global-b", "--file", "clusters/dr.yaml", "--branch", "failover-now", "--message", "Fail over to B"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(repo.read("clusters/dr.yaml"), quoted.replace("'global-a'", "'global-b'"));
    assert_eq!(repo.git(&["log", "-1", "--format=%s", "failover-now"]), "Fail over to B");
    assert_eq!(trailer(&repo, "failover-now", "DR-Reason"), "Fail over to B", "the reason defaults to the subject");
    assert!(text(&out).0.contains("git push origin failover-now"), "not pushed, so it says how: {:?}", text(&out));
}

#[test]
fn promote_refuses_unknown_cluster_already_primary_and_dirty_worktree() {
    let repo = Repo::new();
    let head = repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    repo.commit_file("README.md", "notes\n", "notes");
    let head2 = repo.git(&["rev-parse", "HEAD"]);
    assert_ne!(head, head2);

    let refusals: [(&[&str], &str); 2] = [
        (&["promote", "global-c"], r#"unknown cluster "global-c": topology/drtopology.yaml lists global-a, global-b"#),
        (&["promote", "global-a"], "global-a is already the primary in topology/drtopology.yaml; nothing to promote"),
    ];
    for (args, want) in refusals {
        let out = repo.drctl(args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
        assert!(stderr.contains(want), "{args:?}: expected {want:?} in {stderr}");
    }

    repo.write("README.md", "notes, edited\n");
    let out = repo.drctl(&["promote", "global-b"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("the worktree has uncommitted changes (README.md); commit or stash them first"), "{stderr}");

    // Nothing was created by any refusal.
    assert_eq!(repo.branches(), "main");
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head2);
    assert_eq!(repo.read(FILE), TOPOLOGY);

    // An existing branch name is refused too, before anything is written.
    repo.git(&["checkout", "-q", "--", "README.md"]);
    repo.git(&["branch", "taken"]);
    let out = repo.drctl(&["promote", "global-b", "--branch", "taken"]);
    assert!(text(&out).1.contains("branch taken already exists"), "{:?}", text(&out));
    assert_eq!(repo.git(&["rev-parse", "taken"]), head2);
}

#[test]
fn history_follows_first_parent_merges_and_renames() {
    let repo = Repo::new();
    let c1 = repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    repo.commit_file(FILE, &TOPOLOGY.replace("ttl: 30", "ttl: 60"), "Longer TTL");
    // A commit that breaks the YAML and its fix change no primary.
    repo.commit_file(FILE, &TOPOLOGY.replace("spec:\n", "spec: [\n"), "Oops");
    repo.commit_file(FILE, TOPOLOGY, "Fix the YAML");

    // A pull request by Bob, prepared with drctl promote, merged by Alice with a merge commit.
    repo.as_user("Bob", "bob@example.com");
    let out = repo.drctl(&["promote", "global-b", "--branch", "pr-1", "--reason", "DC1 power maintenance"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let proposal = repo.git(&["rev-parse", "pr-1"]);
    repo.as_user("Alice", "alice@example.com");
    repo.git(&["checkout", "-q", "main"]);
    repo.commit_file("README.md", "meanwhile on main\n", "Docs");
    repo.git(&["merge", "-q", "--no-ff", "pr-1", "-m", "Merge pull request #1 from bob/pr-1"]);
    let merge1 = repo.git(&["rev-parse", "HEAD"]);

    // A flip on a branch that never merges is not history.
    repo.git(&["checkout", "-q", "-b", "abandoned"]);
    let out = repo.drctl(&["promote", "global-a", "--branch", "abandoned-flip"]);
    assert!(out.status.success(), "{:?}", text(&out));
    repo.git(&["checkout", "-q", "main"]);

    // The file moves; later changes are found under the new name.
    std::fs::create_dir(repo.work().join("clusters")).expect("mkdir clusters");
    repo.git(&["mv", FILE, "clusters/dr.yaml"]);
    repo.git(&["commit", "-q", "-m", "Move the topology"]);
    let out = repo.drctl(&["promote", "global-a", "--file", "clusters/dr.yaml", "--branch", "pr-2", "--reason", "back home"]);
    assert!(out.status.success(), "{:?}", text(&out));
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["merge", "-q", "--ff-only", "pr-2"]);
    let back = repo.git(&["rev-parse", "HEAD"]);

    let out = repo.drctl(&["history", "--file", "clusters/dr.yaml", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let mut got: Value = serde_json::from_str(&stdout).expect("history JSON");
    for e in got.as_array_mut().expect("array") {
        let time = e.as_object_mut().expect("object").remove("time").expect("time");
        assert!(time.as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 20), "{time}");
    }
    assert_eq!(
        got,
        json!([
            {"commit": back, "author": "Alice <alice@example.com>", "from": "global-b", "to": "global-a",
             "reason": "back home", "path": "clusters/dr.yaml"},
            {"commit": merge1, "author": "Alice <alice@example.com>", "from": "global-a", "to": "global-b",
             "reason": "DC1 power maintenance", "path": FILE,
             "proposed_in": proposal, "proposed_by": "Bob <bob@example.com>"},
            {"commit": c1, "author": "Alice <alice@example.com>", "from": null, "to": "global-a",
             "reason": "Add the DR topology", "path": FILE},
        ])
    );

    // The library call the controller and `--kubeconfig` build on returns the same entries.
    let entries = drctl::gitops::history(&repo.work(), Path::new("clusters/dr.yaml")).expect("history");
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1].commit, merge1);
    assert_eq!(entries[1].proposed_by.as_deref(), Some("Bob <bob@example.com>"));

    let out = repo.drctl(&["history", "--file", "clusters/dr.yaml"]);
    let lines: Vec<String> = text(&out).0.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains(&format!("{}  global-b -> global-a  Alice <alice@example.com>  back home", &back[..12])), "{lines:?}");
    assert!(lines[1].ends_with(&format!("DC1 power maintenance  (proposed in {} by Bob <bob@example.com>)", &proposal[..12])), "{lines:?}");
    assert!(lines[2].contains("(created) -> global-a"), "{lines:?}");

    // The old path no longer exists at HEAD: a clear error, not an empty trail.
    let out = repo.drctl(&["history"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("topology/drtopology.yaml is not in the repository at HEAD"), "{:?}", text(&out));
}

#[test]
fn failed_push_keeps_the_branch_and_says_how_to_push() {
    let repo = Repo::new();
    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    // `.invalid` never resolves: the push fails at once, after the commit.
    repo.git(&["remote", "add", "forge", "https://git.example.invalid/platform/dr.git"]);
    let out = repo.drctl(&["promote", "global-b", "--branch", "dr/b", "--push", "forge"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    let commit = repo.git(&["rev-parse", "dr/b"]);
    assert!(stderr.contains(&format!("committed {commit} on branch dr/b, but pushing it to forge failed:")), "{stderr}");
    assert!(stderr.contains("push it with `git push forge dr/b`"), "{stderr}");
}

#[test]
fn a_push_to_a_missing_remote_is_refused_before_anything_is_committed() {
    let repo = Repo::new();
    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    // A name that is no remote, and a URL (with credentials) given where a name belongs.
    for remote in ["nosuch", "https://bot:s3cret@gitea.example/o/r.git"] {
        let out = repo.drctl(&["promote", "global-b", "--branch", "dr/b", "--push", remote]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{remote}");
        assert!(stderr.contains("(it has: origin); --push takes a remote's name"), "{stderr}");
        assert!(stderr.contains("nothing was committed"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert_eq!(repo.branches(), "main", "{remote}: no branch left behind");
        assert_eq!(repo.git(&["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    }
}

#[test]
fn push_goes_to_the_remotes_pushurl_and_its_credentials_never_show() {
    let repo = Repo::new();
    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    // A forge URL with credentials to fetch from (and to link the pull request to), a local
    // bare repository to push to: libgit2 alone connected to the url with the local transport.
    repo.git(&["remote", "add", "forge", "https://bot:s3cret@127.0.0.1:1/platform/dr.git"]);
    repo.git(&["config", "remote.forge.pushurl", repo.remote().to_str().expect("utf-8 path")]);
    let out = repo.drctl(&["promote", "global-b", "--branch", "dr/b", "--push", "forge"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Pushed dr/b to forge."), "{stdout}");
    let pushed = run(Command::new("git").arg("--git-dir").arg(repo.remote()).args(["rev-parse", "dr/b"]));
    assert_eq!(String::from_utf8_lossy(&pushed.stdout).trim(), repo.git(&["rev-parse", "dr/b"]));
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"), "{stdout}{stderr}");

    // The pushurl gone, the push goes to the url (nothing listens): the error has no password.
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["config", "--unset", "remote.forge.pushurl"]);
    let out = repo.drctl(&["promote", "global-b", "--branch", "dr/c", "--push", "forge"]);
    let stderr = text(&out).1;
    assert!(!out.status.success());
    assert!(stderr.contains("but pushing it to forge failed"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

/// `--push` over SSH to a real sshd, with the key and known_hosts in `~/.ssh` as git's users keep
/// them; then the same push to a server whose host key is not the one known: refused, nothing sent.
#[test]
fn push_over_ssh_uses_the_users_key_and_checks_the_host_key() {
    let home = support::ssh::Home::new();
    let sshd = support::ssh::Sshd::start(&home.public_key());
    home.trust(sshd.port, &sshd.host_public_key());
    let repo = Repo::new();
    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    let url = format!("ssh://{}@127.0.0.1:{}{}", support::ssh::user(), sshd.port, repo.remote().display());
    repo.git(&["remote", "add", "forge", &url]);
    let drctl = |args: &[&str]| {
        let mut cmd = support::drctl();
        cmd.args(args).arg("--repo").arg(repo.work()).env("HOME", home.dir.path()).env_remove("SSH_AUTH_SOCK");
        cmd.output().expect("run drctl")
    };

    let out = drctl(&["promote", "global-b", "--branch", "dr/b", "--push", "forge"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Pushed dr/b to forge."), "{stdout}");
    let on_remote = run(Command::new("git").arg("--git-dir").arg(repo.remote()).args(["rev-parse", "dr/b"]));
    assert_eq!(String::from_utf8_lossy(&on_remote.stdout).trim(), repo.git(&["rev-parse", "dr/b"]));

    // Another server key under the same name: a man in the middle, as far as the client knows.
    let other = tempfile::tempdir().expect("tempdir");
    support::ssh::keygen(&other.path().join("k"));
    home.trust(sshd.port, &std::fs::read_to_string(other.path().join("k.pub")).expect("read key"));
    repo.git(&["checkout", "-q", "main"]);
    let out = drctl(&["promote", "global-b", "--branch", "dr/b2", "--push", "forge"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("but pushing it to forge failed:") && stderr.to_lowercase().contains("host"), "{stderr}");
    let refs = run(Command::new("git").arg("--git-dir").arg(repo.remote()).args(["branch", "--list", "dr/b2"]));
    assert!(refs.stdout.is_empty(), "nothing reached a server whose host key is unknown");
}

#[test]
fn promote_edits_the_target_of_a_symlinked_topology_file() {
    let repo = Repo::new();
    repo.write("clusters/prod.yaml", TOPOLOGY);
    std::fs::create_dir_all(repo.work().join("topology")).expect("mkdir");
    std::os::unix::fs::symlink("../clusters/prod.yaml", repo.work().join(FILE)).expect("symlink");
    repo.git(&["add", "."]);
    repo.git(&["commit", "-q", "-m", "Topology behind a link"]);

    let out = repo.drctl(&["promote", "global-b", "--branch", "pr"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(repo.git(&["diff", "--name-only", "main", "pr"]), "clusters/prod.yaml", "the target changed, the link did not");
    assert!(repo.read("clusters/prod.yaml").contains("  primary: global-b   #"));
    assert_eq!(std::fs::read_link(repo.work().join(FILE)).expect("still a link"), Path::new("../clusters/prod.yaml"));

    // A link out of the repository is refused with what it points to.
    let repo = Repo::new();
    std::fs::create_dir_all(repo.work().join("topology")).expect("mkdir");
    std::os::unix::fs::symlink("../../elsewhere.yaml", repo.work().join(FILE)).expect("symlink");
    repo.git(&["add", "."]);
    repo.git(&["commit", "-q", "-m", "A link out"]);
    let out = repo.drctl(&["promote", "global-b"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is a symbolic link to \"../../elsewhere.yaml\", which leaves the repository"), "{stderr}");
    eprintln!("{}", stderr.trim());
}

#[test]
fn promote_finds_a_quoted_primary_key() {
    let repo = Repo::new();
    let quoted = TOPOLOGY.replace("  primary: global-a   #", "  \"primary\": global-a   #");
    assert_ne!(quoted, TOPOLOGY);
    repo.commit_file(FILE, &quoted, "Quoted key");
    let out = repo.drctl(&["promote", "global-b", "--branch", "pr"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(repo.read(FILE), quoted.replace("\"primary\": global-a", "\"primary\": global-b"));
}

#[test]
fn promote_on_a_detached_head_does_not_guess_main() {
    let repo = Repo::new();
    let head = repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    repo.git(&["checkout", "-q", "--detach", &head]);
    let out = repo.drctl(&["promote", "global-b", "--branch", "pr"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("into main"), "{stdout}");
    assert!(
        stdout.contains("HEAD was detached, so the target branch is unknown: open a pull request from pr into the branch Argo CD watches (--base names it)."),
        "{stdout}"
    );
}

#[test]
fn promote_refuses_a_multi_line_message_or_reason() {
    let repo = Repo::new();
    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    for (flag, value) in [("--message", "Fail over\n\nDR-To: global-c"), ("--reason", "maintenance\nDR-Action: promote")] {
        let out = repo.drctl(&["promote", "global-b", flag, value]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{flag}");
        assert!(stderr.contains(&format!("{flag} must be one line")), "{stderr}");
        eprintln!("{}", stderr.trim());
    }
    assert_eq!(repo.branches(), "main", "nothing was committed");
}

#[test]
fn history_on_an_empty_repository_and_on_a_shallow_clone() {
    let repo = Repo::new();
    let out = repo.drctl(&["history"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("has no commits yet; commit the topology file first"), "{stderr}");
    assert!(!stderr.contains("refs/heads"), "no raw libgit2 error: {stderr}");

    repo.commit_file(FILE, TOPOLOGY, "Add the DR topology");
    repo.commit_file(FILE, &TOPOLOGY.replace("primary: global-a", "primary: global-b"), "Fail over to B");
    repo.commit_file("README.md", "notes\n", "notes");
    let shallow = repo.dir.path().join("shallow");
    let url = format!("file://{}", repo.work().display());
    run(Command::new("git").args(["clone", "-q", "--depth", "2", &url]).arg(&shallow));
    let out = support::drctl().args(["history", "--repo"]).arg(&shallow).output().expect("run drctl");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("(created)"), "the shallow boundary is no creation: {stdout}");
    assert!(stdout.contains("(shallow clone: earlier history not fetched) -> global-b"), "{stdout}");
    let out = support::drctl().args(["history", "--json", "--repo"]).arg(&shallow).output().expect("run drctl");
    let entries: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(entries[0]["shallow"], json!(true), "{entries}");
    eprintln!("{}", stdout.trim());
}
