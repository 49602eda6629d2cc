//! The Python interpreter of the tests' virtual environment, for checking
//! the gateway's output with reference implementations (the OpenAPI spec
//! validator, Prometheus' own text-format parser) rather than with code
//! written next to the code under test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long one script may run: these parse a document of a few kilobytes.
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// `$WHIPCORD_PYTHON`, else `<workspace>/target/pyenv/bin/python` (what
/// `scripts/pyenv.sh` creates). Missing is an error, never a skip: a test
/// that cannot check must not pass.
pub fn interpreter() -> Result<PathBuf> {
    let path = match std::env::var_os("WHIPCORD_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("pyenv")
            .join("bin")
            .join("python"),
    };
    if !path.exists() {
        bail!(
            "no Python interpreter at {}: run scripts/pyenv.sh (it creates target/pyenv with \
             openapi-spec-validator and prometheus-client), or set WHIPCORD_PYTHON",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `script` with `input` in a temporary file whose path is
/// `sys.argv[1]`; returns its standard output. A non-zero exit is an error
/// carrying the script's standard error.
pub async fn run(script: &str, input: &[u8]) -> Result<String> {
    let python = interpreter()?;
    let file = std::env::temp_dir().join(format!(
        "whipcord-py-{}-{}.in",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&file, input).with_context(|| format!("writing {}", file.display()))?;
    let child = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", python.display()));
    let output = match child {
        Ok(child) => tokio::time::timeout(SCRIPT_LIMIT, child.wait_with_output()).await,
        Err(err) => {
            let _ = std::fs::remove_file(&file);
            return Err(err);
        }
    };
    let _ = std::fs::remove_file(&file);
    let output = output
        .with_context(|| format!("Python script ran over {SCRIPT_LIMIT:?}"))?
        .context("waiting for Python")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "Python exited with {}:\n{}\n{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}
