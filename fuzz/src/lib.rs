//! Fixtures shared by the fuzz targets and the seed generator (`examples/seed.rs`), so
//! that seeds are made with exactly what the targets check against.

use understudy::store::ChunkId;
use understudy::store::chunker::ChunkerParams;
use understudy::store::manifest::{ChunkRef, Entry, Extent, Kind, Manifest};

/// The heartbeat key of the heartbeat target and its seeds.
pub const HEARTBEAT_KEY: [u8; 32] = *b"understudy fuzz heartbeat key 01";

/// The id of the `i`th chunk of [`stream_image`].
pub fn stream_chunk(i: u8) -> ChunkId {
    *blake3::hash(&[i]).as_bytes()
}

/// The image the stream target answers requests about: three files over six chunks, one
/// chunk shared by two files (so a request may name a chunk twice), and an empty file.
pub fn stream_image() -> Manifest {
    let file = |path: &str, ids: &[u8]| Entry {
        path: path.as_bytes().to_vec(),
        kind: Kind::File {
            size: ids.len() as u64 * 100,
            extents: vec![Extent {
                offset: 0,
                chunks: ids.iter().map(|&i| ChunkRef { id: stream_chunk(i), len: 100 }).collect(),
            }],
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    let root =
        Entry { path: vec![], kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0, xattrs: vec![] };
    let empty = Entry { kind: Kind::File { size: 0, extents: vec![] }, ..file("empty", &[]) };
    Manifest {
        chunker: ChunkerParams::V1,
        entries: vec![root, file("a", &[0, 1, 2]), file("b", &[2, 3]), file("c", &[4, 5, 0]), empty],
    }
}

/// A scratch directory, in /dev/shm when there is one (fuzzing writes many small files).
pub fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.expect("a scratch directory")
}

/// The pack id the pack and index targets file their packs under.
pub const PACK_ID: ChunkId = [0x11; 32];

/// A store in `data_dir` holding `pack` and `index` as the files of pack [`PACK_ID`], opened
/// for reading as the server opens it; then every chunk `ids` names is read. A read either
/// fails or returns bytes whose BLAKE3 is the chunk id: a damaged or lying pack or index
/// must never hand out wrong data. Returns how many reads succeeded.
pub fn read_back(data_dir: &std::path::Path, pack: &[u8], index: &[u8], ids: &[ChunkId]) -> usize {
    use understudy::store::{LockMode, Store, hex_id};
    drop(Store::open(data_dir, LockMode::Shared).expect("a new store opens"));
    let root = data_dir.join("store");
    let name = hex_id(&PACK_ID);
    std::fs::write(root.join("packs").join(format!("{name}.pack")), pack).expect("writing the pack");
    std::fs::write(root.join("index").join(format!("{name}.idx")), index).expect("writing the index");
    let store = Store::open(data_dir, LockMode::Shared).expect("a store with a damaged index still opens");
    let mut ok = 0;
    for id in ids {
        if let Ok(bytes) = store.read(id) {
            assert_eq!(blake3::hash(&bytes).as_bytes(), id, "store.read returned wrong bytes");
            ok += 1;
        }
    }
    ok
}

/// A real pack and its index, as the store writes them: raw, zstd and block records.
pub fn sample_pack() -> (Vec<u8>, Vec<u8>) {
    let dir = scratch();
    let store = understudy::store::Store::open_for_write(dir.path()).expect("a new store");
    for i in 0..6u8 {
        let small: Vec<u8> = (0..300u32).map(|j| (j as u8).wrapping_mul(i + 1)).collect();
        store.put(&small).expect("put");
    }
    let noisy: Vec<u8> = (0..40_000u32).map(|j| (j.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    store.put(&noisy).expect("put");
    store.put(&[7u8; 40_000]).expect("put");
    store.flush().expect("flush");
    let one = |sub: &str| {
        let d = dir.path().join("store").join(sub);
        let f = std::fs::read_dir(&d).expect("listing the store").flatten().next().expect("one file");
        std::fs::read(f.path()).expect("reading the store")
    };
    (one("packs"), one("index"))
}
