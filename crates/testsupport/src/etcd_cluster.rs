//! A global's etcd as production runs it: three members with client-certificate auth, reached
//! through a TCP load balancer (the seed's "Active Global Cluster ETCD Endpoints" on port 2379)
//! or by its member list. Members can be killed, restarted and cut off from their peers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;

use drctl_testbed::procs::{EtcdServer, EtcdTls, ProcError};
use drctl_testbed::tcp_lb::{Backend, TcpLb};

use super::faults::{Mode, Proxy};
use super::{kill, spawn};

/// Three (or `n`) mTLS members of one etcd cluster and a load balancer in front of them.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    members: Vec<EtcdServer>,
    children: Vec<Option<Child>>,
    pub lb: LoadBalancer,
    pub tls: EtcdTls,
    /// Member `i`'s peer traffic from the others, when started [`EtcdCluster::start_partitionable`].
    peer_links: Vec<Proxy>,
    /// Each member runs as its own user (uid = its peer port), when started
    /// [`EtcdCluster::start_firewallable`].
    own_users: bool,
    /// Flags after the test bed's own, for every member (etcd takes the last of a repeated flag).
    extra_args: Vec<String>,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::launch(n, false, false, &[])
    }

    /// Members started with `args` too, e.g. lowered request limits.
    pub fn start_with(n: usize, args: &[&str]) -> EtcdCluster {
        EtcdCluster::launch(n, false, false, args)
    }

    /// Members whose peers reach each other through proxies, so one can be cut off from its
    /// quorum while its clients still reach it ([`EtcdCluster::isolate`]).
    pub fn start_partitionable(n: usize) -> EtcdCluster {
        EtcdCluster::launch(n, true, false, &[])
    }

    /// Members that each run as their own user, so a firewall rule tells one member's peer
    /// connections from the others' and cuts it off both ways ([`EtcdCluster::partition`]): a
    /// proxy per advertised peer URL cannot, as etcd's peer streams are dialed by the receiver.
    pub fn start_firewallable(n: usize) -> EtcdCluster {
        EtcdCluster::launch(n, false, true, &[])
    }

    fn launch(n: usize, partitionable: bool, own_users: bool, extra_args: &[&str]) -> EtcdCluster {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        super::on_fresh_ports("etcd cluster", || EtcdCluster::try_launch(n, partitionable, own_users, extra_args.clone()))
    }

    /// One start on fresh ports; an error when a member does not come up (its port taken).
    fn try_launch(n: usize, partitionable: bool, own_users: bool, extra_args: Vec<String>) -> Result<EtcdCluster, ProcError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members = EtcdServer::cluster_tls(dir.path(), n)?;
        let mut peer_links = Vec::new();
        if partitionable {
            for m in &mut members {
                let link = Proxy::start(addr_of(&m.peer_url));
                m.advertised_peer_url = Some(link.url());
                peer_links.push(link);
            }
            EtcdServer::introduce(&mut members);
        }
        let tls = members[0].tls.clone().expect("members serve TLS");
        if own_users {
            hand_over(dir.path(), &members, &tls);
        }
        let lb = LoadBalancer::start(members.iter().map(|m| addr_of(&m.client_url)).collect());
        // Dropped on an error below: the members spawned so far are killed with it.
        let mut cluster = EtcdCluster { dir, children: members.iter().map(|_| None).collect(), members, lb, tls, peer_links, own_users, extra_args };
        // All at once: a member alone waits for its quorum.
        for i in 0..n {
            cluster.children[i] = Some(spawn(cluster.command(i), &cluster.members[i].log()));
        }
        for (m, c) in cluster.members.iter().zip(cluster.children.iter_mut()) {
            m.wait_ready(c.as_mut().expect("spawned"))?;
        }
        Ok(cluster)
    }

    /// Cuts member `i` off from the others' messages (or heals it): it no longer hears its
    /// leader, while clients still reach it.
    pub fn isolate(&self, i: usize, cut: bool) {
        let link = &self.peer_links[i];
        link.set(if cut { Mode::Blackhole } else { Mode::Pass });
        if cut {
            link.stall_open_connections();
        }
    }

    /// Cuts member `i` off from its peers both ways until the returned guard is dropped, while its
    /// clients still reach it: iptables drops every packet to or from its peer port, and marks
    /// and drops the connections its own user dials to the others' peer ports (both directions
    /// of each: the messages the others send it travel over those).
    pub fn partition(&self, i: usize) -> Partition {
        assert!(self.own_users, "start the cluster with EtcdCluster::start_firewallable");
        let port = |m: &EtcdServer| addr_of(&m.peer_url).port().to_string();
        let me = port(&self.members[i]);
        let others: Vec<String> = self.members.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| port(m)).collect();
        let rules = vec![
            vec!["-p", "tcp", "-m", "owner", "--uid-owner", &me, "-m", "multiport", "--dports", &others.join(","), "-j", "CONNMARK", "--set-mark", &me]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
            ["-m", "connmark", "--mark", &me, "-j", "DROP"].map(String::from).to_vec(),
            ["-p", "tcp", "--dport", &me, "-j", "DROP"].map(String::from).to_vec(),
            ["-p", "tcp", "--sport", &me, "-j", "DROP"].map(String::from).to_vec(),
        ];
        let mut installed = Partition { rules: Vec::new() };
        for r in rules {
            iptables("-A", &r).unwrap_or_else(|e| panic!("{e} (the test needs root and iptables with the owner, multiport and connmark matches)"));
            installed.rules.push(r);
        }
        installed
    }

    /// `n` keys of 256 B under `prefix` (e.g. `/registry/configmaps/bulk/`), written through the
    /// load balancer in txns of 128 puts: what the keys hold, and the revision after the last.
    pub async fn preload(&self, prefix: &str, n: usize) -> (std::collections::BTreeMap<String, String>, i64) {
        let mut c = self.client().await;
        let ledger: std::collections::BTreeMap<String, String> = (0..n).map(|i| (format!("{prefix}k{i:06}"), format!("{i:0>256}"))).collect();
        let all: Vec<_> = ledger.iter().collect();
        let mut head = 0;
        for chunk in all.chunks(128) {
            let ops: Vec<_> = chunk.iter().map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None)).collect();
            let r = c.txn(etcd_client::Txn::new().and_then(ops)).await.expect("preload txn");
            head = r.header().map(|h| h.revision()).unwrap_or_default();
        }
        (ledger, head)
    }

    /// The members' client URLs, as a member list.
    pub fn member_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The load balancer's URL (the certificates name 127.0.0.1, whatever the port).
    pub fn lb_url(&self) -> String {
        format!("https://{}", self.lb.addr)
    }

    /// `--<prefix>cacert/--<prefix>cert/--<prefix>key` for drctl's CLI.
    pub fn tls_args(&self, prefix: &str) -> Vec<String> {
        self.tls.cli_args(prefix)
    }

    /// The PEM files drctl's Endpoint carries.
    pub fn endpoint(&self, urls: Vec<String>) -> drctl::etcd::Endpoint {
        drctl::etcd::Endpoint { urls, tls: Some(super::tls_files(&self.tls).load().expect("read the etcd PEM files")) }
    }

    /// A client over every member (tests write through it).
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.lb_url()], Some(self.options())).await.expect("connect etcd")
    }

    /// Kill -9 member `i`, as a crashed node would.
    pub fn kill(&mut self, i: usize) {
        if let Some(c) = self.children[i].as_mut() {
            kill(c);
        }
        self.children[i] = None;
    }

    /// Member `i`'s server (its URLs and files).
    pub fn member(&self, i: usize) -> &EtcdServer {
        &self.members[i]
    }

    /// Kill -9 every member: the whole etcd down.
    pub fn kill_all(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }

    /// Every member started again at once (one alone would wait for its quorum).
    pub fn restart_all(&mut self) {
        self.kill_all();
        for i in 0..self.members.len() {
            self.children[i] = Some(spawn(self.command(i), &self.members[i].log()));
        }
        for (m, c) in self.members.iter().zip(self.children.iter_mut()) {
            m.wait_ready(c.as_mut().expect("spawned")).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Restores every member from `snapshot`, as etcd's disaster-recovery procedure does for a
    /// cluster: all stopped, `etcdutl snapshot restore` into a fresh data dir per member with its
    /// name, peer URL and the same `--initial-cluster` (so the same cluster ID), all started.
    /// The revision goes back to the snapshot's.
    pub fn restore_snapshot(&mut self, snapshot: &Path) {
        assert!(!self.own_users, "restored data dirs belong to root: restore a cluster started without its own users");
        self.kill_all();
        for m in &self.members {
            let data = m.dir.join("data");
            std::fs::remove_dir_all(&data).expect("remove the data dir");
            let out = m.restore_command(snapshot).output().expect("run etcdutl");
            assert!(out.status.success(), "etcdutl snapshot restore {}: {}", m.name, String::from_utf8_lossy(&out.stderr));
        }
        self.restart_all();
    }

    /// Start member `i` again on its data dir; waits until it serves with a leader.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let mut c = spawn(self.command(i), &self.members[i].log());
        self.members[i].wait_ready(&mut c).unwrap_or_else(|e| panic!("{e}"));
        self.children[i] = Some(c);
    }

    /// Each running member's index and the leader it names (0: none, or no answer).
    async fn leaders(&self) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        for (i, url) in self.member_urls().into_iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            let status = async { etcd_client::Client::connect([url], Some(self.options())).await?.status().await };
            let (leader, me) = status.await.map(|s| (s.leader(), s.header().map(|h| h.member_id()).unwrap_or_default())).unwrap_or((0, 0));
            out.push((i, leader, me));
        }
        out
    }

    /// The index of the member that leads, asked of each member in turn.
    pub async fn leader(&self) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some((i, _, _)) = self.leaders().await.into_iter().find(|(_, leader, me)| *leader != 0 && leader == me) {
                return i;
            }
            assert!(std::time::Instant::now() < deadline, "no etcd member leads");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits until every running member names the same leader (after a heal: a member's peers
    /// reconnect their streams first).
    pub async fn settled(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let leaders: Vec<u64> = self.leaders().await.into_iter().map(|(_, leader, _)| leader).collect();
            if leaders.iter().all(|l| *l != 0 && *l == leaders[0]) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the members do not agree on a leader: {leaders:?}");
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    /// Member `i`'s command, run as its own user when started [`EtcdCluster::start_firewallable`]
    /// (uid and gid = its peer port).
    fn command(&self, i: usize) -> std::process::Command {
        let m = &self.members[i];
        let mut cmd = super::etcd_command(m);
        cmd.args(&self.extra_args);
        if self.own_users {
            use std::os::unix::process::CommandExt;
            let uid = u32::from(addr_of(&m.peer_url).port());
            cmd.uid(uid).gid(uid);
        }
        cmd
    }

    /// How [`EtcdCluster::client`] connects (a test that reconnects makes its own clients).
    pub fn options(&self) -> etcd_client::ConnectOptions {
        let read = |p: &Path| std::fs::read(p).expect("read etcd PEM");
        etcd_client::ConnectOptions::new().with_connect_timeout(std::time::Duration::from_secs(2)).with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&self.tls.ca)))
                .identity(etcd_client::Identity::from_pem(read(&self.tls.cert), read(&self.tls.key))),
        )
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("https://").trim_start_matches("http://").parse().expect("member URL is host:port")
}

