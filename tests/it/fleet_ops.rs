//! Operating a fleet: `doctor` checks the shared Redis of `[cluster]` end to end against a
//! real `redis-server`, and names each way it breaks with its fix: a read-only replica, a
//! password it wants, and a server that is gone.

use crate::util;

use util::gate::{gate_command, Gate, GateConfig};
use util::redis::Redis;
use util::registry::Registry;
use util::{describe, run, temp_dir};

#[test]
fn doctor_checks_the_shared_redis_and_names_what_breaks() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let mut redis = Redis::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[("builder", "builder-secret")])
            .fixed_port()
            .extra_toml(&format!(
                "\n[cluster]\nredis = \"{}\"\ntimeout = \"500ms\"\nkey_prefix = \"ops\"\n",
                redis.url()
            )),
    );
    let doctor = || {
        let output = run(gate_command()
            .arg("doctor")
            .arg("--config")
            .arg(&gate.config_path));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output, text)
    };

    let (healthy, text) = doctor();
    assert!(healthy.status.success(), "{}", describe(&healthy));
    for line in [
        &format!("ok    cluster: Redis at {} answers PING in", redis.url()),
        "ok    cluster: a probe key under \"ops:\" was written, read back and deleted",
        "ok    cluster: the server is Redis 7.",
        "0 failure(s)",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    // The probe key is gone.
    let keys = redis.command(&["KEYS", "ops:doctor:*"]);
    assert!(keys.starts_with("*0"), "the probe key was left: {keys}");

    // A replica (of a primary that is not there) answers PING but refuses writes.
    redis.command(&["REPLICAOF", "127.0.0.1", "1"]);
    let (replica, text) = doctor();
    assert_eq!(replica.status.code(), Some(1), "{}", describe(&replica));
    assert!(
        text.contains("FAIL  cluster: writing a probe key")
            && text.contains("READONLY")
            && text.contains("point [cluster] redis at the primary"),
        "{text}"
    );
    redis.command(&["REPLICAOF", "NO", "ONE"]);

    // A server that wants a password the configuration does not give.
    redis.command(&["CONFIG", "SET", "requirepass", "fleet-secret"]);
    let (noauth, text) = doctor();
    assert_eq!(noauth.status.code(), Some(1), "{}", describe(&noauth));
    assert!(
        text.contains("FAIL  cluster:")
            && text.contains("NOAUTH")
            && text.contains("set [cluster] password_file"),
        "{text}"
    );

    // Redis is gone.
    redis.stop();
    let (down, text) = doctor();
    assert_eq!(down.status.code(), Some(1), "{}", describe(&down));
    assert!(
        text.contains(&format!("FAIL  cluster: Redis at {}", redis.url()))
            && text.contains("is Redis running"),
        "{text}"
    );
    assert!(
        !text.contains("probe key"),
        "checks went on without Redis:\n{text}"
    );
}
