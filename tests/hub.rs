//! Hugging Face hub downloads (`hf://OWNER/NAME[@REVISION]`, cargo feature
//! `hub`) through the real client, against a small local server that
//! answers as the hub does (`HF_ENDPOINT`): the files a model folder needs
//! are fetched into the cache (`HF_HOME`), loaded like a local folder and
//! give the same outputs, are used from the cache when the hub cannot be
//! reached, and a repository that is not there is an error naming it.
//!
//! The feature is on by default; a build without it skips this file.

#![cfg(feature = "hub")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A hub with one model repository, `test/tiny` (the files of
/// `tests/fixtures/model/tiny_l14`: a CLIP model with SFAM heads), at the
/// revisions `main` and `v1`. Returns its address and the paths asked for.
fn serve_hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let dir = root().join("tests/fixtures/model/tiny_l14");
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for name in [
        "config.json",
        "model.safetensors",
        "sfam_head.json",
        "sfam_head.safetensors",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        for rev in ["main", "v1"] {
            files.insert(format!("/test/tiny/resolve/{rev}/{name}"), bytes.clone());
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    std::thread::Builder::new()
        .name("mock-hub".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(path) = answer(stream, &files) {
                    log.lock().unwrap().push(path);
                }
            }
        })
        .unwrap();
    (addr, asked)
}

/// Answers one request as the hub's `resolve` endpoint does: `Range:
/// bytes=0-0` is the client's metadata request (it reads `etag`,
/// `x-repo-commit` and the size in `Content-Range`), `bytes=N-` the
/// download from byte N.
fn answer(stream: TcpStream, files: &HashMap<String, Vec<u8>>) -> Option<String> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let path = first.split_whitespace().nth(1)?.to_owned();
    let mut start = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            start = r.split('-').next()?.trim().parse().ok()?;
        }
    }
    let mut out = stream;
    let Some(bytes) = files.get(&path) else {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return Some(path);
    };
    let size = bytes.len();
    let body = &bytes[start.min(size)..];
    // Each revision is its own commit.
    let revision = path.split('/').nth(4).unwrap_or_default();
    let commit = &blake3::hash(revision.as_bytes()).to_hex()[..40];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\netag: \"{}\"\r\nx-repo-commit: {commit}\r\ncontent-range: bytes {start}-{}/{size}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        blake3::hash(bytes).to_hex(),
        size - 1,
        body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body);
    Some(path)
}

/// `sfam ARGS` with the hub at `endpoint` and its cache in `home`.
fn sfam(endpoint: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfam"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn hub_models_download_load_and_come_from_the_cache() {
    let (hub, asked) = serve_hub();
    let home = tempfile::tempdir().unwrap();
    let local = root().join("tests/fixtures/model/tiny_l14");
    let local = local.to_str().unwrap();
    let text = ["--text", "a face with a distorted nose", "--json"];

    // A CLIP folder: the text embedding is the local folder's.
    let embedding = stdout(&sfam(
        &hub,
        home.path(),
        &[&["embed", "--clip", local], &text[..]].concat(),
    ));
    let got = stdout(&sfam(
        &hub,
        home.path(),
        &[&["embed", "--clip", "hf://test/tiny"], &text[..]].concat(),
    ));
    assert_eq!(got, embedding);
    {
        let asked = asked.lock().unwrap();
        for f in ["config.json", "model.safetensors"] {
            let p = format!("/test/tiny/resolve/main/{f}");
            assert!(asked.contains(&p), "{p} not asked for: {asked:?}");
        }
        assert!(!asked.iter().any(|p| p.contains("sfam_head")), "{asked:?}");
    }

    // A whole SFAM model at a revision: `sfam inspect` gives what the
    // local folder gives.
    let image = "assets/samples/ciplab_fake_easy_55_0011.jpg";
    let want = stdout(&sfam(
        &hub,
        home.path(),
        &["inspect", image, "--model", local, "--json"],
    ));
    let got = stdout(&sfam(
        &hub,
        home.path(),
        &["inspect", image, "--model", "hf://test/tiny@v1", "--json"],
    ));
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        // The model's folder is named in the output; the rest must agree.
        let folder = v.as_object_mut().unwrap().remove("model").unwrap();
        (folder.as_str().unwrap().to_owned(), v)
    };
    let ((got_dir, got), (_, want)) = (strip(&got), strip(&want));
    assert!(!want["faces"].as_array().unwrap().is_empty());
    assert_eq!(got, want);
    // The folder loaded is the cache's snapshot of the revision.
    assert!(
        Path::new(&got_dir).starts_with(home.path().join("hub/models--test--tiny/snapshots")),
        "{got_dir}"
    );
    assert!(
        asked
            .lock()
            .unwrap()
            .contains(&"/test/tiny/resolve/v1/sfam_head.safetensors".to_owned())
    );

    // With the hub out of reach, the cached files are used.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let offline = stdout(&sfam(
        &closed,
        home.path(),
        &[&["embed", "--clip", "hf://test/tiny"], &text[..]].concat(),
    ));
    assert_eq!(offline, embedding);

    // A repository the hub does not have.
    let o = sfam(
        &hub,
        home.path(),
        &["embed", "--clip", "hf://test/missing", "--text", "x"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("test/missing") && err.contains("config.json"),
        "{err}"
    );
}
