//! `images import` over any bytes, into a fresh store (in /dev/shm when it exists, so the
//! disk is not worn). Whatever imports must stay inside the image root: every path is
//! relative, free of `.`/`..`/empty components, below a directory of the image, and a
//! hard link names another entry. And our own tar must read back as it was written:
//! exporting the imported image and importing that reaches a fixed point after one round
//! (the first round may only re-pick which member of a hard-link group carries the data).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use understudy::archive::{export, import};
use understudy::store::Store;
use understudy::store::manifest::{Kind, Manifest};

fn confined(m: &Manifest) {
    let kinds: HashMap<&[u8], &Kind> = m.entries.iter().map(|e| (e.path.as_slice(), &e.kind)).collect();
    assert_eq!(kinds.get(&b""[..]), Some(&&Kind::Dir), "the root is a directory");
    for e in &m.entries {
        if e.path.is_empty() {
            continue;
        }
        assert!(
            e.path.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0)),
            "{:?}",
            String::from_utf8_lossy(&e.path)
        );
        let parent = e.path.iter().rposition(|&b| b == b'/').map_or(&b""[..], |i| &e.path[..i]);
        assert_eq!(kinds.get(parent), Some(&&Kind::Dir), "parent of {:?}", String::from_utf8_lossy(&e.path));
        if let Kind::Hardlink { target } = &e.kind {
            let k = kinds.get(target.as_slice()).expect("a hard link names an entry of the image");
            assert!(!matches!(k, Kind::Dir | Kind::Hardlink { .. }), "hard link to {k:?}");
        }
    }
}

fn round(store: &Store, m: &Manifest) -> Manifest {
    let mut tar = Vec::new();
    export(store, m, &mut tar, true).expect("an imported image exports");
    import(store, &tar[..], true).expect("our own export imports").0
}

fuzz_target!(|data: &[u8]| {
    let dir = understudy_fuzz::scratch();
    let Ok(store) = Store::open_for_write(dir.path()) else { return };
    let Ok((m1, _)) = import(&store, data, true) else { return };
    confined(&m1);
    let m2 = round(&store, &m1);
    let paths = |m: &Manifest| m.entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&m2), paths(&m1));
    let m3 = round(&store, &m2);
    assert_eq!(m3, m2);
});
