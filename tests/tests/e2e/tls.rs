//! HTTPS on the gateway's HTTP port against the real binary: PEM files
//! (every route over TLS, reload on SIGHUP and on file change, a broken
//! file ignored), the plain-HTTP redirect listener, `--tls self-signed`
//! (logged fingerprint = presented certificate, reused across restarts),
//! and ACME against Debian's pebble (TLS-ALPN-01 on our own port, the cached
//! certificate reused at start, renewal of a short-lived certificate).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use rustls_pki_types::CertificateDer;

use whipcord_tests::nginx::{TlsFiles, free_port, test_pki};
use whipcord_tests::offer::publisher_offer;
use whipcord_tests::tls::{
    Pebble, TlsGateway, TlsGatewayOptions, accepting_any, fingerprint, pem_certs, presented_chain,
    request, trusting,
};

/// A test CA and a leaf for 127.0.0.1 and localhost, in `dir` (made).
fn pki(dir: &Path) -> (std::path::PathBuf, TlsFiles) {
    std::fs::create_dir_all(dir).expect("pki dir");
    test_pki(dir)
}

fn leaf_fingerprint(cert_pem: &Path) -> Result<String> {
    let certs = pem_certs(cert_pem)?;
    Ok(fingerprint(certs.first().context("no certificate")?))
}

/// The fingerprint the server presents right now (any certificate).
async fn presented_fingerprint(gw: &TlsGateway) -> Result<String> {
    let chain = presented_chain(gw.https, "localhost", accepting_any()).await?;
    Ok(fingerprint(&chain[0]))
}

