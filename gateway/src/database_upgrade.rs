//! The recordings catalog and the admin tables share one SQLite file
//! (`recording::CATALOG_FILE`). These tests open databases as earlier
//! releases left them and check that an upgrade keeps what they hold.

use std::path::PathBuf;

use recorder::catalog::{Catalog, Container, ListQuery, NewRecording};
use web_admin::store::{KeyAction, KeyCheck, NewKey, Store, migrations};

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "whipcord-upgrade-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(crate::recording::CATALOG_FILE)
}

fn add_recording(catalog: &Catalog, stream: &str) -> i64 {
    catalog
        .insert(&NewRecording {
            stream: stream.into(),
            container: Container::Mp4,
            path: PathBuf::from(format!("/data/recordings/{stream}.mp4")),
            started_at_ms: 1_700_000_000_000,
            video_codec: Some("H264".into()),
            audio_codec: Some("opus".into()),
            width: Some(1280),
            height: Some(720),
        })
        .expect("insert recording")
}

/// A database from before the admin panel (recordings only, no admin
/// tables at all) gains the admin tables and keeps its recordings.
#[test]
fn recordings_only_database_upgrades() {
    let path = temp_db("v0");
    let id = {
        let catalog = Catalog::open(&path).expect("old catalog");
        add_recording(&catalog, "lecture")
    };
    let store = Store::open(&path).expect("upgrade");
    let (key, secret) = store
        .create_key(&NewKey {
            name: "obs".into(),
            stream_pattern: "lecture".into(),
            action: KeyAction::Publish,
            expires_in_s: None,
        })
        .expect("admin tables work");
    assert_eq!(
        store
            .check_key("lecture", KeyAction::Publish, &secret)
            .expect("check"),
        KeyCheck::Valid(key.id)
    );
    let catalog = Catalog::open(&path).expect("catalog after upgrade");
    let recording = catalog.get(id).expect("read").expect("recording kept");
    assert_eq!(recording.stream, "lecture");
    assert_eq!(recording.width, Some(1280));
}

/// Every earlier admin schema version upgrades to the latest with its
/// keys, tokens and the recordings beside them intact.
#[test]
fn every_admin_version_upgrades_with_keys_and_recordings() {
    for version in 1..migrations::LATEST_VERSION {
        let path = temp_db(&format!("v{version}"));
        let recording = {
            let catalog = Catalog::open(&path).expect("catalog");
            add_recording(&catalog, "cam")
        };
        // The database as a release at `version` left it: its schema, and
        // rows written with that schema's columns.
        let secret = "wck_previous-release-key";
        {
            let mut db = rusqlite::Connection::open(&path).expect("open");
            migrations::migrate(&mut db, version).expect("old schema");
            db.execute(
                "INSERT INTO stream_keys (name, stream_pattern, action, secret_sha256, \
                 created_at_ms) VALUES ('old', 'cam-*', 'publish', ?1, 1)",
                [web_admin::secret::digest(secret)],
            )
            .expect("old key");
            db.execute(
                "INSERT INTO api_tokens (name, secret_sha256, created_at_ms) \
                 VALUES ('script', ?1, 1)",
                [web_admin::secret::digest("wct_previous-release-token")],
            )
            .expect("old token");
        }
        let store = Store::open(&path).expect("upgrade");
        assert!(
            matches!(
                store.check_key("cam-2", KeyAction::Publish, secret),
                Ok(KeyCheck::Valid(_))
            ),
            "key from schema v{version} kept"
        );
        assert!(
            store
                .check_token("wct_previous-release-token")
                .expect("check")
                .is_some(),
            "token from schema v{version} kept"
        );
        let catalog = Catalog::open(&path).expect("catalog after upgrade");
        let (rows, total) = catalog
            .list(&ListQuery {
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(total, 1);
        assert_eq!(rows[0].id, recording);
    }
}
