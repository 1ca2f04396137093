//! Unit tests of the bundle layout and its removal.

use crate::{create_layout, is_mount_point, plan_layout, remove};
use std::path::Path;

#[test]
fn mount_points_are_found() {
    assert!(is_mount_point(Path::new("/proc")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    assert!(!is_mount_point(dir.path()).unwrap());
}

#[test]
fn teardown_removes_a_half_prepared_bundle_and_keeps_an_asked_upper() {
    let parent = tempfile::tempdir().unwrap();
    let bundle = parent.path().join("c1");
    std::fs::create_dir(&bundle).unwrap();
    let bundle = std::fs::canonicalize(&bundle).unwrap();
    let state = plan_layout(&bundle, "./store", "app:1", "ab", None).unwrap();
    create_layout(&state).unwrap();
    std::fs::write(state.upper.join("written"), b"x").unwrap();
    std::fs::create_dir_all(state.work.join("work")).unwrap();
    assert!(bundle.join(".hydrate/state.json").is_file());
    // Removal reads the state back and leaves only the upper when asked to.
    remove(&bundle, true).unwrap();
    assert!(bundle.join(".hydrate/upper/written").is_file());
    assert!(!bundle.join(".hydrate/state.json").exists() && !state.rootfs.exists());
    // Without a state file (setup interrupted), the default layout is removed.
    remove(&bundle, false).unwrap();
    assert!(!bundle.exists());
    assert!(
        remove(&bundle, false).is_err(),
        "a missing bundle is reported"
    );

    // An upper of the user's choice is reused and never deleted; its work directory is.
    let upper = parent.path().join("keep");
    std::fs::create_dir(&bundle).unwrap();
    let state = plan_layout(&bundle, "./store", "app:1", "ab", Some(&upper)).unwrap();
    create_layout(&state).unwrap();
    assert_eq!(
        state.work,
        std::fs::canonicalize(&upper)
            .unwrap()
            .with_extension("work")
    );
    std::fs::write(upper.join("data"), b"x").unwrap();
    remove(&bundle, false).unwrap();
    assert!(upper.join("data").is_file() && !state.work.exists() && !bundle.exists());
}

#[test]
fn remove_refuses_a_directory_that_is_not_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let err = remove(dir.path(), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a bundle made by hydrate rootfs"),
        "{err}"
    );
    assert!(dir.path().join("config.json").exists());
}
