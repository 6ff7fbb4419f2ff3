//! The lab's Git repository: the `gitops/` layout a platform team keeps, with the lab's real
//! topology, and a `main` branch that pull requests merge into.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository, RepositoryInitOptions};

use super::{git_err, io_err, LabError};

pub const MAIN: &str = "main";
const AUTHOR: (&str, &str) = ("drctl lab", "lab@drctl.invalid");

/// The `gitops/` layout to copy: in the work tree drctl runs in, else the one it was built from.
pub fn layout_source() -> Result<PathBuf, LabError> {
    drctl_testbed::tree_candidates(Path::new("gitops"))
        .into_iter()
        .find(|p| p.join("topology").is_dir())
        .ok_or_else(|| LabError::Failed("no gitops/ layout here: run drctl lab from the drctl source tree".into()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(to).map_err(io_err(format!("create {}", to.display())))?;
    for entry in std::fs::read_dir(from).map_err(io_err(format!("read {}", from.display())))? {
        let entry = entry.map_err(io_err(format!("read {}", from.display())))?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io_err(format!("stat {}", entry.path().display())))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).map_err(io_err(format!("copy {}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// A new repository at `dir` on branch `main`: the layout, `file` replaced by `topology`, one commit.
pub fn create(dir: &Path, layout: &Path, file: &Path, topology: &str) -> Result<Oid, LabError> {
    copy_dir(layout, dir)?;
    std::fs::write(dir.join(file), topology).map_err(io_err(format!("write {}", file.display())))?;
    let mut opts = RepositoryInitOptions::new();
    opts.initial_head(MAIN);
    let repo = Repository::init_opts(dir, &opts).map_err(git_err(format!("git init {}", dir.display())))?;
    let mut cfg = repo.config().map_err(git_err("open the repository config"))?;
    cfg.set_str("user.name", AUTHOR.0).map_err(git_err("set user.name"))?;
    cfg.set_str("user.email", AUTHOR.1).map_err(git_err("set user.email"))?;
    let mut index = repo.index().map_err(git_err("open the index"))?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).map_err(git_err("git add"))?;
    index.write().map_err(git_err("write the index"))?;
    let tree = repo.find_tree(index.write_tree().map_err(git_err("write the tree"))?).map_err(git_err("read the tree"))?;
    let sig = repo.signature().map_err(git_err("committer"))?;
    repo.commit(Some("HEAD"), &sig, &sig, "DR topology for the drctl lab\n\nThe gitops/ layout with the lab's endpoints.\n", &tree, &[])
        .map_err(git_err("initial commit"))
}

/// `main`'s commit and its copy of `file`.
pub fn read_main(repo: &Repository, file: &Path) -> Result<(Oid, String), LabError> {
    let commit = repo.find_reference(&format!("refs/heads/{MAIN}")).and_then(|r| r.peel_to_commit()).map_err(git_err(format!("resolve {MAIN}")))?;
    let entry = commit.tree().and_then(|t| t.get_path(file)).map_err(git_err(format!("find {} on {MAIN}", file.display())))?;
    let blob = repo.find_blob(entry.id()).map_err(git_err(format!("read {}", file.display())))?;
    let text = String::from_utf8(blob.content().to_vec()).map_err(|_| LabError::Failed(format!("{} on {MAIN} is not UTF-8", file.display())))?;
    Ok((commit.id(), text))
}

/// Merges `branch` into `main` as a pull request does: a merge commit (never a fast-forward),
/// first parent the old `main`. Leaves `main` checked out.
pub fn merge_pull_request(dir: &Path, branch: &str, number: usize) -> Result<Oid, LabError> {
    let repo = Repository::open(dir).map_err(git_err(format!("open {}", dir.display())))?;
    let main = repo.find_branch(MAIN, git2::BranchType::Local).and_then(|b| b.get().peel_to_commit()).map_err(git_err(format!("resolve {MAIN}")))?;
    let head = repo.find_branch(branch, git2::BranchType::Local).and_then(|b| b.get().peel_to_commit()).map_err(git_err(format!("resolve {branch}")))?;
    let mut index = repo.merge_commits(&main, &head, None).map_err(git_err(format!("merge {branch} into {MAIN}")))?;
    if index.has_conflicts() {
        return Err(LabError::Failed(format!("{branch} conflicts with {MAIN}")));
    }
    let tree_id = index.write_tree_to(&repo).map_err(git_err("write the merged tree"))?;
    let tree = repo.find_tree(tree_id).map_err(git_err("read the merged tree"))?;
    let sig = repo.signature().map_err(git_err("committer"))?;
    let message = format!("Merge pull request #{number} from {branch}\n\n{}\n", head.summary().ok().flatten().unwrap_or_default());
    let merged = repo
        .commit(Some(&format!("refs/heads/{MAIN}")), &sig, &sig, &message, &tree, &[&main, &head])
        .map_err(git_err(format!("commit the merge into {MAIN}")))?;
    repo.set_head(&format!("refs/heads/{MAIN}")).map_err(git_err(format!("switch to {MAIN}")))?;
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).map_err(git_err(format!("check out {MAIN}")))?;
    Ok(merged)
}

/// How many merges `main` has: the next pull request's number is one more.
pub fn merges_on_main(dir: &Path) -> Result<usize, LabError> {
    let repo = Repository::open(dir).map_err(git_err(format!("open {}", dir.display())))?;
    let mut walk = repo.revwalk().map_err(git_err("walk history"))?;
    walk.push_ref(&format!("refs/heads/{MAIN}")).map_err(git_err(format!("walk {MAIN}")))?;
    walk.simplify_first_parent().map_err(git_err("walk first parents"))?;
    let mut n = 0;
    for id in walk {
        let id = id.map_err(git_err("walk history"))?;
        if repo.find_commit(id).map_err(git_err("read a commit"))?.parent_count() > 1 {
            n += 1;
        }
    }
    Ok(n)
}
