//! A private `dockerd` per test (vfs storage, no bridge, no iptables) in a short directory
//! under /tmp, and its CLI with a per-test `DOCKER_CONFIG`. On drop: SIGTERM, then SIGKILL for
//! it and its containerd children, then any mount left under its directory is detached.
//!
//! dockerd treats 127.0.0.0/8 as an insecure registry: it still speaks HTTPS to the gate but
//! skips certificate verification. Strict TLS is covered by the skopeo tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{describe, read_text, require_tool, run, temp_dir, wait_until, TempDir};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Dockerd {
    child: Child,
    /// Short, so `<dir>/docker.sock` stays within the 108-byte unix socket limit.
    dir: TempDir,
    socket: PathBuf,
    config_dir: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with everything under its own short temp dir; `tmp` (the test's dir)
    /// gets the CLI configuration, so credentials never leak between tests.
    pub fn start(tmp: &Path) -> Dockerd {
        require_tool("dockerd", "docker.io");
        require_tool("docker", "docker.io");
        let dir = temp_dir();
        let root = dir.path();
        let socket = root.join("docker.sock");
        let log = root.join("dockerd.log");
        let config_dir = tmp.join("docker-config");
        std::fs::create_dir_all(&config_dir).expect("mkdir DOCKER_CONFIG");

        let log_file = File::create(&log).expect("create dockerd log");
        let child = Command::new("dockerd")
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ])
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn dockerd");

        let mut dockerd = Dockerd {
            child,
            dir,
            socket,
            config_dir,
            log,
        };
        let up = wait_until(START_TIMEOUT, || {
            dockerd.child.try_wait().ok().flatten().is_none()
                && dockerd
                    .docker(&["info", "--format", "{{.ID}}"])
                    .status
                    .success()
        });
        if !up {
            panic!(
                "dockerd did not answer `docker info` within {START_TIMEOUT:?}:\n{}",
                read_text(&dockerd.log)
            );
        }
        dockerd
    }

    /// Runs `docker -H unix://... <args>` with this test's DOCKER_CONFIG.
    pub fn docker(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Like `docker`, but panics with the output unless the command succeeds.
    pub fn docker_ok(&self, args: &[&str]) -> Output {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {}: failed\n{}",
            args.join(" "),
            describe(&out)
        );
        out
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command
            .env("DOCKER_CONFIG", &self.config_dir)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        command
    }

    /// Imports a one-layer image named `name` from a small generated file tree
    /// (`tar c . | docker import - name`) and returns its image ID.
    pub fn import_image(&self, name: &str) -> String {
        let src = self.dir.path().join("import-src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir import source");
        super::write_file(&src.join("etc/registry-gate-test"), format!("{name}\n"));
        let mut payload = vec![0u8; 256 * 1024];
        super::XorShift::new(name.len() as u64 * 7919).fill(&mut payload);
        super::write_file(&src.join("payload.bin"), payload);

        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&src)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tar");
        let tar_out = tar.stdout.take().expect("tar stdout");
        let import = self
            .command(&["import", "-", name])
            .stdin(Stdio::from(tar_out))
            .output()
            .expect("run docker import");
        let tar_status = tar.wait().expect("wait for tar");
        assert!(tar_status.success(), "tar failed: {tar_status}");
        assert!(
            import.status.success(),
            "docker import {name}: {}",
            describe(&import)
        );
        self.image_id(name)
    }

    /// `docker image inspect --format {{.Id}} name`.
    pub fn image_id(&self, name: &str) -> String {
        let out = self.docker_ok(&["image", "inspect", "--format", "{{.Id}}", name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log_text(&self) -> String {
        read_text(&self.log)
    }

    /// Direct children of dockerd (its managed containerd).
    fn children(&self) -> Vec<i32> {
        let parent = self.child.id().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the parenthesised command: state, ppid, ...
            let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            if after_comm.split_whitespace().nth(1) == Some(parent.as_str()) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let children = self.children();
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let stopped = wait_until(STOP_TIMEOUT, || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for child in children {
            // Gone already after a clean stop; a kill of a missing pid is harmless.
            let _ = Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        // Deepest mounts first, so parents can be detached.
        let prefix = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|target| target.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|target| std::cmp::Reverse(target.len()));
        for target in ours {
            let _ = Command::new("umount").args(["-l", target]).status();
        }
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}", self.log_text());
        }
    }
}