/// A TCP load balancer ([`drctl_testbed::tcp_lb`]) whose backends are proxies in front of the
/// members, so a test can also stall a member's open connections: blackholing its proxy.
pub struct LoadBalancer {
    pub addr: SocketAddr,
    backends: Vec<Proxy>,
    lb: TcpLb,
}

impl LoadBalancer {
    pub fn start(members: Vec<SocketAddr>) -> LoadBalancer {
        // One proxy per member; the balancer checks the member itself before using its proxy.
        let backends: Vec<Proxy> = members.into_iter().map(Proxy::start).collect();
        let targets = backends.iter().map(|p| Backend { member: p.target, via: p.addr }).collect();
        let lb = TcpLb::bind(SocketAddr::from(([127, 0, 0, 1], 0)), targets).expect("start the load balancer");
        LoadBalancer { addr: lb.addr, backends, lb }
    }

    /// Takes member `i` out of rotation (or back in) for new connections.
    pub fn drain(&self, i: usize, out: bool) {
        self.lb.drain(i, out);
    }

    /// Cuts member `i` off from its clients: open connections stall, new ones hang.
    pub fn blackhole(&self, i: usize, cut: bool) {
        self.backends[i].set(if cut { Mode::Blackhole } else { Mode::Pass });
        if cut {
            self.backends[i].stall_open_connections();
        }
    }

