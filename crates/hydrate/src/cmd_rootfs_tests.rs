//! Unit tests of `cmd_rootfs.rs`.

use super::*;

#[test]
fn image_addresses_name_their_store() {
    let both = store_and_image(Some("./store"), "app:1").unwrap();
    assert_eq!(both, ("./store".to_owned(), "app:1".to_owned()));
    let whole = store_and_image(None, "oci://127.0.0.1:5000/library/app:1-hydrate").unwrap();
    assert_eq!(whole.0, "oci://127.0.0.1:5000/library/app:1-hydrate");
    assert_eq!(whole.1, "1-hydrate");
    let dash = store_and_image(Some("oci://127.0.0.1:5000/library/app:2"), "-").unwrap();
    assert_eq!(dash.1, "2");
    assert!(store_and_image(None, "app:1").is_err());
    assert!(store_and_image(Some("./store"), "-").is_err());
}

#[test]
fn env_names_alone_are_taken_from_this_environment() {
    let path = std::env::var("PATH").unwrap();
    let out = expand_env(&[
        "A=1".into(),
        "PATH".into(),
        "HYDRATE_TEST_SURELY_UNSET".into(),
    ]);
    assert_eq!(out, ["A=1".to_owned(), format!("PATH={path}")]);
}

#[test]
fn the_container_config_is_read_from_the_manifest_in_the_store() {
    use hydrate_format::{ManifestWriter, NodeMeta};
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let addr = store_path.to_str().unwrap();
    let root = NodeMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    let mut writer = ManifestWriter::new(root);
    let config = br#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"User":"0:0"}}"#;
    writer
        .set_annotation(annotation::OCI_CONFIG, &config[..])
        .unwrap();
    writer
        .set_annotation(annotation::OCI_SOURCE, "docker://registry.test/app:1")
        .unwrap();
    let bytes = writer.finish().unwrap();
    let id = hydrate_format::ImageId(hydrate_format::Digest::of(&bytes));
    let store = hydrate_store::open_store(addr).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store
            .put(&hydrate_store::keys::manifest(&id), bytes.into())
            .await
            .unwrap();
        hydrate_store::put_tag(store.as_ref(), "app:1", &id)
            .await
            .unwrap();
    });

    let (loaded, manifest) = crate::cmd_inspect::load_manifest(addr, "app:1").unwrap();
    assert_eq!(loaded, id);
    assert_eq!(
        manifest.annotation(annotation::OCI_CONFIG),
        Some(&config[..])
    );
    let info = ImageInfo {
        name: "app:1",
        image_id: &id.to_string(),
        config: manifest.annotation(annotation::OCI_CONFIG),
        source: Some("docker://registry.test/app:1"),
        source_digest: None,
    };
    let overrides = SpecOverrides {
        hostname: "c1".into(),
        ..Default::default()
    };
    let spec = runtime_spec(&info, dir.path(), &overrides).unwrap();
    let args = spec.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args, ["/bin/app", "--serve"]);

    // A store copy that does not match its digest is refused.
    rt.block_on(async {
        store
            .put(
                &hydrate_store::keys::manifest(&id),
                b"garbage".to_vec().into(),
            )
            .await
            .unwrap();
    });
    let err = crate::cmd_inspect::load_manifest(addr, &id.to_string()).unwrap_err();
    assert!(format!("{err:#}").contains("damaged copy"), "{err:#}");
}
