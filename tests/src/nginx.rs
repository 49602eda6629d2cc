//! A real nginx with the RTMP module for the restream tests (`record all`
//! into a temporary folder), optionally with the stream module terminating
//! TLS in front of it, and a test CA for `rtmps://`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// TLS files for nginx's stream module.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A real nginx, single process in the foreground, killed on drop.
pub struct Nginx {
    child: Child,
    pub rtmp_port: u16,
    pub rtmps_port: Option<u16>,
    pub record_dir: PathBuf,
    dir: PathBuf,
}

impl Nginx {
    /// nginx with `application live` recording everything into
    /// `dir/rec`; with `tls`, also a TLS listener proxying to it.
    pub fn start(dir: &Path, tls: Option<&TlsFiles>) -> Nginx {
        Nginx::start_with(dir, tls, None, false)
    }

    /// [`start`](Self::start) on a given RTMP port (a restart where the
    /// client expects it), and with `record_unique on` (each publish gets
    /// its own `KEY-<unix time>.flv`).
    pub fn start_with(
        dir: &Path,
        tls: Option<&TlsFiles>,
        port: Option<u16>,
        record_unique: bool,
    ) -> Nginx {
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "nginx's RTMP module is missing: apt-get install nginx libnginx-mod-rtmp libnginx-mod-stream (scripts/test.sh does)"
        );
        let record_dir = dir.join("rec");
        std::fs::create_dir_all(&record_dir).expect("record dir");
        let rtmp_port = port.unwrap_or_else(free_port);
        let rtmps_port = tls.map(|_| free_port());
        let mut conf = format!("load_module {RTMP_MODULE};\n");
        if tls.is_some() {
            conf += &format!("load_module {STREAM_MODULE};\n");
        }
        if running_as_root() {
            conf += "user root;\n";
        }
        conf += &format!(
            "worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
rtmp {{
  server {{
    listen 127.0.0.1:{rtmp_port};
    chunk_size 4096;
    application live {{
      live on;
      record all;
      record_path {rec};
      record_unique {unique};
    }}
  }}
}}
",
            dir = dir.display(),
            rec = record_dir.display(),
            unique = if record_unique { "on" } else { "off" },
        );
        if let (Some(tls), Some(port)) = (tls, rtmps_port) {
            conf += &format!(
                "stream {{
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    proxy_pass 127.0.0.1:{rtmp_port};
  }}
}}
",
                cert = tls.cert.display(),
                key = tls.key.display(),
            );
        }
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        // Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
        let program = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(program)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed");
        let mut nginx = Nginx {
            child,
            rtmp_port,
            rtmps_port,
            record_dir,
            dir: dir.to_owned(),
        };
        for port in std::iter::once(rtmp_port).chain(rtmps_port) {
            nginx.wait_listening(port);
        }
        nginx
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}): {}", self.error_log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx does not listen on {port} after 10 s: {}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The FLV nginx records for `stream` (`record_unique off`).
    pub fn recording(&self, stream: &str) -> PathBuf {
        self.record_dir.join(format!("{stream}.flv"))
    }
}

impl Nginx {
    /// Stops nginx the way an operator does (SIGTERM: it closes its
    /// connections and finishes its recordings) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The FLV files nginx recorded, oldest name first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.record_dir)
            .map(|dir| {
                dir.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "flv"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate for 127.0.0.1 and localhost signed
/// by it, written as PEM files; returns the CA file for the client.
pub fn test_pki(dir: &Path) -> (PathBuf, TlsFiles) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Whipcord test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "whipcord test server");
    let server_cert = params.signed_by(&server_key, &issuer).expect("server cert");

    let ca = dir.join("ca.pem");
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&ca, ca_cert.pem()).expect("ca.pem");
    std::fs::write(&files.cert, server_cert.pem()).expect("server.pem");
    std::fs::write(&files.key, server_key.serialize_pem()).expect("server.key");
    (ca, files)
}
