//! Nodes under a real systemd: containers whose PID 1 is systemd, each running the node from
//! `deploy/systemd/plexus.service` as the unprivileged `plexus` user, as an operator would.
//!
//! There is no image registry here, so the base image is a minimal Debian that `debootstrap`
//! makes from the distribution's package mirror (about 40 MB of packages, a minute or two), of
//! the host's own release so that the test binary's glibc matches. It is built once per machine
//! and kept under the tag `plexus-systemd-base:<release>`, like a build cache; each cluster then
//! builds its own small image on top (binary, unit, user) and removes it when dropped.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::docker::{docker, try_run, DockerCluster};

/// The `plexus` user's and group's id in the image; the node key on the host is given this
/// group, as an operator gives it the service user's group.
pub const PLEXUS_GID: u32 = 990;
/// Where the unit file lives in the repository.
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/plexus.service");
/// Debian mirror for `debootstrap`; `PLEXUS_DEBIAN_MIRROR` overrides it.
const MIRROR: &str = "http://deb.debian.org/debian";

/// The host's Debian release (`VERSION_CODENAME` of `/etc/os-release`).
fn host_release() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("the systemd test needs a Debian host (no VERSION_CODENAME in /etc/os-release)"))
}

/// The base image's tag, built first if this machine does not have it yet. Concurrent test
/// processes wait for one another on a lock file instead of building it twice.
pub fn base_image() -> String {
    let release = host_release();
    let tag = format!("plexus-systemd-base:{release}");
    let lock = std::fs::File::create(std::env::temp_dir().join("plexus-systemd-base.lock")).unwrap();
    // SAFETY: flock on a descriptor `lock` keeps open; released when `lock` is dropped.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) },
        0,
        "lock the base image build"
    );
    if try_run("docker", &["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
        return tag;
    }
    let root = tempfile::Builder::new()
        .prefix("plexus-systemd-root")
        .tempdir()
        .unwrap();
    let mirror = std::env::var("PLEXUS_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.to_string());
    eprintln!("[systemd] building {tag} with debootstrap from {mirror} (once per machine)");
    let started = std::time::Instant::now();
    try_run(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=systemd,systemd-sysv",
            &release,
            root.path().to_str().unwrap(),
            &mirror,
        ],
    )
    .unwrap_or_else(|e| panic!("debootstrap (apt-get install debootstrap; root needed): {e}"));
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "var/cache/apt/archives",
    ] {
        let _ = std::fs::remove_dir_all(root.path().join(dir));
    }
    import(root.path(), &tag);
    eprintln!("[systemd] built {tag} in {:?}", started.elapsed());
    tag
}

/// `tar -C root -c . | docker import - tag`.
fn import(root: &Path, tag: &str) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let out = Command::new("docker")
        .args(["import", "-", tag])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("run docker import");
    assert!(tar.wait().unwrap().success(), "tar of the debootstrap root failed");
    assert!(
        out.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the build context of a node image into `ctx` (the plexus binary is already in
/// `ctx/rootfs/plexus`) and builds it as `image`: the base, a `plexus` system user, the binary at
/// the unit's `ExecStart` path and the repository's unit, enabled so it starts at boot.
pub fn build_node_image(ctx: &Path, image: &str) {
    std::fs::copy(UNIT, ctx.join("plexus.service")).unwrap();
    let dockerfile = format!(
        "FROM {base}\n\
         RUN groupadd --system --gid {PLEXUS_GID} plexus \\\n \
         && useradd --system --uid {PLEXUS_GID} --gid plexus --home-dir /var/lib/plexus --shell /usr/sbin/nologin plexus\n\
         COPY rootfs/plexus /usr/local/bin/plexus\n\
         COPY plexus.service /etc/systemd/system/plexus.service\n\
         RUN systemctl enable plexus.service\n",
        base = base_image()
    );
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    docker(&["build", "--quiet", "-t", image, ctx.to_str().unwrap()]);
}

/// `docker run` arguments that let systemd be PID 1 without `--privileged`: it mounts its own
/// cgroup hierarchy (`SYS_ADMIN`, the host's cgroups read-only) and needs `/run` as a tmpfs.
pub const RUN_ARGS: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--volume",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "--env",
    "container=docker",
];

/// Gives the node key to the service user's group (0640), as the deploy notes tell an operator.
pub fn share_key_with_service(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(key, Some(0), Some(PLEXUS_GID)).unwrap();
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o640)).unwrap();
}

impl DockerCluster {
    /// `CMD ARGS...` inside node `id`'s container (`docker exec`); its output, or why it failed.
    pub fn exec(&self, id: u64, cmd: &[&str]) -> Result<Output, String> {
        let container = self.container(id);
        let mut all = vec!["exec", container.as_str()];
        all.extend(cmd);
        try_run("docker", &all)
    }

    /// `systemctl ARGS...` inside node `id`'s container; its output, or why it failed.
    pub fn systemctl(&self, id: u64, args: &[&str]) -> Result<Output, String> {
        let mut cmd = vec!["systemctl"];
        cmd.extend(args);
        self.exec(id, &cmd)
    }

    /// One property of the plexus unit on node `id` (`systemctl show -p NAME --value`).
    pub fn unit_prop(&self, id: u64, name: &str) -> String {
        let out = self
            .systemctl(id, &["show", "plexus.service", "--property", name, "--value"])
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The node's journal (the unit's lines only), last `lines` lines.
    pub fn journal(&self, id: u64, lines: usize) -> String {
        let n = lines.to_string();
        match self.exec(id, &["journalctl", "--unit", "plexus", "--no-pager", "--lines", &n]) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => e,
        }
    }

    /// Waits (at most `within_secs`) until systemd in node `id`'s container has finished booting.
    pub fn wait_for_systemd(&self, id: u64, within_secs: u32) {
        let out = Command::new("docker")
            .args(["exec", &self.container(id), "timeout", &within_secs.to_string()])
            .args(["systemctl", "is-system-running", "--wait"])
            .stdin(Stdio::null())
            .output()
            .expect("run docker exec");
        // `degraded` (some unit failed) still runs ours; the test checks that one itself.
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            state == "running" || state == "degraded",
            "systemd in {} not up within {within_secs} s: {state:?} {}",
            self.container(id),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
