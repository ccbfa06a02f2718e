//! A real `redis-server` (Debian's package) on 127.0.0.1, in memory only, for the fleet's
//! shared state; stopped and started again on the same port to test an outage. Killed on
//! drop.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, read_text, require_tool, wait_until};

pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Redis {
    pub fn start(tmp: &Path) -> Redis {
        require_tool("redis-server", "redis-server");
        let dir = tmp.join("redis");
        std::fs::create_dir_all(&dir).expect("mkdir redis");
        let mut redis = Redis {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
        };
        redis.run();
        redis
    }

    /// `redis://127.0.0.1:PORT/0`, the gates' `[cluster] redis`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Where its log (and what a test writes beside it) is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (its data, held in memory only, is gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn run(&mut self) {
        let log = self.dir.join("redis.log");
        let out = File::create(&log).expect("create redis log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = self.addr;
        assert!(
            wait_until(Duration::from_secs(10), || ping(addr)),
            "redis-server on {addr} did not answer PING:\n{}",
            read_text(&log)
        );
    }

    /// One command in RESP, its raw answer: enough to look at what the gates keep.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("send");
        let mut buf = vec![0; 64 * 1024];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0; 16];
    stream.write_all(b"PING\r\n").is_ok()
        && stream
            .read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
