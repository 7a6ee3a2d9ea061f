//! Content-defined chunking with FastCDC (2020), with parameters pinned by the store format.

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// Chunker parameters; recorded in the store config so that every capture into one
/// store cuts identical data at identical boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Minimum chunk size in bytes.
    pub min: u32,
    /// Average (target) chunk size in bytes.
    pub avg: u32,
    /// Maximum chunk size in bytes.
    pub max: u32,
    /// FastCDC normalization level (0..=3).
    pub level: u8,
}

impl ChunkerParams {
    /// The parameters of store format 1: 16 KiB / 64 KiB / 256 KiB, normalization 1.
    pub const V1: ChunkerParams = ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024, level: 1 };

    fn normalization(&self) -> Normalization {
        match self.level {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        }
    }

    /// Cut an in-memory buffer; calls `f` with each chunk in order.
    pub fn cut_slice<E>(&self, data: &[u8], mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if data.len() <= self.min as usize {
            if !data.is_empty() {
                f(data)?;
            }
            return Ok(());
        }
        let cdc =
            FastCDC::with_level(data, self.min as usize, self.avg as usize, self.max as usize, self.normalization());
        for c in cdc {
            f(&data[c.offset..c.offset + c.length])?;
        }
        Ok(())
    }

    /// Cut a stream of known maximum length; calls `f` with each chunk in order.
    /// Small inputs are read whole and cut in memory (no per-file `max`-sized buffer).
    pub fn cut_reader<R: Read>(
        &self,
        mut r: R,
        len_hint: u64,
        mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        const IN_MEMORY: u64 = 8 << 20;
        if len_hint <= IN_MEMORY {
            let mut buf = Vec::with_capacity(len_hint as usize);
            r.read_to_end(&mut buf)?;
            self.cut_slice(&buf, &mut f)?;
            return Ok(buf.len() as u64);
        }
        let cdc =
            StreamCDC::with_level(r, self.min as usize, self.avg as usize, self.max as usize, self.normalization());
        let mut total = 0u64;
        for c in cdc {
            let c = c.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => e,
                other => std::io::Error::other(other.to_string()),
            })?;
            total += c.data.len() as u64;
            f(&c.data)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        crate::store::noise(seed, n)
    }

    fn cuts(p: &ChunkerParams, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        p.cut_slice::<()>(data, |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn chunks_cover_input_within_bounds() {
        let p = ChunkerParams::V1;
        let data = pseudo_random(3 << 20, 7);
        let chunks = cuts(&p, &data);
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= p.min as usize && c.len() <= p.max as usize);
        }
    }

    #[test]
    fn insertion_moves_no_later_boundary() {
        let p = ChunkerParams::V1;
        let data = pseudo_random(2 << 20, 9);
        let mut changed = data.clone();
        changed.splice(100_000..100_000, b"inserted bytes".iter().copied());
        let a = cuts(&p, &data);
        let b = cuts(&p, &changed);
        let tail_a: std::collections::HashSet<_> = a.iter().skip(4).collect();
        let shared = b.iter().filter(|c| tail_a.contains(c)).count();
        assert!(shared + 6 >= a.len(), "only {shared} of {} chunks shared", a.len());
    }

    #[test]
    fn stream_and_slice_agree() {
        let p = ChunkerParams::V1;
        let data = pseudo_random(9 << 20, 3);
        let a = cuts(&p, &data);
        let mut b = Vec::new();
        p.cut_reader(&data[..], u64::MAX, |c| {
            b.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(a, b);
    }
}
