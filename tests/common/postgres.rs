//! A PostgreSQL server of a test's own: `initdb` into a temp dir and `pg_ctl` on a free loopback
//! port, for the tests that stop and restart the database under running servers (the shared
//! server on 5432 carries every other test's databases). Stopped when dropped.
//!
//! The binaries come from `MODELD_TEST_PG_BIN` or Debian's `/usr/lib/postgresql/<version>/bin`.
//! PostgreSQL refuses to run as root: as root (CI), the data directory is handed to the
//! `postgres` user and every command runs through `runuser -u postgres`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::TestDb;

pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The loopback port it listens on (the same after a restart).
    pub port: u16,
    /// `Some(user)` when the commands run as another user (the test runs as root).
    run_as: Option<String>,
}

/// The directory holding `initdb` and `pg_ctl`.
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("MODELD_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().expect(
        "PostgreSQL's server binaries (initdb, pg_ctl) are needed: apt-get install postgresql, or set \
         MODELD_TEST_PG_BIN to their directory",
    )
}

impl PrivatePostgres {
    /// Makes a new cluster and starts it.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let run_as = (std::fs::metadata("/proc/self").unwrap().uid() == 0).then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let out = std::process::Command::new("id").args(["-u", user]).output().unwrap();
            let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = Self {
            dir,
            bin: pg_bin(),
            port,
            run_as,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        )
        .await;
        pg.up().await;
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A database on it for a registry (its default `postgres` database), not owning it.
    pub fn database(&self) -> TestDb {
        TestDb::at(format!("postgres://postgres@127.0.0.1:{}/postgres", self.port))
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"],
        )
        .await;
    }

    /// Stops the server the way `systemctl restart` does (`-m fast`: sessions are cut, open
    /// transactions roll back) and waits until it is gone.
    pub async fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .await;
    }

    /// `tool` of the server's binaries, as the user that may run it, from the temp dir (the
    /// postgres user may not read the test's working directory).
    fn command(&self, tool: &str) -> std::process::Command {
        let exe = self.bin.join(tool);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => std::process::Command::new(&exe),
        };
        c.current_dir(self.dir.path());
        c
    }

    async fn run(&self, tool: &str, args: &[&str]) {
        let mut cmd = tokio::process::Command::from(self.command(tool));
        let out = cmd.args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The server's own log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.as_str(), "-m", "immediate", "stop"])
            .output();
    }
}
