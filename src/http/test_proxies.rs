//! Real nginx and Caddy in front of tokend, for the integration tests
//! (`tests/api/gateways.rs`) and the benchmark's gateway phase: each runs the
//! shipped configuration (`deploy/gateways/`) with its placeholders filled
//! in, as a child process on loopback ports, with its pid, logs and temporary
//! files in a folder of its own, and as `nobody` when the caller is root (so
//! never with privileges). The server never uses this.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// The shipped nginx configuration (an http-level file).
pub const NGINX_TEMPLATE: &str = include_str!("../../deploy/gateways/nginx/tokend.conf.template");
/// The shipped Caddyfile (site blocks; settings from the environment).
pub const CADDYFILE: &str = include_str!("../../deploy/gateways/caddy/Caddyfile");

/// What the shipped configurations leave to the operator.
#[derive(Debug, Clone)]
pub struct Placeholders {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// The backend.
    pub upstream: SocketAddr,
    /// tokend's `--http-listen` address.
    pub forward_auth: SocketAddr,
    /// The gateway's own tokend token.
    pub gateway_token: String,
}

/// Whether `binary` is on `PATH` (or in /usr/sbin, where Debian puts nginx).
pub fn installed(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// A free loopback port (bound, then released for the proxy to take).
pub fn free_port() -> Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Internal(format!("no free port: {e}")))
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// The effective user id, from /proc (no libc binding needed).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("nobody:"))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A proxy process and its folder; stopped and removed on drop.
pub struct Proxy {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Proxy {
    /// The proxy's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until `addr` accepts connections (or the process exits).
    fn until_listening(mut self, addr: SocketAddr, name: &str) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(self);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Internal(format!(
                    "{name} exited ({status}): {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(Error::Internal(format!(
            "{name} did not listen on {addr}: {}",
            self.log()
        )))
    }
}

impl Drop for Proxy {
    /// SIGTERM first, SIGKILL only if it has not exited within 5 s: nginx's
    /// master stops its workers on SIGTERM, while on SIGKILL they live on,
    /// orphaned (and a worker still holding a load generator's connections
    /// keeps spending CPU that later measurements on this machine need).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh folder the proxy (maybe `nobody`) can write, and the command
/// adjusted to run as `nobody` when we are root.
fn prepare(name: &str, command: &mut Command) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokend-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io("proxy folder"))?;
    if running_as_root()
        && let Some((uid, gid)) = nobody()
    {
        use std::os::unix::process::CommandExt;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io("chown"))?;
        command.uid(uid).gid(gid);
    }
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io("write proxy configuration"))?;
    // Readable by `nobody` (the file is root's when we are root).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(io("chmod proxy configuration"))
}

/// The shipped nginx file with its placeholders filled in.
pub fn nginx_config(p: &Placeholders) -> String {
    NGINX_TEMPLATE
        .replace("${LISTEN}", &p.listen.to_string())
        .replace("${UPSTREAM}", &p.upstream.to_string())
        .replace("${TOKEND_FORWARD_AUTH}", &p.forward_auth.to_string())
        .replace("${TOKEND_GATEWAY_TOKEN}", &p.gateway_token)
}

/// Starts nginx with `workers` worker processes, the shipped file, and
/// `extra` (more http-level configuration, e.g. other server blocks).
pub fn start_nginx(p: &Placeholders, workers: usize, extra: &str) -> Result<Proxy> {
    let binary = installed("nginx").ok_or_else(|| Error::Internal("nginx not installed".into()))?;
    let mut command = Command::new(binary);
    let dir = prepare("nginx", &mut command)?;
    let d = dir.display();
    let mut main = String::new();
    let _ = write!(
        main,
        "daemon off;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         {extra}\n  include {d}/tokend.conf;\n}}\n"
    );
    write(&dir.join("tokend.conf"), &nginx_config(p))?;
    write(&dir.join("nginx.conf"), &main)?;
    let log = dir.join("error.log");
    command
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().map_err(io("start nginx"))?;
    Proxy {
        child,
        dir,
        log,
        addr: p.listen,
    }
    .until_listening(p.listen, "nginx")
}

/// Starts Caddy with the shipped Caddyfile after a global block that turns
/// off its admin endpoint and automatic HTTPS and binds the listen address.
pub fn start_caddy(p: &Placeholders) -> Result<Proxy> {
    let binary = installed("caddy").ok_or_else(|| Error::Internal("caddy not installed".into()))?;
    let mut command = Command::new(binary);
    let dir = prepare("caddy", &mut command)?;
    let file = dir.join("Caddyfile");
    write(
        &file,
        &format!(
            "{{\n\tadmin off\n\tauto_https off\n\tdefault_bind {}\n}}\n\n{CADDYFILE}",
            p.listen.ip()
        ),
    )?;
    let log = dir.join("caddy.log");
    let out = std::fs::File::create(&log).map_err(io("caddy log"))?;
    let err = out.try_clone().map_err(io("caddy log"))?;
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", &dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        // Any host name, on this port (bound to the loopback address above).
        .env("CADDY_SITE", format!("http://:{}", p.listen.port()))
        .env("UPSTREAM", p.upstream.to_string())
        .env("TOKEND_FORWARD_AUTH", p.forward_auth.to_string())
        .env("TOKEND_GATEWAY_TOKEN", &p.gateway_token)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = command.spawn().map_err(io("start caddy"))?;
    Proxy {
        child,
        dir,
        log,
        addr: p.listen,
    }
    .until_listening(p.listen, "caddy")
}