    /// Connections handed out so far.
    pub fn connections(&self) -> usize {
        self.lb.connections()
    }
}

/// Gives each member's directory to its user, and lets every member read the shared PKI (test
/// keys only) through the temp dir.
fn hand_over(root: &Path, members: &[EtcdServer], tls: &EtcdTls) {
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    open(root, 0o755);
    for f in [&tls.ca, &tls.cert, &tls.key, &tls.server_cert, &tls.server_key] {
        open(f, 0o644);
        if let Some(d) = f.parent() {
            open(d, 0o755);
        }
    }
    for m in members {
        let uid = u32::from(addr_of(&m.peer_url).port());
        std::os::unix::fs::chown(&m.dir, Some(uid), Some(uid)).expect("chown a member's dir");
    }
}

fn iptables(op: &str, rule: &[String]) -> Result<(), String> {
    let out = std::process::Command::new("iptables").args(["-w", op, "OUTPUT"]).args(rule).output().map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables {op} OUTPUT {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Firewall rules of [`EtcdCluster::partition`], removed when dropped (also when a test panics).
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Drop for Partition {
    fn drop(&mut self) {
        for r in self.rules.iter().rev() {
            if let Err(e) = iptables("-D", r) {
                eprintln!("{e}");
            }
        }
    }
}
