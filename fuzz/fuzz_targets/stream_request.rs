//! The body of `POST /api/v1/images/{image}/stream` (and `/blocks`): JSON as the handler's
//! extractor reads it, then the chunk list the server will send. Whatever the body, the
//! list holds only chunks of the image, each once, none the client has, in the order
//! asked (or image order); and the request is refused exactly when it names a malformed
//! id or wants a chunk outside the image.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use understudy::http::stream::requested;
use understudy::store::parse_id;
use understudy::wire::StreamRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<StreamRequest>(data) else { return };
    let m = understudy_fuzz::stream_image();
    let image: Vec<_> = m.chunk_refs().map(|(_, c)| c.id).collect();
    let in_image: HashSet<_> = image.iter().copied().collect();
    let malformed = req.have.iter().chain(req.want.iter().flatten()).any(|s| parse_id(s).is_none());
    let outside = req.want.iter().flatten().filter_map(|s| parse_id(s)).any(|id| !in_image.contains(&id));
    let list = match requested(&m, &req, "fuzz@1") {
        Ok(list) => list,
        Err(e) => {
            assert!(malformed || outside, "refused a valid request: {e:?}");
            return;
        }
    };
    assert!(!malformed && !outside, "accepted {req:?}");
    let have: HashSet<_> = req.have.iter().filter_map(|s| parse_id(s)).collect();
    let mut seen = HashSet::new();
    assert!(list.iter().all(|id| in_image.contains(id) && !have.contains(id) && seen.insert(*id)));
    let order: Vec<_> = match &req.want {
        Some(w) => w.iter().filter_map(|s| parse_id(s)).collect(),
        None => image,
    };
    let mut expect = HashSet::new();
    let expected: Vec<_> = order.into_iter().filter(|id| !have.contains(id) && expect.insert(*id)).collect();
    assert_eq!(list, expected);
});