/// Waits (bounded) until the server presents the certificate `want`.
async fn wait_presented(gw: &TlsGateway, want: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let now = presented_fingerprint(gw).await?;
        if now == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "still presenting {now} after {limit:?}, not {want}; log:\n{}",
                gw.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces the files at `cert`/`key` with `from`'s (a renewal in place).
fn install(from: &TlsFiles, cert: &Path, key: &Path) -> Result<()> {
    std::fs::write(key, std::fs::read(&from.key)?)?;
    std::fs::write(cert, std::fs::read(&from.cert)?)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pem_files_serve_every_route_over_https_and_reload_on_sighup() -> Result<()> {
    let dir = whipcord_tests::temp_dir("tls-files");
    let (ca, first) = pki(&dir.join("first"));
    let (ca2, second) = pki(&dir.join("second"));
    // The gateway reads its own copies, replaced in place below.
    let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
    install(&first, &cert, &key)?;
    let redirect_port = free_port();
    let gw = TlsGateway::start(
        TlsGatewayOptions::default()
            .args([
                "--tls-cert",
                cert.to_str().context("utf-8 path")?,
                "--tls-key",
                key.to_str().context("utf-8 path")?,
                "--http-redirect-listen",
                &format!("127.0.0.1:{redirect_port}"),
            ])
            // Files are checked hourly: only SIGHUP can reload them here.
            .env("WHIPCORD_TLS_WATCH_SECS", "3600"),
    )
    .await?;
    let first_fp = leaf_fingerprint(&first.cert)?;
    let line = gw
        .wait_log("TLS certificate loaded", Duration::from_secs(5))
        .await?;
    ensure!(
        line.contains(&format!("fingerprint={first_fp}")) && line.contains("expires="),
        "the load line names neither fingerprint nor expiry: {line}"
    );

    // A client that trusts only the test CA: pages, API, WHIP.
    let client = trusting(&pem_certs(&ca)?)?;
    let health = gw.get("/healthz", client.clone()).await?;
    ensure!(health.status == 200, "healthz: {}", health.status);
    ensure!(fingerprint(&health.chain[0]) == first_fp);
    let page = gw.get("/publish/tls-cam", client.clone()).await?;
    ensure!(page.status == 200, "publish page: {}", page.status);
    let streams = gw.get("/api/streams", client.clone()).await?;
    ensure!(streams.status == 200, "/api/streams: {}", streams.status);

    let (pc, offer) = publisher_offer().await?;
    let whip = request(
        gw.https,
        "localhost",
        client.clone(),
        "POST",
        "/whip/tls-cam",
        &[("content-type", "application/sdp")],
        Bytes::from(offer),
    )
    .await?;
    ensure!(
        whip.status == 201,
        "WHIP over TLS: {} {}",
        whip.status,
        whip.text()
    );
    ensure!(
        whip.header("content-type") == Some("application/sdp")
            && whip.text().contains("a=fingerprint:"),
        "no SDP answer: {:?} {}",
        whip.headers,
        whip.text()
    );
    let location = whip
        .header("location")
        .context("201 without Location")?
        .to_owned();
    let ended = request(
        gw.https,
        "localhost",
        client.clone(),
        "DELETE",
        &location,
        &[],
        Bytes::new(),
    )
    .await?;
    ensure!(ended.status == 200, "DELETE {location}: {}", ended.status);
    let _ = pc.close().await;

    // Nothing in plain text on the HTTPS port.
    ensure!(
        reqwest::Client::new()
            .get(format!("http://{}/healthz", gw.https))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_err(),
        "plain HTTP answered on the HTTPS port"
    );

    // The redirect listener: 308 to the same host and path on HTTPS.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()?;
    let res = plain
        .post(format!("http://127.0.0.1:{redirect_port}/whip/cam?x=1"))
        .send()
        .await?;
    ensure!(res.status().as_u16() == 308, "redirect: {}", res.status());
    let expected = format!("https://127.0.0.1:{}/whip/cam?x=1", gw.https.port());
    ensure!(
        res.headers().get("location").and_then(|v| v.to_str().ok()) == Some(expected.as_str()),
        "Location {:?}, expected {expected}",
        res.headers().get("location")
    );

    // Renewed in place, then SIGHUP: new connections get the new leaf.
    install(&second, &cert, &key)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        presented_fingerprint(&gw).await? == first_fp,
        "changed before SIGHUP (the hourly check should not have run)"
    );
    gw.sighup()?;
    let second_fp = leaf_fingerprint(&second.cert)?;
    wait_presented(&gw, &second_fp, Duration::from_secs(10)).await?;
    let health = gw.get("/healthz", trusting(&pem_certs(&ca2)?)?).await?;
    ensure!(
        health.status == 200,
        "healthz with the new certificate: {}",
        health.status
    );
    ensure!(
        gw.get("/healthz", client).await.is_err(),
        "a client trusting only the old CA still connects"
    );

    // A broken file: warning, the current certificate stays.
    std::fs::write(&cert, "not a certificate")?;
    gw.sighup()?;
    gw.wait_log(
        "keeping the current TLS certificate",
        Duration::from_secs(10),
    )
    .await?;
    ensure!(presented_fingerprint(&gw).await? == second_fp);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_pem_files_are_picked_up_without_a_signal() -> Result<()> {
    let dir = whipcord_tests::temp_dir("tls-watch");
    let (_, first) = pki(&dir.join("first"));
    let (_, second) = pki(&dir.join("second"));
    let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
    install(&first, &cert, &key)?;
    let gw = TlsGateway::start(
        TlsGatewayOptions::default()
            .args([
                "--tls-cert",
                cert.to_str().context("utf-8 path")?,
                "--tls-key",
                key.to_str().context("utf-8 path")?,
            ])
            .env("WHIPCORD_TLS_WATCH_SECS", "1"),
    )
    .await?;
    ensure!(presented_fingerprint(&gw).await? == leaf_fingerprint(&first.cert)?);
    // certbot's way: new files renamed over the old ones.
    let (tmp_cert, tmp_key) = (dir.join("new.pem"), dir.join("new.key"));
    install(&second, &tmp_cert, &tmp_key)?;
    std::fs::rename(&tmp_key, &key)?;
    std::fs::rename(&tmp_cert, &cert)?;
    wait_presented(
        &gw,
        &leaf_fingerprint(&second.cert)?,
        Duration::from_secs(15),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The value of `fingerprint=` in a log line.
fn logged_fingerprint(line: &str) -> Result<String> {
    let start = line
        .find("fingerprint=")
        .with_context(|| format!("no fingerprint= in {line}"))?
        + "fingerprint=".len();
    Ok(line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn self_signed_certificate_is_logged_presented_and_reused() -> Result<()> {
    let mut gw =
        TlsGateway::start(TlsGatewayOptions::default().args(["--tls", "self-signed"])).await?;
    let line = gw
        .wait_log(
            "self-signed TLS certificate generated",
            Duration::from_secs(5),
        )
        .await?;
    let logged = logged_fingerprint(&line)?;
    ensure!(
        logged.len() == 95 && logged.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        "not a colon-separated SHA-256: {logged}"
    );
    let chain = presented_chain(gw.https, "localhost", accepting_any()).await?;
    ensure!(
        fingerprint(&chain[0]) == logged,
        "logged {logged}, presented {}",
        fingerprint(&chain[0])
    );
    let names = leaf_names(&chain[0])?;
    for name in ["localhost", "127.0.0.1", "::1"] {
        ensure!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let stored = gw.data_dir.join("tls/self-signed.crt");
    ensure!(leaf_fingerprint(&stored)? == logged);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.data_dir.join("tls/self-signed.key"))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "key mode {:o}", mode & 0o777);
    }

    // Generated once: a restart serves the same certificate.
    gw.restart().await?;
    let line = gw
        .wait_log("self-signed TLS certificate reused", Duration::from_secs(5))
        .await?;
    ensure!(logged_fingerprint(&line)? == logged, "{line}");
    ensure!(presented_fingerprint(&gw).await? == logged);
    Ok(())
}

/// DNS names and IP addresses of a certificate.
fn leaf_names(der: &CertificateDer<'_>) -> Result<Vec<String>> {
    use x509_parser::prelude::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name()? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        names.push(std::net::IpAddr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        names.push(std::net::IpAddr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// Waits (bounded) until the server presents a chain that a client
/// trusting only pebble's root accepts for `localhost`, and whose leaf is
/// not `previous`.
async fn wait_issued(
    gw: &TlsGateway,
    pebble: &Pebble,
    root: &CertificateDer<'static>,
    previous: Option<&str>,
    limit: Duration,
) -> Result<Vec<CertificateDer<'static>>> {
    let client = trusting(std::slice::from_ref(root))?;
    let deadline = Instant::now() + limit;
    loop {
        let last = match presented_chain(gw.https, "localhost", client.clone()).await {
            Ok(chain) if Some(fingerprint(&chain[0]).as_str()) != previous => return Ok(chain),
            Ok(_) => "still the previous certificate".to_owned(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "no {} pebble certificate after {limit:?} ({last}); gateway log:\n{}\n\
                 ---- pebble log ----\n{}",
                if previous.is_some() { "renewed" } else { "" },
                gw.log(),
                pebble.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_certificate_from_pebble_is_issued_cached_and_renewed() -> Result<()> {
    let dir = whipcord_tests::temp_dir("tls-acme");
    let port = free_port();
    // 45-second certificates: renewal is due 30 s after each issuance, and
    // a restart right after issuance still finds the stored one valid.
    let pebble = Pebble::start(&dir.join("pebble"), port, 45)?;
    let mut gw = TlsGateway::start(TlsGatewayOptions {
        port: Some(port),
        ..TlsGatewayOptions::default()
            .args([
                "--acme-domain",
                "localhost",
                "--acme-email",
                "whipcord-test@example.org",
                "--acme-directory",
                &pebble.directory,
                "--acme-ca-file",
                pebble.ca_file.to_str().context("utf-8 path")?,
            ])
            .env("WHIPCORD_ACME_RENEW_CHECK_SECS", "1")
    })
    .await?;
    gw.wait_log("temporary self-signed certificate", Duration::from_secs(5))
        .await?;
    let root = pebble.root().await?;
    let intermediate = pebble.intermediate().await?;

    // Issued over TLS-ALPN-01 on our own port, chained to pebble's root
    // through its intermediate.
    let chain = wait_issued(&gw, &pebble, &root, None, Duration::from_secs(60)).await?;
    ensure!(
        chain.get(1) == Some(&intermediate),
        "the chain does not carry pebble's intermediate"
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])?;
    let (_, issuer) = x509_parser::parse_x509_certificate(&intermediate)?;
    ensure!(
        leaf.issuer() == issuer.subject(),
        "leaf issued by {}, not {}",
        leaf.issuer(),
        issuer.subject()
    );
    ensure!(leaf_names(&chain[0])? == ["localhost"]);
    let issued = fingerprint(&chain[0]);
    let health = request(
        gw.https,
        "localhost",
        trusting(std::slice::from_ref(&root))?,
        "GET",
        "/healthz",
        &[],
        Bytes::new(),
    )
    .await?;
    ensure!(health.status == 200, "healthz: {}", health.status);

    // Stored, and reused by the next start: no temporary certificate.
    let acme_dir = std::fs::read_dir(gw.data_dir.join("acme"))?
        .next()
        .context("no folder under acme/")??
        .path();
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["account.json", "certificate.key"] {
            let mode = std::fs::metadata(acme_dir.join(file))?.permissions().mode();
            ensure!(mode & 0o777 == 0o600, "{file} mode {:o}", mode & 0o777);
        }
    }
    ensure!(leaf_fingerprint(&acme_dir.join("certificate.pem"))? == issued);
    gw.restart().await?;
    let chain = presented_chain(
        gw.https,
        "localhost",
        trusting(std::slice::from_ref(&root))?,
    )
    .await?;
    ensure!(
        fingerprint(&chain[0]) == issued,
        "the restarted gateway does not serve the stored certificate"
    );
    ensure!(
        gw.log()
            .matches("temporary self-signed certificate")
            .count()
            == 1
    );
    gw.wait_log("source=\"acme cache\"", Duration::from_secs(5))
        .await?;

    // Renewed once a third of the 45 s is left: a different leaf, same CA.
    let renewed = wait_issued(&gw, &pebble, &root, Some(&issued), Duration::from_secs(60)).await?;
    ensure!(renewed.get(1) == Some(&intermediate));
    gw.wait_log("renewing a certificate over ACME", Duration::from_secs(1))
        .await?;
    ensure!(gw.is_running());
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
