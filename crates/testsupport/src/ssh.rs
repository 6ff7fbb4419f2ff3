//! OpenSSH's sshd on a free loopback port with a host key and one authorized user key made for
//! the test: a Git forge reached the way production reaches one (`ssh://`, `git-receive-pack`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A user's `~/.ssh` for the client side: `id_ed25519` and a `known_hosts` naming the server.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    // Not `Default`: it makes a directory and a key pair.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Home {
        let home = Home { dir: tempfile::tempdir().expect("tempdir") };
        std::fs::create_dir(home.ssh()).expect("mkdir .ssh");
        keygen(&home.ssh().join("id_ed25519"));
        home
    }

    pub fn ssh(&self) -> PathBuf {
        self.dir.path().join(".ssh")
    }

    pub fn public_key(&self) -> String {
        std::fs::read_to_string(self.ssh().join("id_ed25519.pub")).expect("read public key")
    }

    /// Trusts `host_key` (an OpenSSH public key line) for the server at `port`.
    pub fn trust(&self, port: u16, host_key: &str) {
        let key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(self.ssh().join("known_hosts"), format!("[127.0.0.1]:{port} {key}\n")).expect("write known_hosts");
    }
}

/// A new ed25519 key pair without a passphrase at `path` and `path.pub`.
pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "drctl-test", "-f"]).arg(path).output().expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd accepting `authorized_key` for the current user.
    pub fn start(authorized_key: &str) -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(&dir.path().join("host_key"));
        std::fs::write(dir.path().join("authorized_keys"), authorized_key).expect("write authorized_keys");
        // Run as root, sshd wants its privilege-separation directory (the package's service makes it).
        if unsafe { libc::geteuid() } == 0 {
            std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        }
        let (child, port) = super::on_fresh_ports("sshd", || {
            let port = super::free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n",
                    d = dir.path().display()
                ),
            )
            .expect("write sshd_config");
            let log = dir.path().join("sshd.log");
            let mut cmd = Command::new(sshd_bin());
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            let mut child = super::spawn(cmd, &log);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port to someone else, or a bad config: the log says which
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok((child, port));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            super::kill(&mut child);
            Err(format!("sshd on port {port}: {}", super::tail(&log)))
        });
        Sshd { child, port, dir }
    }

    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("read host key")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        super::kill(&mut self.child);
    }
}

/// sshd must be started by its absolute path.
fn sshd_bin() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("sshd not found: install openssh-server (make deps does)"))
}

/// The user sshd authenticates us as.
pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
